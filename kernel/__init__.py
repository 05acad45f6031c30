"""The kernel: the public API (`kernel.py`, the facade) over its parts: the request path (`sched/`),
models (`models/`), adapter modules (`modules/`), processes (`proc/`), tools (`tools/`), retrieval
memory (`memfs/`) and stateless helpers (`lib/`). See docs/architecture.md.

Boundaries: pure Python; never imports torch, llama_cpp, faiss, transformers or sentence_transformers
(drivers and backends do, lazily). This package re-exports the facade, so no part imports it (nor
`kernel.py`): parts that need the kernel get a `KernelPort` (`port.py`). tests/test_layout.py checks it.
"""

from .config import Config
from .kernel import Kernel, boot
from .sched.handle import Completion, RequestHandle
from .sched.request import Priority, Request, RequestStatus, SamplingParams

__all__ = ["Completion", "Config", "Kernel", "Priority", "Request", "RequestHandle", "RequestStatus",
           "SamplingParams", "boot"]
