"""What a fine-tuning run does when the user does not say: its learning rate and epochs from the data
size and method, and afterwards whether it converged.

Measured here on SmolLM2-135M (docs/finetune.md): 36 question/answer rows about one invented fact,
LoRA rank 8 at the old default lr 2e-4 for 5 epochs (25 steps) ended at eval loss 1.08 (base 2.45) and
the module did not answer the fact; lr 2e-3 for at least ~40 steps learns it. Small data needs a
higher rate and several passes; large data one pass at a gentler rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: small data is repeated until a run has at least this many optimizer steps (at most MAX_EPOCHS passes)
MIN_STEPS = 40
MAX_EPOCHS = 10
#: rows beyond which the gentler rate is used
LARGE_DATA = 1000
RATES = {"lora": (2e-3, 5e-4), "adalora": (2e-3, 5e-4), "ia3": (1e-2, 3e-3), "prefix": (1e-2, 3e-3)}
#: converged: eval loss at most this share of the base model's, and the last epoch's train loss no longer
#: falling by more than STILL_FALLING
CONVERGED_RATIO = 0.5
STILL_FALLING = 0.15


@dataclass(frozen=True)
class Plan:
    lr: float
    epochs: float
    steps: int
    chosen: tuple[str, ...]  # which of lr / epochs llmos chose (the user set the others)
    small_data_lr: float = 2e-3  # the method's rate for small data (suggested when a run used less)

    def describe(self, rows: int) -> str:
        if not self.chosen:
            return f"{self.steps} steps at lr {self.lr:g}"
        picked = " and ".join(f"lr {self.lr:g}" if c == "lr" else f"{self.epochs:g} epochs" for c in self.chosen)
        flags = " / ".join(f"--{c}" for c in self.chosen)
        return f"{picked} chosen for {rows} rows ({self.steps} steps); {flags} to override"


def plan(method: str, rows: int, batch_size: int, processes: int, *, lr: float | None, epochs: float | None,
         max_steps: int | None) -> Plan:
    per_epoch = max(1, math.ceil(math.ceil(rows / batch_size) / processes))
    chosen = []
    if lr is None:
        small, large = RATES[method]
        lr = small if rows <= LARGE_DATA else large
        chosen.append("lr")
    if epochs is None and max_steps is None:
        epochs = float(min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / per_epoch))))
        chosen.append("epochs")
    epochs = epochs if epochs is not None else 1.0
    steps = max_steps or max(1, math.ceil(per_epoch * epochs))
    return Plan(lr, epochs, steps, tuple(chosen), RATES[method][0])


def convergence(plan_: Plan, eval_loss: float, base_eval_loss: float, epoch_losses: list[float],
                accuracy: tuple[int, int] | None = None) -> str | None:
    """None when the run looks converged; else what is wrong and the flags to try."""
    problems = []
    if eval_loss > CONVERGED_RATIO * base_eval_loss:
        problems.append(f"eval loss {eval_loss:.3f} is still {eval_loss / base_eval_loss:.0%} of the base "
                        f"model's {base_eval_loss:.3f}")
    if len(epoch_losses) >= 2 and epoch_losses[-1] < (1 - STILL_FALLING) * epoch_losses[-2]:
        problems.append(f"train loss was still falling ({epoch_losses[-2]:.3f} -> {epoch_losses[-1]:.3f} "
                        "in the last epoch)")
    if accuracy is not None and accuracy[0] * 2 < accuracy[1]:
        problems.append(f"the module answers {accuracy[0]}/{accuracy[1]} of the checked rows")
    if not problems:
        return None
    more = f"--epochs {max(2.0, plan_.epochs * 2):g}"
    hint = f"{more} or --lr {plan_.small_data_lr:g}" if plan_.lr < plan_.small_data_lr else more
    return f"the run did not converge: {'; '.join(problems)}. Try {hint} (the module is installed either way)"
