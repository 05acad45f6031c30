"""The session store: chat sessions and agent processes, persisted in SQLite under LLMOS_HOME.

Boundaries: storage only (no model calls). `$LLMOS_HOME/sessions.db` (WAL, synchronous=FULL) holds
one row per session (kind chat|agent, name, model, adapter, system prompt, settings, state, the
process id of the kernel that runs it) and its messages in order (OpenAI-style: role, content,
tool_calls, tool_call_id). Every text passes through the kernel's redactors before it is stored:
contents, titles and system prompts as strings, `tool_calls` as a structure whose strings are
masked before it is serialized (a JSON text such as a call's `arguments` is masked inside; see
kernel/lib/masking.py). A store opened by a new kernel marks sessions left `running` by a kernel process
that no longer exists as `crashed`: a crash is recorded, never silently lost.

Retention (`[sessions]` in llmos.toml, defaults in kernel/config.py): when the store is opened and
at each new session, sessions not updated for `max_age_days` are deleted with their messages, then
the least recently updated beyond `max_count`; a `running` session is never deleted. Freed pages are
reused by SQLite (the file does not shrink without a VACUUM). Deleted sessions (deleted, or by retention)
are reported to `on_delete` by their `cache_key`: the kernel removes their saved KV ($LLMOS_HOME/kv/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidRequestError, LlmosError, StorageError
from ..lib.masking import dumps_redacted, redact_text
from ..lib.pids import pid_alive
from ..lib.private import private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, name TEXT UNIQUE, kind TEXT NOT NULL, model TEXT, adapter TEXT, system TEXT,
    settings TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
    host_pid INTEGER, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT, tool_calls TEXT, tool_call_id TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, seq);
"""
ROLES = ("system", "user", "assistant", "tool")
SETTINGS = ("model", "adapter", "system")


class UnknownSessionError(LlmosError, KeyError):
    code = "session_not_found"

    def __str__(self) -> str:
        return self.args[0]


class Session:
    """One stored conversation; attributes reflect the row, `messages` reads the log."""

    def __init__(self, store: "SessionStore", row: sqlite3.Row) -> None:
        self._store = store
        self.id: str = row["id"]
        self._load(row)

    def _load(self, row: sqlite3.Row) -> None:
        self.name: str | None = row["name"]
        self.kind: str = row["kind"]
        self.model: str | None = row["model"]
        self.adapter: str | None = row["adapter"]
        self.system: str | None = row["system"]
        self.settings: dict[str, Any] = json.loads(row["settings"])
        self.state: str = row["state"]
        self.title: str = row["title"]
        self.owner: str = row["owner"]  # the tenant it belongs to

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self._store.messages(self.id)

    @property
    def cache_key(self) -> str:
        """The key a driver saves this session's KV under (owner and id hashed: never a path from a client)."""
        return session_cache_key(self.owner, self.id)

    def append(self, message: dict[str, Any]) -> None:
        self._store.append(self.id, message)

    def update(self, **settings: Any) -> None:
        self._load(self._store.update(self.id, **settings))

    def set_state(self, state: str) -> None:
        self._load(self._store.update(self.id, state=state))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "model": self.model, "adapter": self.adapter,
                "system": self.system, "settings": self.settings, "state": self.state, "title": self.title,
                "owner": self.owner, "messages": self.messages}


def session_cache_key(owner: str, session_id: str) -> str:
    return hashlib.sha256(f"{owner}\0{session_id}".encode()).hexdigest()


