"""Tenants: who a request belongs to, what it may ask for, and how much of the machine it gets.

Boundaries: pure Python and files under $LLMOS_HOME (keys.json); no HTTP, no model. `tenant.py` is the
policy of one tenant, `keys.py` the stored keys that name them, `quota.py` the token buckets and
concurrency counts, `table.py` the kernel's live view (policies, limits, usage). The HTTP server turns
a key into a `Tenant` (shell/server/security.py); the kernel enforces its limits in `submit`; the
scheduler's fair share counts its tokens (sched/fairshare.py).

Owns: `$LLMOS_HOME/keys.json`, and each tenant's buckets, in-flight counts and usage counters.
Must not import: the facade `kernel.py`, proc, tools, models or modules; only `errors`, `sched` and
memfs's path rules (lazily); no engine library.
"""
