"""API keys, stored hashed in $LLMOS_HOME/keys.json (mode 0600): each names a tenant and its limits.

A key is shown once, when it is made (`add`, `rotate`); the file keeps only its SHA-256 (keys are 32
random bytes, so a plain hash cannot be guessed back) and its first characters, to tell keys apart in
`llmos keys ls`. Writes go to a temporary file then `os.replace`, so a crash leaves the old file or the
new one, never half of one. A running server reads the file again when it changes (its mtime and size),
so `llmos keys add` takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidRequestError
from .tenant import ADMIN, ANONYMOUS, OWNER, Tenant, check_name

PREFIX = "llmos-"
#: names the kernel gives its own identities and in-process work: no stored key may take them (a key named
#: "shell" would see, kill and share the fair-share counter of the shell's requests)
RESERVED = frozenset({OWNER, ADMIN, ANONYMOUS, "other",  # "other": the overflow label of usage counts
                      "default", "agent", "api", "cli", "shell", "memfs"})  # owners of in-process work


class UnknownTenantError(InvalidRequestError, LookupError):
    code = "tenant_not_found"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "keys.json"
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, str] = {}
        self._tenants: dict[str, dict[str, Any]] = {}

    # -- reading -----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._by_hash, self._tenants = None, {}, {}
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # every write replaces the file: a new inode
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text())
            tenants = {t["name"]: t for t in data["tenants"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is not a keys file llmos wrote ({exc}): restore it, or move it "
                              f"away and add the keys again") from exc
        self._tenants, self._stamp = tenants, stamp
        self._by_hash = {t["hash"]: name for name, t in tenants.items()}

    def __bool__(self) -> bool:
        with self._lock:
            self._refresh()
            return bool(self._tenants)

    def lookup(self, key: str) -> Tenant | None:
        """The tenant of `key`, or None (compared by hash: the dict lookup leaks nothing of the key)."""
        with self._lock:
            self._refresh()
            name = self._by_hash.get(digest(key))
            return None if name is None else _tenant(self._tenants[name])

    def get(self, name: str) -> Tenant:
        with self._lock:
            self._refresh()
            if name not in self._tenants:
                raise UnknownTenantError(f"no tenant {name!r}: see `llmos keys ls`", param="name")
            return _tenant(self._tenants[name])

    def tenants(self) -> list[Tenant]:
        with self._lock:
            self._refresh()
            return [_tenant(t) for t in self._tenants.values()]

    def rows(self) -> list[dict[str, Any]]:
        """What `keys ls` shows: each tenant's policy, key prefix and dates (never a hash)."""
        with self._lock:
            self._refresh()
            return [{**_tenant(t).as_dict(), "key": t["prefix"] + "…", "created": t["created"],
                     "rotated": t.get("rotated")} for t in self._tenants.values()]

    # -- writing -----------------------------------------------------------------------------------

    def add(self, name: str, *, priority: str = "normal", tokens_per_minute: int | None = None,
            max_concurrency: int | None = None, admin: bool = False, shared: tuple[str, ...] = ()) -> tuple[Tenant, str]:
        """A new tenant and its key (returned once: only its hash is kept)."""
        check_name(name)
        if name in RESERVED:
            raise InvalidRequestError(f"{name!r} is reserved for llmos's own identities: choose another name",
                                      param="name")
        tenant = Tenant(name, priority, tokens_per_minute, max_concurrency, admin, tuple(shared))
        key = new_key()
        with self._changing():
            if name in self._tenants:
                raise InvalidRequestError(f"tenant {name!r} exists: `llmos keys rotate {name}` makes it a new key, "
                                          f"`llmos keys rm {name}` removes it", param="name")
            self._tenants[name] = {**_policy(tenant), "hash": digest(key), "prefix": key[:len(PREFIX) + 4],
                                   "created": _now()}
            self._write()
        return tenant, key

    def rotate(self, name: str) -> str:
        """A new key for `name`; the old one stops working at once."""
        key = new_key()
        with self._changing():
            entry = self._entry(name)
            entry.update(hash=digest(key), prefix=key[:len(PREFIX) + 4], rotated=_now())
            self._write()
        return key

    def remove(self, name: str) -> None:
        with self._changing():
            self._entry(name)
            del self._tenants[name]
            self._write()

    @contextlib.contextmanager
    def _changing(self):
        """Read, change and write the file as one step, also against another `llmos keys` process (flock):
        two at once must not lose an update (a rotation silently undone would revive a leaked key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name("keys.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._stamp = None  # read it again, whatever its stamp says
            self._refresh()
            yield

    def _entry(self, name: str) -> dict[str, Any]:
        if name not in self._tenants:
            raise UnknownTenantError(f"no tenant {name!r}: see `llmos keys ls`", param="name")
        return self._tenants[name]

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".keys.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "tenants": list(self._tenants.values())}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._stamp = None
        self._by_hash = {t["hash"]: n for n, t in self._tenants.items()}


def _policy(t: Tenant) -> dict[str, Any]:
    return {"name": t.name, "priority": t.priority_class, "tokens_per_minute": t.tokens_per_minute,
            "max_concurrency": t.max_concurrency, "admin": t.admin, "shared": list(t.shared)}


def _tenant(entry: dict[str, Any]) -> Tenant:
    return Tenant(entry["name"], entry.get("priority", "normal"), entry.get("tokens_per_minute"),
                  entry.get("max_concurrency"), bool(entry.get("admin")), tuple(entry.get("shared", ())))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
