"""Helpers with no kernel state: crash-safe file writes (`atomic.py`) and redaction over nested
structures (`masking.py`).

Owns: nothing stateful.
Must not import: anything in the kernel but `errors`; no engine library.
"""
