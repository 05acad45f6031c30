"""The kernel: request lifecycle, scheduler, engine loop, model registry and the public API.

Boundaries: pure Python; never imports torch, llama_cpp or faiss (drivers and backends do, lazily).
"""

from .config import Config
from .sched.handle import Completion, RequestHandle
from .kernel import Kernel, boot
from .sched.request import Priority, Request, RequestStatus, SamplingParams

__all__ = ["Completion", "Config", "Kernel", "Priority", "Request", "RequestHandle", "RequestStatus",
           "SamplingParams", "boot"]
