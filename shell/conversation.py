"""The shell's conversation: a persistent `kernel.sessions` session when the kernel has one, else an
in-memory list. Holds what a chat turn is sent with (model, adapter, system prompt, rag directory).

Pure logic, no widgets: the commands and the App both read and change it from worker threads, so
every mutation takes a lock.
"""

from __future__ import annotations

import threading
from typing import Any

from llmos.kernel.errors import InvalidRequestError, LlmosError


#: the most earlier messages a chat turn sends (a long session would not fit a small model's context)
MAX_CONTEXT_MESSAGES = 20


class SessionsUnavailableError(LlmosError):
    """This kernel has no `sessions` service (chat history lives only in this shell)."""

    code = "not_available"


class Conversation:
    def __init__(self, kernel: Any, session: Any = None, *, model: str | None = None,
                 adapter: str | None = None, system: str | None = None) -> None:
        self.kernel = kernel
        self.session = session
        self._lock = threading.RLock()
        self._messages: list[dict[str, Any]] = []
        self._settings = {"model": model, "adapter": adapter, "system": system}
        self.rag: str | None = None

    # -- creation ----------------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self.session is not None

    @property
    def session_id(self) -> str | None:
        """The stored session's id (its turns are sent with it), None for an in-memory conversation."""
        return getattr(self.session, "id", None)

    @classmethod
    def resume(cls, kernel: Any, *, new: bool = False) -> "Conversation":
        """The last chat session (or a new one with `new`) when the kernel keeps sessions, else an
        empty in-memory conversation."""
        if not hasattr(kernel, "sessions"):
            return cls(kernel)
        last = None if new else kernel.sessions.last(kind="chat")
        return cls(kernel, kernel.sessions.open(last["id"] if last else None))

    def fresh(self) -> "Conversation":
        """A new, empty conversation with the same model, adapter and system prompt."""
        settings = {k: self.setting(k) for k in ("model", "adapter", "system")}
        if hasattr(self.kernel, "sessions"):
            conv = Conversation(self.kernel, self.kernel.sessions.open(None, **settings))
        else:
            conv = Conversation(self.kernel, **settings)
        conv.rag = self.rag
        return conv

    def switch(self, name_or_id: str) -> "Conversation":
        """Another stored session, by name or id."""
        sessions = self.sessions()
        match = [s for s in sessions if name_or_id in (s.get("id"), s.get("name"))]
        if not match:
            known = ", ".join(str(s.get("name") or s.get("id")) for s in sessions[:10]) or "none"
            raise InvalidRequestError(f"no session {name_or_id!r}: known are {known}", param="session")
        conv = Conversation(self.kernel, self.kernel.sessions.open(match[0]["id"]))
        conv.rag = self.rag
        return conv

    def sessions(self) -> list[dict[str, Any]]:
        if not hasattr(self.kernel, "sessions"):
            raise SessionsUnavailableError("sessions are not available in this kernel: the chat lives in this "
                                           "shell only")
        return list(self.kernel.sessions.list())

    # -- settings ----------------------------------------------------------------------------------

    def setting(self, key: str) -> Any:
        with self._lock:
            if self.session is not None:
                return getattr(self.session, key, None)
            return self._settings.get(key)

    @property
    def model(self) -> str:
        return self.setting("model") or self.kernel.config.default_model

    @property
    def adapter(self) -> str | None:
        return self.setting("adapter")

    @property
    def system(self) -> str | None:
        return self.setting("system")

    def update(self, **settings: Any) -> None:
        with self._lock:
            if self.session is not None:
                self.session.update(**settings)
            else:
                self._settings.update(settings)

    @property
    def title(self) -> str:
        if self.session is None:
            return "unsaved"
        s = self.session
        title = getattr(s, "name", None) or (getattr(s, "title", None) or "")[:24] or "new chat"
        return str(title)

    @property
    def header(self) -> str:
        """The shell's subtitle: model (+ adapter), title, rag directory."""
        parts = [self.model + (f" + {self.adapter}" if self.adapter else ""), self.title]
        if self.rag:
            parts.append(f"rag {self.rag}")
        return " | ".join(parts)

    # -- messages ----------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.session.messages if self.session is not None else self._messages)

    def append(self, role: str, content: str, **extra: Any) -> None:
        message = {"role": role, "content": content, **extra}
        with self._lock:
            if self.session is not None:
                self.session.append(message)
            else:
                self._messages.append(message)

    def last_answer(self) -> str | None:
        for m in reversed(self.messages):
            if m.get("role") == "assistant" and m.get("content"):
                return m["content"]
        return None

    def request_messages(self, keep: int = MAX_CONTEXT_MESSAGES) -> list[dict[str, str]]:
        """What a chat turn sends: the system prompt, then the last `keep` user/assistant turns."""
        turns = [{"role": m["role"], "content": m["content"]} for m in self.messages
                 if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str) and m["content"]]
        return ([{"role": "system", "content": self.system}] if self.system else []) + turns[-keep:]
