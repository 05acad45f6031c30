"""Fair share by tokens (virtual token counters, as in VTC, OSDI'24), one ledger for every engine.

Each owner (a tenant, over HTTP) accrues the tokens served to it: its prompt tokens when the request
is admitted, completion tokens as they are sampled, on whatever model. A scheduler admits the waiting
owner with the least service first, so a tenant sending prompts 8x longer gets the same tokens, not
8x the service. An owner returning from idle is lifted to the least-served active owner's counter: no
credit is banked while away. The ledger is shared by all schedulers (and by the device gates that
choose between engines), so fairness holds across models too.

Boundaries: pure Python; thread-safe (engines run in their own threads), never calls out.
"""

from __future__ import annotations

import threading
from collections import Counter

#: the default weight of a prompt token and of a completion token in an owner's counter
PROMPT_WEIGHT = 1.0
COMPLETION_WEIGHT = 1.0


class ServiceLedger:
    def __init__(self, prompt_weight: float = PROMPT_WEIGHT, completion_weight: float = COMPLETION_WEIGHT, *,
                 fifo: bool = False) -> None:
        self.prompt_weight, self.completion_weight = prompt_weight, completion_weight
        self.fifo = fifo  # every owner counts as unserved: arrival order decides (the baseline of B10/B11)
        self._lock = threading.Lock()
        self._served: dict[str, float] = {}
        self._active: Counter[str] = Counter()

    def served(self, owner: str) -> float:
        return 0.0 if self.fifo else self._served.get(owner, 0.0)

    def joined(self, owner: str) -> None:
        """A request of `owner` entered a queue (an owner back from idle starts level with the others)."""
        with self._lock:
            if not self._active[owner]:
                active = [self._served.get(o, 0.0) for o, n in self._active.items() if n and o != owner]
                self._served[owner] = max(self._served.get(owner, 0.0), min(active, default=0.0))
            self._active[owner] += 1

    def left(self, owner: str) -> None:
        """A request of `owner` ended; an owner with none left is forgotten (it is lifted on return)."""
        with self._lock:
            self._active[owner] -= 1
            if self._active[owner] <= 0:
                del self._active[owner]
                if not self._active:  # nobody active: start everyone afresh
                    self._served.clear()
                else:
                    self._served.pop(owner, None)

    def charge(self, owner: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._served[owner] = (self._served.get(owner, 0.0) + self.prompt_weight * prompt_tokens
                                   + self.completion_weight * completion_tokens)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._served)
