"""Tools: tools and tasks with schemas from signatures (`tools.py`), capabilities and the audit log
(`capabilities.py`), the kernel's toolbox that registers, checks, runs and audits them
(`toolbox.py`, reached as `kernel.tools`) and background jobs (`jobs.py`).

Owns: every tool call's validation, authorization, run and audit record.
Must not import: the facade `kernel.py` (not even under TYPE_CHECKING): it is given a
`KernelPort` (`kernel/port.py`); nor proc, sched, models, modules or memfs. Only `errors`, `lib`,
`config` and `port` (MCP servers only lazily, through `llmos.plugins.mcp_tools`); no engine library.
"""
