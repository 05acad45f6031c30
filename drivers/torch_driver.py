"""The torch/transformers driver: any causal LM transformers loads, with continuous batching.

Loading (drivers/torch_loading.py): a Hugging Face directory directly; a GGUF file dequantized once
and cached as safetensors under `$LLMOS_HOME/cache/torch/`. Device: the model's placement (its
[models.NAME] `device`/`main_gpu`), by default CUDA, then MPS, then CPU (bf16/fp16 on accelerators,
fp32 on CPU). Prefix reuse: drivers/torch_prefix.py; mixed LoRA batches: drivers/torch_lora.py;
JSON-schema constraints: drivers/torch_constrain.py.

One step (`execute`): 1. drop released sequences (their batch rows go); 2. one forward for every
decoding row of the shared padded batch (drivers/torch_batch.py); 3. prefill chunks of new
sequences, each on its private cache; a sequence whose prompt is complete samples its first token
and joins the batch for the next step. Sampling is per row (drivers/torch_sampling.py); a row whose
output must match a JSON schema has its logits masked by its grammar first (drivers/torch_constrain.py).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llmos.kernel.errors import AdapterConflictError, InvalidRequestError, ModelLoadError
from llmos.kernel.sched.interface import DriverOutput, NewSequence, SchedulerOutput
from llmos.kernel.sched.request import SamplingParams

from .base import Driver, DriverOptions, ModelInfo, ProbeResult, ProgressCallback
from .torch_loading import hf_model_dir, pick_device

log = logging.getLogger("llmos.torch")

#: KV kept for prefix reuse (drivers/torch_prefix.py), unless DriverOptions.extra["prefix_cache_bytes"] says
PREFIX_CACHE_BYTES = 512 << 20


@dataclass
class _Seq:
    request_id: str
    tokens: list[int]
    params: SamplingParams
    generator: Any
    n_past: int = 0
    sched_pos: int = 0
    cache: Any = None  # private cache while prefilling; None once in the batch
    adapter: str | None = None
    offset: int = 0  # virtual tokens ahead of the sequence in its cache (prefix tuning)
    constraint: Any = None  # torch_constrain.Constraint when the output must match a JSON schema
    salt: str | None = None  # whose prompt (NewSequence.cache_salt): its KV is reused by the same salt only
    scored: int = 0  # prompt_logprobs: the prompt's length (positions 1..scored-1 are scored); 0: none


def _adalora_config(path: Path, name: str):
    """The adapter's AdaLoraConfig with rank_pattern keys ending in the adapter name: peft's loader strips
    one key segment, or two when the adapter name occurs anywhere in the key (so a module named e.g.
    `proj` or `layers` would resolve to the wrong layer); with the name appended, two is always right."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(path))
    if config.rank_pattern:
        config.rank_pattern = {f"{key.rsplit('.lora_E', 1)[0]}.lora_E.{name}": mask
                               for key, mask in config.rank_pattern.items()}
    return config


