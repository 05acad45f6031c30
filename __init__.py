"""llmos: a plugin-based LLM operating system runtime.

The public Python API:

    import llmos
    with llmos.boot() as kernel:
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
from .kernel.errors import *  # noqa: F401,F403 - the typed errors are public API
from .kernel.errors import LlmosError
from .plugins.hookspecs import hookimpl

try:
    __version__ = _version("llmos")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Completion", "Config", "Kernel", "LlmosError", "Priority", "RequestHandle", "RequestStatus",
    "SamplingParams", "boot", "hookimpl", "__version__",
]
