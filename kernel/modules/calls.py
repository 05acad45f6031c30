"""The kernel's module (adapter) calls: install, insmod, rmmod, lsmod, export, as a mixin of `Kernel`.

Boundaries: delegates to `self.module_store` (modules/store.py) and `self.modules` (modules/table.py),
which the kernel sets up; holds no state of its own.
"""

from __future__ import annotations

from typing import Any

from .store import Manifest


class ModuleCalls:
    module_store: Any
    modules: Any

    def install_module(self, path: str, *, name: str | None = None, base: str | None = None) -> Manifest:
        """Verify an adapter (PEFT dir or GGUF LoRA) and copy it into $LLMOS_HOME/modules/."""
        return self.module_store.install(path, name=name, base=base)

    def insmod(self, name: str, *, driver: str | None = None) -> dict[str, Any]:
        """Load an installed module into the driver serving its base model."""
        return self.modules.insmod(name, driver=driver).as_dict()

    def rmmod(self, name: str, *, force: bool = False) -> list[str]:
        """Unload a module; refused while in use unless `force` (which cancels its requests)."""
        return self.modules.rmmod(name, force=force)

    def lsmod(self) -> list[dict[str, Any]]:
        """Loaded modules with base model, driver, memory and use count."""
        return self.modules.lsmod()

    def modules_info(self) -> list[dict[str, Any]]:
        """Installed modules, each with where it is loaded (driver, memory, use count)."""
        return self.modules.installed()

    def export_module(self, name: str, fmt: str = "gguf") -> Manifest:
        """Add a GGUF LoRA form to a PEFT module so the llama.cpp driver can mount it too."""
        return self.module_store.export(name, fmt)
