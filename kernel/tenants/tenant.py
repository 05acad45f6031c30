"""One tenant's policy: its name, priority class, limits and memfs reach.

A priority class caps what a tenant's requests may ask for: `interactive` may ask up to `high`, `normal`
up to `normal`, `batch` only `batch`; an admin may ask anything. A request that asks for nothing gets
its tenant's class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidRequestError, TenantDeniedError
from ..sched.request import Priority

#: a tenant's name: also its memfs home (/home/NAME) and a metrics label
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: priority class -> the most urgent priority its requests may ask for
CLASSES: dict[str, Priority] = {"interactive": Priority.HIGH, "normal": Priority.NORMAL, "batch": Priority.BATCH}
#: the machine's owner (a client on the Unix socket, or an in-process caller)
OWNER = "owner"
#: the holder of the single --api-key
ADMIN = "admin"
#: a client without a key where a server needs none (plain `llmos serve` on loopback)
ANONYMOUS = "anonymous"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # match() would let "alice\n" through ($)
        raise InvalidRequestError(f"a tenant name is 1-32 characters of a-z, 0-9, '-' and '_', starting with a "
                                  f"letter or digit, got {name!r}", param="name")
    return name


def check_class(value: str) -> str:
    if value not in CLASSES:
        raise InvalidRequestError(f"priority class must be one of {', '.join(CLASSES)}, got {value!r}",
                                  param="priority")
    return value


@dataclass(frozen=True)
class Tenant:
    name: str
    priority_class: str = "normal"
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None
    admin: bool = False
    #: memfs directories it may read besides its home
    shared: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_class(self.priority_class)
        for value, param in ((self.tokens_per_minute, "tokens_per_minute"), (self.max_concurrency, "max_concurrency")):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidRequestError(f"{param} must be a whole number >= 1, got {value!r}", param=param)
        if self.shared:
            from ..memfs.paths import normalize  # memfs's package loads numpy: only when paths are given

            object.__setattr__(self, "shared", tuple(normalize(p, param="shared") for p in self.shared))

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def default_priority(self) -> Priority:
        return CLASSES[self.priority_class]

    def priority(self, asked: Priority | int | str | None) -> Priority:
        """The priority a request of this tenant runs at: what it asked for, if its class allows it."""
        if asked is None:
            return self.default_priority
        prio = Priority.parse(asked)
        if not self.admin and prio < self.default_priority:
            raise TenantDeniedError(f"tenant {self.name!r} is in the {self.priority_class} class: its requests may ask "
                                    f"for priority {self.default_priority.name.lower()} or lower, not "
                                    f"{prio.name.lower()}", param="priority")
        return prio

    def may_read(self, path: str) -> bool:
        return self.admin or _under(path, self.home) or any(_under(path, s) for s in self.shared)

    def may_write(self, path: str) -> bool:
        return self.admin or _under(path, self.home)

    def with_limits(self, **changes: Any) -> "Tenant":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "priority": self.priority_class, "tokens_per_minute": self.tokens_per_minute,
                "max_concurrency": self.max_concurrency, "admin": self.admin, "home": self.home,
                "shared": list(self.shared)}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


#: admins run at normal unless they ask for more (they may ask anything)
OWNER_TENANT = Tenant(OWNER, "normal", admin=True)
ADMIN_TENANT = Tenant(ADMIN, "normal", admin=True)
ANONYMOUS_TENANT = Tenant(ANONYMOUS, "normal")