class TorchDriver(Driver):
    name = "torch"
    formats = frozenset({"hf", "gguf"})
    supports_lora = True
    mixed_adapters = True  # PEFT LoRA applies per row (adapter_names)
    #: per-row adapter_names works for these PEFT types; prefix tuning runs on the base layers
    mixable_methods = frozenset({"lora", "ia3", "prefix_tuning"})
    supports_json_schema = True  # llguidance token masks (drivers/torch_constrain.py)
    supports_prompt_logprobs = True

    @classmethod
    def probe(cls) -> ProbeResult:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return ProbeResult(False, (), f"torch/transformers are not installed ({exc}): pip install 'llmos[torch]'")
        return ProbeResult(True, (pick_device()[0],))

    @classmethod
    def check_json_schema(cls, schema: dict[str, Any]) -> None:
        from .torch_constrain import check_schema

        check_schema(schema)  # bounded and compiled by llguidance now; cached for the step

    def __init__(self, spec, options: DriverOptions) -> None:
        super().__init__(spec, options)
        self.model = None
        self.tokenizer = None
        self._seqs: dict[str, _Seq] = {}
        self._batch = None
        self._peft = None  # PeftModel wrapping self.model once an adapter is loaded
        self._gathered = None  # GatheredLora (drivers/torch_lora.py) over self._peft
        self.model_dir: Path | None = None
        self._adapter_paths: dict[str, Path] = {}  # kept across reloads
        self._prefixes: dict[str, list] = {}  # prefix-tuning adapters: name -> per-layer (k, v) of the virtual tokens
        self._reuse = None  # PrefixStore (drivers/torch_prefix.py) while loaded
        self._grammars = None  # torch_constrain.Grammars for the loaded tokenizer

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self, progress: ProgressCallback | None = None) -> ModelInfo:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .torch_batch import PaddedBatch
        from .torch_prefix import PrefixStore
        from .torch_constrain import Grammars

        report = progress or (lambda _f: None)
        hf_logging.disable_progress_bar()
        device, dtype = pick_device(self.spec.options.get("placement"))
        torch.set_num_threads(self.options.n_threads)
        cache_root = self.options.extra.get("cache_dir") or (Path.home() / ".cache" / "llmos")
        source = hf_model_dir(self.spec, Path(cache_root), report)
        self.model_dir = source  # the HF directory the weights come from (for tools such as fine-tuning)
        report(0.8)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"transformers could not load {self.spec.name} from {source}: {exc}") from exc
        self.device = torch.device(device)
        self._batch = PaddedBatch(self.device)
        budget = self.options.extra.get("prefix_cache_bytes", PREFIX_CACHE_BYTES) if self.options.prefix_cache else 0
        self._reuse = PrefixStore(budget)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        cfg = self.model.config
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        context = min(getattr(cfg, "max_position_embeddings", 2048) or 2048, self.options.n_ctx)
        self.info = ModelInfo(
            context_length=context, kv_capacity=self.options.n_ctx, max_seqs=self.options.max_seqs,
            eos_token_ids=frozenset(eos_ids), vocab_size=cfg.vocab_size, device=device,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            memory_bytes=sum(p.numel() * p.element_size() for p in self.model.parameters()),
        )
        self._grammars = Grammars(self.tokenizer, cfg.vocab_size, sorted(eos_ids))
        self._set_peft(None)
        self._prefixes = {}
        for name, apath in list(self._adapter_paths.items()):  # a reload keeps the adapters
            self.load_adapter(name, apath)
        report(1.0)
        return self.info

    def unload(self) -> None:
        self._seqs.clear()
        self._set_peft(None)
        self.model = None
        self.tokenizer = None
        self._batch = None
        self._reuse = None
        self._grammars = None

    # -- adapters (PEFT LoRA, mixed per row) ------------------------------------------------------

    BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names

    def load_adapter(self, name: str, path: Path) -> int:
        from peft import PeftConfig, PeftModel

        peft_type = str(PeftConfig.from_pretrained(str(path)).peft_type)
        if self._reuse is not None:
            self._reuse.forget(name)  # KV kept under an earlier module of this name is not this one's
        if peft_type.endswith("PREFIX_TUNING"):
            return self._load_prefix(name, path)
        if self._peft is not None:
            current = str(next(iter(self._peft.peft_config.values())).peft_type)
            if current != peft_type:
                held = [n for n in self._peft.peft_config]
                raise AdapterConflictError(
                    f"the torch driver holds {current.split('.')[-1]} adapters {held}; PEFT cannot combine "
                    f"them with {peft_type.split('.')[-1]} adapter {name}: rmmod them first", held)
        config = _adalora_config(path, name) if peft_type.endswith("ADALORA") else None
        try:
            with warnings.catch_warnings():  # peft probes deprecated transformers attributes
                warnings.simplefilter("ignore", FutureWarning)
                # AdaLoRA's rank_pattern is a per-rank mask its loader applies; peft's generic check reads it
                # as LoRA's module -> rank map and warns that no module matched (tests/test_finetune.py::
                # test_a_mounted_adalora_module_gives_the_trained_models_logits proves the load is exact)
                warnings.filterwarnings("ignore", "The following rank_pattern keys did not match", RuntimeWarning)
                if self._peft is None:
                    self._set_peft(PeftModel.from_pretrained(self.model, str(path), adapter_name=name, config=config))
                else:
                    if config is not None:  # registered first, load_adapter uses it instead of the file's
                        config.inference_mode = True
                        self._peft.add_adapter(name, config)
                    self._peft.load_adapter(str(path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise ModelLoadError(f"PEFT could not load adapter {name} from {path} onto {self.spec.name}: {exc}") from exc
        self._peft.eval()
        self._set_peft(self._peft)
        self._adapter_paths[name] = path
        return sum(p.numel() * p.element_size() for n, p in self._peft.named_parameters() if f".{name}." in n)

    def _load_prefix(self, name: str, path: Path) -> int:
        """Prefix tuning injects no layers: compute its virtual tokens' KV once; a sequence using it
        starts from a copy of that KV (positions after the virtual tokens, as PEFT does)."""
        import torch
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            wrapper = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        with torch.inference_mode():
            prompt = wrapper.get_prompt(batch_size=1)
        layers = prompt.layers if hasattr(prompt, "layers") else None
        kv = [(layer.keys.clone(), layer.values.clone()) for layer in layers] if layers is not None \
            else [(k.clone(), v.clone()) for k, v in prompt]
        self._prefixes[name] = kv
        self._adapter_paths[name] = path
        return sum(k.numel() * k.element_size() * 2 for k, _v in kv)

    def unload_adapter(self, name: str) -> None:
        self._adapter_paths.pop(name, None)
        if self._reuse is not None:
            self._reuse.forget(name)
        if self._prefixes.pop(name, None) is not None or self._peft is None:
            return
        held = [n for n in self._adapter_paths if n not in self._prefixes]  # the ones PEFT holds
        if not held:
            self.model = self._peft.unload()  # back to the plain base model
            self._set_peft(None)
            return
        remaining = held[0]
        if name in self._peft.active_adapters:
            self._peft.set_adapter(remaining)
        self._peft.delete_adapter(name)
        self._set_peft(self._peft)

    def _set_peft(self, peft) -> None:
        """The PEFT wrapper or its adapter set changed: the gathered LoRA stacks follow."""
        if self._gathered is not None:
            self._gathered.invalidate()
        self._peft = peft
        if peft is None:
            self._gathered = None
        else:
            from .torch_lora import GatheredLora

            self._gathered = GatheredLora(peft, self.BASE)

    # -- tokenizer -----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # -- one step ------------------------------------------------------------------------------

    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        import torch

        out = DriverOutput()
        # 1. Released sequences leave the batch.
        gone = {rid for rid in batch.released if self._seqs.pop(rid, None) is not None}
        self._batch.leave(gone)
        for new in batch.new:
            self._admit(new, out)
        with torch.inference_mode():
            # 2. One forward for all decoding rows.
            decoding = [rid for rid in batch.num_scheduled_tokens if rid in self._batch]
            if decoding:
                self._decode(set(decoding), out)
            # 3. Prefill chunks; completed prompts sample and join the batch.
            for rid, n in batch.num_scheduled_tokens.items():
                if rid not in self._batch and rid in self._seqs:
                    self._prefill(self._seqs[rid], n, out)
                elif rid not in self._seqs and rid not in out.failed:
                    out.failed[rid] = "the driver has no state for this sequence"
        return out

    def _admit(self, new: NewSequence, out: DriverOutput) -> None:
        from .torch_batch import new_cache
        from .torch_sampling import make_generator

        sampling = new.sampling.with_defaults()  # the kernel fills every field; a direct caller may not
        constraint = None
        if sampling.json_schema is not None:  # first: a schema that cannot be compiled fails this sequence alone
            generated = new.token_ids[new.prompt_len:] if new.prompt_len else ()
            try:
                constraint = self._grammars.start(sampling.json_schema, generated)
            except InvalidRequestError as exc:
                out.failed[new.request_id] = str(exc)
                return
        tokens = list(new.token_ids)
        prefix = self._prefixes.get(new.adapter) if new.adapter else None
        offset = prefix[0][0].shape[2] if prefix is not None else 0
        scored = (new.prompt_len or len(tokens)) if sampling.prompt_logprobs else 0
        # the last prompt token is always computed, for its logits; a scored prompt is computed whole
        reused, cache = self._reuse.lookup(new.adapter, tokens, 0 if scored else len(tokens) - 1, new.cache_salt)
        if cache is None:
            cache = new_cache()
            for i, (k, v) in enumerate(prefix or ()):
                cache.update(k.clone(), v.clone(), i)
        else:
            out.cached_tokens[new.request_id] = reused
        self._seqs[new.request_id] = _Seq(
            new.request_id, tokens, sampling, make_generator(sampling, self.device),
            n_past=reused, cache=cache, adapter=new.adapter, offset=offset, constraint=constraint,
            salt=new.cache_salt, scored=scored)

    def _forward(self, input_ids, cache, position_ids, adapters: list[str | None], attention_mask=None,
                 every_position: bool = False):
        """The logits of each row's last position ((rows, vocab)); with `every_position`, of every
        position ((rows, positions, vocab))."""
        kwargs = {self._cache_kw: cache, "logits_to_keep": 0 if every_position else 1}
        names = [self.BASE if a is None or a in self._prefixes else a for a in adapters]
        if self._peft is None:
            return self._call(self.model, input_ids, position_ids, attention_mask, kwargs)
        peft_type = str(next(iter(self._peft.peft_config.values())).peft_type).split(".")[-1].lower()
        if peft_type == "lora" and self._gathered.usable():  # one gathered matmul pair per layer
            with self._gathered.apply(names):
                return self._call(self._peft, input_ids, position_ids, attention_mask, kwargs)
        if peft_type in self.mixable_methods:  # other layer-injecting adapters per row, PEFT's sub-batches
            return self._call(self._peft, input_ids, position_ids, attention_mask, {**kwargs, "adapter_names": names})
        # an exclusive method (e.g. AdaLoRA): the scheduler gives every row of the step one adapter
        name = names[0]
        if name == self.BASE:
            with self._peft.disable_adapter():
                return self._call(self._peft, input_ids, position_ids, attention_mask, kwargs)
        if self._peft.active_adapter != name:
            self._peft.set_adapter(name)
        return self._call(self._peft, input_ids, position_ids, attention_mask, kwargs)

    @staticmethod
    def _call(model, input_ids, position_ids, attention_mask, kwargs):
        logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                       use_cache=True, **kwargs).logits
        return logits if kwargs["logits_to_keep"] == 0 else logits[:, -1, :]

    def _decode(self, scheduled: set[str], out: DriverOutput) -> None:
        import torch

        rows = [self._seqs[rid] for rid in self._batch.rows]
        active = torch.tensor([s.request_id in scheduled for s in rows], device=self.device)
        ids = torch.tensor([[s.tokens[s.n_past] if s.request_id in scheduled else 0] for s in rows], device=self.device)
        pos = torch.tensor([[s.offset + s.n_past] for s in rows], device=self.device)
        mask = self._batch.step_mask(active)
        logits = self._forward(ids, self._batch.cache, pos, [s.adapter for s in rows], mask)
        picked = [i for i, s in enumerate(rows) if s.request_id in scheduled]
        for s in (rows[i] for i in picked):
            s.n_past += 1
            s.sched_pos += 1
        self._sample([rows[i] for i in picked], logits[picked], out)

    def _prefill(self, seq: _Seq, n: int, out: DriverOutput) -> None:
        import torch

        end = seq.sched_pos + n
        seq.sched_pos = end
        if end <= seq.n_past:  # this chunk's KV came from the prefix store
            return
        chunk = seq.tokens[seq.n_past:end]
        ids = torch.tensor([chunk], device=self.device)
        pos = torch.arange(seq.offset + seq.n_past, seq.offset + end, device=self.device).unsqueeze(0)
        scores = seq.n_past + 1 < seq.scored
        logits = self._forward(ids, seq.cache, pos, [seq.adapter], every_position=scores)
        if scores:  # log p(token p+1 | tokens <= p) for the prompt positions of this chunk
            lps = torch.log_softmax(logits[0].float(), dim=-1)
            targets = [(i, p + 1) for i, p in enumerate(range(seq.n_past, end)) if p + 1 < seq.scored]
            picked = lps[[i for i, _ in targets], [seq.tokens[p] for _, p in targets]].tolist()
            out.prompt_logprobs.setdefault(seq.request_id, []).extend(
                (p, lp) for (_, p), lp in zip(targets, picked))
            logits = logits[:, -1, :]
        seq.n_past = end
        if end == len(seq.tokens):
            self._reuse.remember(seq.adapter, seq.tokens, seq.offset, seq.cache, seq.salt)
            self._sample([seq], logits, out)
            self._batch.join(seq.request_id, seq.cache, seq.offset + seq.n_past)
            seq.cache = None

    def _sample(self, seqs: list[_Seq], logits, out: DriverOutput) -> None:
        from .torch_sampling import sample_rows

        constraints = [s.constraint for s in seqs]
        if any(c is not None for c in constraints):  # JSON-schema rows: the grammar masks their logits
            from .torch_constrain import mask_rows

            logits, errors = mask_rows(logits, constraints)
            out.failed.update({seqs[i].request_id: message for i, message in errors.items()})
        tokens = sample_rows(logits, [s.params for s in seqs], [s.tokens for s in seqs], [s.generator for s in seqs])
        for seq, token in zip(seqs, tokens):
            if seq.request_id in out.failed:
                continue
            seq.tokens.append(token)
            out.sampled[seq.request_id] = token
            if seq.constraint is not None:
                seq.constraint.accept(token)

    def stats(self) -> dict[str, Any]:
        reuse = self._reuse
        return {"active_sequences": len(self._seqs), "batch_rows": len(self._batch.rows) if self._batch else 0,
                "batch_length": self._batch.length if self._batch else 0,
                "cached_prefixes": len(reuse) if reuse else 0, "cached_prefix_bytes": reuse.bytes if reuse else 0,
                "prefix_hits": reuse.hits if reuse else 0, "prefix_tokens_reused": reuse.tokens_reused if reuse else 0}
