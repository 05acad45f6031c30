"""Fine-tuning: train PEFT adapters (LoRA, AdaLoRA, IA3, prefix) that install as modules.

`data.py` reads and encodes JSONL; `methods.py` maps methods to peft configs; `trainer.py` is the
accelerate loop (single process or DDP under torchrun). Entry points: `kernel.finetune(...)` (a job
with progress) and `llmos finetune` (shell/cli_finetune.py).
"""
