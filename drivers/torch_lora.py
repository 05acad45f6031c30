"""Mixed-adapter LoRA in one gathered matmul pair per layer (the Punica / S-LoRA idea, in plain torch).

PEFT's per-row `adapter_names` path runs, in every LoRA layer, one sub-batch per distinct adapter
(gather the rows, two small matmuls, scatter back), so a batch spread over 8 adapters pays 8 times the
small-op overhead of a batch on one. Here every LoRA layer keeps its adapters' A and B stacked (the
scaling folded into B, ranks zero-padded to the largest, zeros at index 0 for "no adapter" and for
adapters that leave the layer alone); a step gathers each row's A and B by one index tensor and adds
bmm(bmm(x, A_row^T), B_row^T) to the base layer's output: the same few ops whatever the mix.

Boundaries: reads PEFT's LoRA layers (lora_A, lora_B, scaling) and never changes them; adds its delta
through forward hooks while PEFT's own adapter layers are disabled (`apply`). The stacks are built on
first use and dropped when the adapter set changes (`invalidate`). Only plain LoRA on nn.Linear
layers qualifies (`usable`); anything else (DoRA and other variants, LoRA biases, embedding or
convolution LoRA) keeps PEFT's own per-row path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer


@dataclass
class _Stack:
    a: torch.Tensor  # (adapters + 1, rank, in)
    b: torch.Tensor  # (adapters + 1, out, rank), scaling folded in


class GatheredLora:
    def __init__(self, peft_model, base_name: str) -> None:
        self._peft = peft_model
        self._base = base_name  # the name rows without an adapter carry
        self._stacks: dict[LoraLinear, _Stack] | None = None
        self._index: dict[str, int] = {}
        self._usable: bool | None = None
        self._hooks: list = []
        self._rows: torch.Tensor | None = None  # per row, its adapter's index into the stacks
        self._single: int | None = None  # every row on this one index (a plain matmul pair serves)
        self._device = next(peft_model.parameters()).device

    def invalidate(self) -> None:
        """The adapter set changed: rebuild the stacks before the next step."""
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._stacks, self._usable = [], None, None

    def usable(self) -> bool:
        if self._usable is None:
            layers = [m for m in self._peft.modules() if isinstance(m, LoraLayer)]
            self._usable = bool(layers) and all(
                type(m) is LoraLinear and not m.lora_variant and not any(getattr(m, "lora_bias", {}).values())
                for m in layers)
        return self._usable

    @contextlib.contextmanager
    def apply(self, names: Sequence[str]) -> Iterator[None]:
        """Run the forward inside with row i under adapter names[i] (the base name: none)."""
        if self._stacks is None:
            self._build()
        index = [self._index.get(n, 0) for n in names]
        if not any(index):  # every row on the base model
            self._rows, self._single = None, None
        elif len(set(index)) == 1:
            self._rows, self._single = None, index[0]
        else:
            self._rows, self._single = torch.tensor(index, device=self._device), None
        try:
            with self._peft.disable_adapter():
                yield
        finally:
            self._rows, self._single = None, None

    def _build(self) -> None:
        adapters = list(self._peft.peft_config)
        self._index = {name: i + 1 for i, name in enumerate(adapters)}
        self._stacks = {}
        for module in self._peft.modules():
            if not isinstance(module, LoraLinear):
                continue
            held = [n for n in adapters if n in module.lora_A]
            if not held:
                continue
            weight = module.lora_A[held[0]].weight
            rank = max(module.lora_A[n].weight.shape[0] for n in held)
            a = torch.zeros(len(adapters) + 1, rank, module.in_features, dtype=weight.dtype, device=weight.device)
            b = torch.zeros(len(adapters) + 1, module.out_features, rank, dtype=weight.dtype, device=weight.device)
            for name in held:
                r = module.lora_A[name].weight.shape[0]
                a[self._index[name], :r] = module.lora_A[name].weight.detach()
                b[self._index[name], :, :r] = module.lora_B[name].weight.detach() * module.scaling[name]
            self._stacks[module] = _Stack(a, b)
            self._hooks.append(module.register_forward_hook(self._add_delta))

    def _add_delta(self, module, args, output):
        if self._single is None and self._rows is None:
            return output
        stack = self._stacks[module]
        x = args[0].to(stack.a.dtype)
        if self._single is not None:  # one adapter for the whole batch
            delta = torch.nn.functional.linear(torch.nn.functional.linear(x, stack.a[self._single]),
                                               stack.b[self._single])
        else:
            a, b = stack.a[self._rows], stack.b[self._rows]  # (rows, rank, in), (rows, out, rank)
            delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
        return output + delta.to(output.dtype)
