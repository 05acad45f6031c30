"""Processes: agent processes (`agents.py`: spawn, the model → tool → model loop, kill, budgets),
tool calls for small models (`tool_calling.py`), constrained JSON (`structured.py`) and the SQLite
session store (`sessions.py`).

Owns: what runs on top of requests and tool calls, and what it remembers.
Must not import: the facade `kernel.py` (not even under TYPE_CHECKING): it is given a
`KernelPort` (`kernel/port.py`); nor tools, models, modules or memfs. Only `errors`, `lib`, `sched`
and `port`; no engine library.
"""
