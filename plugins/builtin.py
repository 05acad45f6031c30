"""Built-in plugin: registers the drivers that ship with llmos through the public hooks."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_drivers(register):
    from llmos.drivers.llamacpp import LlamaCppDriver
    from llmos.drivers.remote import RemoteDriver
    from llmos.drivers.torch_driver import TorchDriver

    register(LlamaCppDriver)  # first: the default for GGUF files
    register(TorchDriver)
    register(RemoteDriver)  # models configured with nodes = [...] (OpenAI-compatible servers)
