"""Adapter modules: installed adapters on disk (`store.py`: verify, manifests, install, forms) and
the runtime module table (`table.py`: insmod/rmmod/lsmod, refcounts, LRU).

Owns: `$LLMOS_HOME/modules/` and which module is mounted in which engine.
Must not import: proc, tools, memfs or the facade `kernel.py`; only `errors`, `lib`, `sched` and
`models`; no engine library.
"""
