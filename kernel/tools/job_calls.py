"""The kernel's background jobs (mixed into `Kernel`): fine-tuning runs, and the list of jobs.

Boundaries: a job runs on its own thread (jobs.py); the training itself is the finetune plugin's
(plugins/finetune/), imported when a run starts, and its review asks the new module through this kernel.
"""

from __future__ import annotations

from typing import Any

from .jobs import Job


class JobCalls:
    config: Any
    _jobs: list[Job]

    def finetune(self, *, model: str | None = None, data: str, out: str, check: bool = True, **options: Any) -> Job:
        """Train a PEFT adapter in the background; the job's result installs module `out`.

        Options: method (lora|adalora|ia3|prefix), rank, epochs, lr (both chosen from the data when
        unset), batch_size, max_steps, eval, seed, resume, max_len. `job.progress` has step/total/loss/
        tokens_per_s/eta_s; `job.cancel()` saves a resumable checkpoint. With `check`, the new module
        is then asked the data's questions and the result's `review` says whether the run converged."""
        from llmos.plugins.finetune.review import review
        from llmos.plugins.finetune.trainer import FinetuneOptions, run_finetune

        self._check_open()
        opts = FinetuneOptions(model=model or self.config.default_model, data=data, out=out, **options)
        opts.validate()

        def train(progress, stop):
            result = run_finetune(self.config, opts, progress=progress, stop=stop)
            return review(self, opts, result) if check else result

        job = Job("finetune", train)
        self._jobs.append(job)
        return job

    def jobs(self) -> list[dict[str, Any]]:
        return [j.as_dict() for j in self._jobs]