class SessionStore:
    def __init__(self, path: Path, redact: Callable[[str], str] = lambda text: text, *, max_age_days: float = 0,
                 max_count: int = 0, on_delete: Callable[[list[str]], None] | None = None) -> None:
        self.path = path
        self._redact = redact
        self._on_delete = on_delete  # called with the cache keys of deleted sessions (their saved KV goes too)
        self.max_age_s = max_age_days * 86400.0  # 0: no age limit
        self.max_count = int(max_count)  # 0: no count limit
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)  # conversations: the owner's only
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(SCHEMA)
                if "owner" not in {r["name"] for r in self._db.execute("PRAGMA table_info(sessions)")}:
                    # stores made before tenants: every session is the machine owner's
                    self._db.execute("ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT 'owner'")
                self._mark_crashed()
                self.prune()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StorageError(f"the session store {path} is unreadable ({exc}): move it aside to start a new "
                               f"one; nothing was changed") from exc

    def _mark_crashed(self) -> None:
        rows = self._db.execute("SELECT id, host_pid FROM sessions WHERE state = 'running'").fetchall()
        for row in rows:
            if row["host_pid"] != os.getpid() and not pid_alive(row["host_pid"]):
                self._db.execute("UPDATE sessions SET state = 'crashed', updated = ? WHERE id = ?",
                                 (time.time(), row["id"]))

    def prune(self) -> int:
        """Apply retention now; returns how many sessions were deleted (their messages go with them)."""
        deleted: list[sqlite3.Row] = []
        with self._lock:
            if self.max_age_s:
                deleted += self._db.execute("DELETE FROM sessions WHERE state != 'running' AND updated < ?"
                                            " RETURNING id, owner", (time.time() - self.max_age_s,)).fetchall()
            if self.max_count:  # per owner: one tenant's new sessions never push out another's
                deleted += self._db.execute(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY"
                    " owner ORDER BY updated DESC) AS n FROM sessions WHERE state != 'running') WHERE n > ?)"
                    " RETURNING id, owner", (self.max_count,)).fetchall()
        self._deleted(deleted)
        return len(deleted)

    def _deleted(self, rows: list[Any]) -> None:
        if rows and self._on_delete is not None:
            self._on_delete([session_cache_key(r["owner"], r["id"]) for r in rows])

    def _mask(self, text: str | None) -> str | None:
        return None if text is None else redact_text(text, self._redact)

    # -- sessions ----------------------------------------------------------------------------------

    def _row(self, name_or_id: str) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute("SELECT * FROM sessions WHERE id = ? OR name = ?",
                                    (name_or_id, name_or_id)).fetchone()

    def get(self, name_or_id: str) -> Session:
        row = self._row(name_or_id) if isinstance(name_or_id, str) else None
        if row is None:
            raise UnknownSessionError(f"no session {name_or_id!r}: `llmos sessions ls` lists them")
        return Session(self, row)

    def cache_key(self, name_or_id: Any, owner: str | None = None) -> str:
        """The cache key of the session a request is a turn of; with `owner`, only that owner's session (another's
        is unknown, like one that does not exist)."""
        if not isinstance(name_or_id, str) or not 0 < len(name_or_id) <= 200:
            raise InvalidRequestError("session must be a session's name or id (1-200 characters)", param="session")
        session = self.get(name_or_id)
        if owner is not None and session.owner != owner:
            raise UnknownSessionError(f"no session {name_or_id!r}: `llmos sessions ls` lists yours")
        return session.cache_key

    def create(self, *, name: str | None = None, kind: str = "chat", model: str | None = None,
               adapter: str | None = None, system: str | None = None, settings: dict[str, Any] | None = None,
               state: str = "idle", title: str = "", owner: str = "owner") -> Session:
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
            raise InvalidRequestError("a session name must be 1-200 characters", param="session")
        if kind not in ("chat", "agent"):
            raise InvalidRequestError(f"session kind must be chat or agent, got {kind!r}", param="kind")
        if name is not None and re.fullmatch(r"(chat|agent)-[0-9a-f]{10}", name):  # ids and names share a lookup
            raise InvalidRequestError(f"{name!r} looks like a session id: choose another name", param="session")
        sid = f"{kind}-{uuid.uuid4().hex[:10]}"
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO sessions (id, name, kind, model, adapter, system, settings, state, title, host_pid,"
                    " created, updated, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, name, kind, model, adapter, self._mask(system), json.dumps(settings or {}), state,
                     self._mask(title)[:120], os.getpid(), now, now, owner))
            except sqlite3.IntegrityError:
                raise InvalidRequestError(f"a session named {name!r} already exists", param="session") from None
            self.prune()
        return self.get(sid)

    def open(self, name_or_id: str | None = None, *, model: str | None = None, adapter: str | None = None,
             system: str | None = None, owner: str = "owner", check: Callable[[Session], None] | None = None
             ) -> Session:
        """The named (or id'd) session, created as a chat session of `owner` when there is none; settings
        given here update it (after `check(session)`, which may refuse another owner's)."""
        row = self._row(name_or_id) if name_or_id is not None else None
        if row is None:
            return self.create(name=name_or_id, model=model, adapter=adapter, system=system, owner=owner)
        session = Session(self, row)
        if check is not None:
            check(session)
        changes = {k: v for k, v in (("model", model), ("adapter", adapter), ("system", system)) if v is not None}
        if changes:
            session.update(**changes)
        return session

    def update(self, session_id: str, **fields: Any) -> sqlite3.Row:
        allowed = set(SETTINGS) | {"state", "settings", "title"}
        unknown = set(fields) - allowed
        if unknown:
            raise InvalidRequestError(f"unknown session setting(s) {sorted(unknown)}; known: {sorted(allowed)}",
                                      param=sorted(unknown)[0])
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"])
        for key in ("system", "title"):
            if isinstance(fields.get(key), str):
                fields[key] = self._mask(fields[key])
        fields["updated"] = time.time()
        if fields.get("state") == "running":
            fields["host_pid"] = os.getpid()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            cur = self._db.execute(f"UPDATE sessions SET {cols} WHERE id = ?", (*fields.values(), session_id))
            if cur.rowcount == 0:
                raise UnknownSessionError(f"no session {session_id!r}")
            return self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = ("SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n FROM sessions s"
                 + (" WHERE kind = ?" if kind else "") + " ORDER BY updated DESC")
        with self._lock:
            rows = self._db.execute(query, (kind,) if kind else ()).fetchall()
        return [{"id": r["id"], "name": r["name"], "kind": r["kind"], "model": r["model"], "adapter": r["adapter"],
                 "title": r["title"], "state": r["state"], "created": r["created"], "updated": r["updated"],
                 "owner": r["owner"], "messages": r["n"]} for r in rows]

    def last(self, kind: str = "chat") -> dict[str, Any] | None:
        rows = self.list(kind)
        return rows[0] if rows else None

    def delete(self, name_or_id: str) -> None:
        session = self.get(name_or_id)
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session.id,))
        self._deleted([{"id": session.id, "owner": session.owner}])

    # -- messages ----------------------------------------------------------------------------------

    def append(self, session_id: str, message: dict[str, Any]) -> None:
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"message role must be one of {ROLES}, got {role!r}", param="role")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise InvalidRequestError("message content must be a string", param="content")
        calls, call_id = message.get("tool_calls"), message.get("tool_call_id")
        if calls is not None and not isinstance(calls, list):
            raise InvalidRequestError("message tool_calls must be a list", param="tool_calls")
        if call_id is not None and not isinstance(call_id, str):
            raise InvalidRequestError("message tool_call_id must be a string", param="tool_call_id")
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT title FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise UnknownSessionError(f"no session {session_id!r}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO messages (session_id, role, content, tool_calls, tool_call_id, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (session_id, role, self._mask(content), None if not calls else dumps_redacted(calls, self._redact),
                     call_id, now))
                title = row["title"] or (self._mask(content)[:120] if role == "user" and content else "")
                self._db.execute("UPDATE sessions SET updated = ?, title = ? WHERE id = ?", (now, title, session_id))
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"could not store a message of session {session_id}: {exc} "
                                       f"(is the disk full?); nothing was changed") from exc
                raise

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM messages WHERE session_id = ? ORDER BY seq",
                                    (session_id,)).fetchall()
        out = []
        for r in rows:
            m: dict[str, Any] = {"role": r["role"], "content": r["content"]}
            if r["tool_calls"]:
                m["tool_calls"] = json.loads(r["tool_calls"])
            if r["tool_call_id"]:
                m["tool_call_id"] = r["tool_call_id"]
            out.append(m)
        return out

    # -- export ------------------------------------------------------------------------------------

    def export(self, name_or_id: str, fmt: str = "md") -> str:
        session = self.get(name_or_id)
        data = session.as_dict()
        if fmt == "json":
            return json.dumps(data, indent=2, ensure_ascii=False)
        if fmt not in ("md", "markdown"):
            raise InvalidRequestError(f"export format must be md or json, got {fmt!r}", param="format")
        lines = [f"# {session.title or session.name or session.id}", "",
                 f"- id: `{session.id}`" + (f" (name `{session.name}`)" if session.name else ""),
                 f"- kind: {session.kind}, state: {session.state}",
                 f"- model: {session.model or 'default'}" + (f", adapter: {session.adapter}" if session.adapter else ""),
                 ""]
        for m in data["messages"]:
            if m.get("tool_calls"):
                for c in m["tool_calls"]:
                    lines += [f"**assistant → {c['function']['name']}**", "", "```json",
                              c["function"]["arguments"], "```", ""]
            elif m["role"] == "tool":
                lines += ["**tool result**", "", "```", m["content"] or "", "```", ""]
            else:
                lines += [f"**{m['role']}**", "", m["content"] or "", ""]
        return "\n".join(lines)

    def close(self) -> None:
        with self._lock:
            self._db.close()
