"""`llmos mod merge NAME --as MODEL`: fold an installed module into its base model's weights and register
the result as a new local model (kernel/models/local.py), which then runs with no adapter cost.

The base must be the GGUF model the module was trained on (its identity is checked as for a request);
the merge itself is PEFT's, written as an F16 GGUF by drivers/gguf_merge.py. Prefix-tuning modules,
and architectures other than llama's, are refused with the reason before anything is computed.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InvalidRequestError
from ..models.registry import ModelRegistry, ModelSpec
from .store import ModuleStore

#: architectures whose weights llmos folds modules into (their tensor names and q/k layout are known)
MERGE_ARCHS = ("llama",)


def merge_module(store: ModuleStore, registry: ModelRegistry, cache_root, name: str, as_name: str,
                 progress: Callable[[str, float], None] = lambda _w, _f: None) -> ModelSpec:
    from llmos.drivers.gguf_lora import base_shape_info
    from llmos.drivers.gguf_merge import merge_to_gguf
    from llmos.drivers.torch_loading import hf_model_dir

    manifest = store.get(name)
    as_name = registry.local.check_new(as_name, registry.names())
    base = registry.resolve(manifest.base_model)
    store.check_base(manifest, base)
    if "peft" not in manifest.formats:
        raise InvalidRequestError(f"module {name} has no PEFT form (it was installed as {manifest.formats[0]}): "
                                  "merging needs the PEFT weights", param="name")
    if manifest.method == "prefix_tuning" or manifest.method == "prefix":
        raise InvalidRequestError(f"module {name} is prefix tuning: it adds virtual tokens, not weight changes, "
                                  "so it cannot be folded into the model", param="name")
    if base.format != "gguf":
        raise InvalidRequestError(f"{base.name} is a {base.format} model: llmos merges into GGUF models",
                                  param="name")
    arch = base_shape_info(base.path)[0]
    if arch not in MERGE_ARCHS:
        raise InvalidRequestError(f"{base.name} is a {arch} model: llmos merges modules into "
                                  f"{', '.join(MERGE_ARCHS)} models only", param="name")
    progress("preparing the base weights", 0.0)
    hf_dir = hf_model_dir(base, cache_root)
    info = {"description": f"{base.name} with module {name} merged (F16)", "made_by": "merge", "base": base.name,
            "module": name, "method": manifest.method, "type": "f16"}
    registry.local.create(as_name, "model.gguf", lambda out: merge_to_gguf(
        base.path, hf_dir, store.weights_path(manifest, "peft"), out, progress), info)
    return registry.resolve(as_name)
