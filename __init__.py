"""llmos: a plugin-based LLM operating system runtime.

The public Python API:

    import llmos
    with llmos.boot() as kernel:          # an in-process kernel
        print(kernel.generate("What is the capital of France?").text)

    with llmos.connect() as kernel:       # the resident kernel (`llmos up`): the same calls
        print(kernel.generate("What is the capital of France?").text)
"""

from __future__ import annotations

from .kernel.errors import *  # noqa: F401,F403 - the typed errors are public API (a light module)
from .kernel.errors import LlmosError

# The rest loads on first use (PEP 562), so `import llmos` (and every `llmos` command) starts fast: a
# client of the resident kernel never imports the kernel's scheduler, models or tools.
_LAZY = {
    "Completion": ".kernel.sched.handle", "RequestHandle": ".kernel.sched.handle", "Config": ".kernel.config",
    "Kernel": ".kernel.kernel", "boot": ".kernel.kernel", "Priority": ".kernel.sched.request",
    "RequestStatus": ".kernel.sched.request", "SamplingParams": ".kernel.sched.request",
    "KernelAPI": ".kernel.api", "hookimpl": ".plugins.hookspecs",
}


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("llmos")
        except PackageNotFoundError:  # running from a source tree that is not installed
            value = "0.0.0+unknown"
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'llmos' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


def connect(url: str | None = None, api_key: str | None = None, *, home=None, stream_interval_ms: int | None = None):
    """A client of the resident kernel (`llmos up`), or of the server at `url` (LLMOS_URL), with the
    `Kernel` surface: see shell/client/__init__.py."""
    from .shell.client import connect as _connect

    return _connect(url, api_key, home=home, stream_interval_ms=stream_interval_ms)


__all__ = [  # noqa: F405 - most load on first use (__getattr__)
    "Completion", "Config", "Kernel", "KernelAPI", "LlmosError", "Priority", "RequestHandle", "RequestStatus",
    "SamplingParams", "boot", "connect", "hookimpl", "__version__",
]
