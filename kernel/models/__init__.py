"""Models: names to specs (`registry.py`: built-in, configured, remote, files), each model's default
sampling (`defaults.py`: its table, its file's metadata, the built-ins) and the engines of loaded
models per model and driver (`loaded.py`: load lazily, LRU, unload).

Owns: which models exist and which are loaded where.
Must not import: modules, proc, tools, memfs or the facade `kernel.py`; only `errors`, `config` and
`sched` (drivers only lazily, through `llmos.drivers.base`); no engine library.
"""
