"""The kernel: the public API (`kernel.py`, the facade) over its parts: the request path (`sched/`),
models (`models/`), adapter modules (`modules/`), processes (`proc/`), tools (`tools/`), retrieval
memory (`memfs/`) and stateless helpers (`lib/`). See docs/architecture.md.

Boundaries: pure Python; never imports torch, llama_cpp, faiss, transformers or sentence_transformers
(drivers and backends do, lazily). This package re-exports the facade, so no part imports it (nor
`kernel.py`): parts that need the kernel get a `KernelPort` (`port.py`). tests/test_layout.py checks it.
"""

_LAZY = {"Config": ".config", "Kernel": ".kernel", "boot": ".kernel", "Completion": ".sched.handle",
         "RequestHandle": ".sched.handle", "Priority": ".sched.request", "Request": ".sched.request",
         "RequestStatus": ".sched.request", "SamplingParams": ".sched.request"}


def __getattr__(name: str):
    """The facade loads on first use (PEP 562): importing a light part (`kernel.errors`) stays light."""
    if name not in _LAZY:
        raise AttributeError(f"module 'llmos.kernel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["Completion", "Config", "Kernel", "Priority", "Request", "RequestHandle", "RequestStatus",
           "SamplingParams", "boot"]
