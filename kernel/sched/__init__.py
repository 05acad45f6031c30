"""The request path: a request's lifecycle (`request.py`), the scheduler (`scheduler.py`, pure Python),
the engine loop that runs it against a driver (`engine.py`), the scheduler↔driver dataclasses
(`interface.py`), the caller's handle (`handle.py`) and incremental detokenizing (`detokenizer.py`).

Owns: everything between a validated request and its streamed tokens.
Must not import: anything else in the kernel but `errors` (no config, models, modules, proc, tools,
memfs, and never the facade `kernel.py`); no engine library (drivers get the dataclasses).
"""
