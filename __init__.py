"""llmos: a plugin-based LLM operating system runtime.

The public Python API:

    import llmos
    with llmos.boot() as kernel:          # an in-process kernel
        print(kernel.generate("What is the capital of France?").text)

    with llmos.connect() as kernel:       # the resident kernel (`llmos up`): the same calls
        print(kernel.generate("What is the capital of France?").text)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .kernel import (
    Completion,
    Config,
    Kernel,
    Priority,
    RequestHandle,
    RequestStatus,
    SamplingParams,
    boot,
)
from .kernel.api import KernelAPI
from .kernel.errors import *  # noqa: F401,F403 - the typed errors are public API
from .kernel.errors import LlmosError
from .plugins.hookspecs import hookimpl



def connect(url: str | None = None, api_key: str | None = None, *, home=None):
    """A client of the resident kernel (`llmos up`), or of the server at `url` (LLMOS_URL), with the
    `Kernel` surface: see shell/client/__init__.py."""
    from .shell.client import connect as _connect

    return _connect(url, api_key, home=home)


try:
    __version__ = _version("llmos")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Completion", "Config", "Kernel", "KernelAPI", "LlmosError", "Priority", "RequestHandle", "RequestStatus",
    "SamplingParams", "boot", "connect", "hookimpl", "__version__",
]
