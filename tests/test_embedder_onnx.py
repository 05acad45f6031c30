"""The ONNX Runtime embedder against the torch one (real model, real onnxruntime): the same passages
come back (top-5 overlap on a fixed query set over CPython's pydoc topics), the same vectors, the same
chunks and token counts; length-bucketed batches keep the input order; the export is cached, checked
and redone when damaged; the `embedder_backend` setting picks the backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from llmos.kernel.config import Config
from llmos.kernel.errors import ConfigError

pytest.importorskip("onnxruntime")

QUERIES = ["how do for loops work", "what does the with statement do", "exception handling with try and except",
           "defining a class", "operator precedence", "string formatting with a format spec",
           "comparison of sequences", "the global statement", "lambda expressions", "the import system and packages",
           "boolean operations and or not", "slicing a list", "augmented assignment",
           "the yield expression and generators", "async def coroutines", "await expression",
           "raise an exception with a cause", "the assert statement", "del removes name bindings",
           "pass does nothing", "return from a function", "break out of a loop", "continue with the next iteration",
           "while loop with an else clause", "if elif else", "function definition with default arguments",
           "decorators", "nonlocal variables in nested functions", "naming and binding scopes",
           "special method names like __init__", "numeric types int float complex", "truth value testing",
           "identity comparisons with is", "membership test in operator", "conditional expressions",
           "shifting operations", "binary bitwise operations", "the power operator", "unary arithmetic",
           "attribute references", "subscriptions", "calls with keyword arguments",
           "the match statement and pattern matching", "type parameter lists and generics",
           "context managers enter and exit", "string literals and escape sequences", "formatted string literals",
           "dictionary displays", "set displays", "the None object"]
#: measured: the fp32 export's vectors match torch's to cosine >= 0.99999 on the corpus and the queries
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def backends(tmp_path_factory, torch_reference):
    from llmos.drivers.embedder_select import make_embedder

    cache = tmp_path_factory.mktemp("embedder-cache")
    return make_embedder("onnx", cache_dir=cache), torch_reference[0]


@pytest.fixture(scope="module")
def corpus(torch_reference):
    return torch_reference[1]


def assert_same_passages(fast, torch_reference) -> None:
    """`fast`'s vectors of the reference corpus and queries: cosine >= MIN_COSINE with torch's for every
    text, and top-5 overlap >= 0.98 over the queries."""
    assert_agreement(fast.embed(torch_reference[1]), fast.embed(QUERIES), torch_reference)


def assert_agreement(fc, fq, torch_reference) -> None:
    """Vectors `fc` of the reference corpus and `fq` of the queries against torch's (the bars above)."""
    _torch, _corpus, tc, tq = torch_reference
    cosines = np.concatenate([(fc * tc).sum(1), (fq * tq).sum(1)])
    assert cosines.min() >= MIN_COSINE, cosines.min()

    def top5(c, q):
        return [set(np.argsort(-(c @ v))[:5].tolist()) for v in q]

    overlap = np.mean([len(a & b) / 5 for a, b in zip(top5(fc, fq), top5(tc, tq))])
    assert overlap >= 0.98, overlap


@pytest.mark.model
def test_the_same_passages_come_back(backends, torch_reference):
    fast, torch = backends
    assert fast.backend == "onnx" and torch.backend == "torch" and fast.dim == torch.dim == 384
    assert_same_passages(fast, torch_reference)


@pytest.mark.model
def test_chunks_and_token_counts_agree(backends):
    from pydoc_data.topics import topics

    fast, torch = backends
    text = topics["for"] + topics["with"]
    assert fast.chunk(text) == torch.chunk(text) and len(fast.chunk(text)) > 2
    texts = ["hi", "  padded with spaces  ", "x " * 700, text]
    assert fast.count_tokens(texts) == torch.count_tokens(texts)
    assert fast.count_tokens(texts)[2] == fast.max_seq_length == torch.max_seq_length == 256


@pytest.mark.model
def test_length_buckets_keep_the_input_order(backends, corpus):
    fast, _torch = backends
    texts = [corpus[0], "short", corpus[5][:40], "a b c", corpus[9], "x " * 400, "", corpus[3][:200]]
    together = fast.embed(texts, batch_size=3)  # three buckets of mixed lengths
    alone = np.stack([fast.embed([t])[0] for t in texts])
    assert together.shape == (len(texts), fast.dim) and together.dtype == np.float32
    assert np.allclose(together, alone, atol=1e-4)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert fast.embed([]).shape == (0, fast.dim)


@pytest.mark.model
def test_a_long_text_is_truncated_the_same_way(backends):
    from pydoc_data.topics import topics

    fast, torch = backends
    long = topics["typesseq"]  # thousands of tokens: both read the first 256 (special tokens included)
    ids = fast.tokenizer.encode(long, add_special_tokens=False).ids
    head = fast.tokenizer.decode(ids[:254])
    v_long, v_head, v_torch = fast.embed([long])[0], fast.embed([head])[0], torch.embed([long])[0]
    assert float(v_long @ v_torch) >= MIN_COSINE
    assert float(v_long @ v_head) >= 0.999


@pytest.mark.model
def test_the_export_is_cached_checked_and_redone_when_damaged(backends, tmp_path):
    from llmos.drivers.embedder_onnx import OnnxEmbedder

    fast, _torch = backends
    fast.embed(["exported on first use"])
    cached = fast.cached_model()
    assert cached.exists() and json.loads(cached.with_name("manifest.json").read_text())["bytes"] == cached.stat().st_size
    again = OnnxEmbedder(cache_dir=fast.cache_dir)
    again.embed(["reuses the export"])
    assert again.export_s is None  # served from the cache, no export
    served = subprocess.run([sys.executable, "-c", (  # a process served by the cache imports no torch
        "import sys; from llmos.drivers.embedder_onnx import OnnxEmbedder; "
        f"OnnxEmbedder(cache_dir={str(fast.cache_dir)!r}).embed(['no torch here']); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))")], capture_output=True, text=True, timeout=120)
    assert served.stdout.strip() == "[]", served.stderr
    probe = ["the export is redone"]
    expected = fast.embed(probe)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\0" * 4096  # damaged weights still parse: the sha256 catches it
    cached.write_bytes(bytes(data))
    redone = OnnxEmbedder(cache_dir=fast.cache_dir)
    assert np.allclose(redone.embed(probe), expected, atol=1e-5)
    assert redone.export_s is not None and not list(cached.parent.glob(".export.*"))  # no temporary left


def test_the_setting_picks_the_backend(tmp_path, monkeypatch):
    from llmos.drivers.embedder import SentenceEmbedder
    from llmos.drivers.embedder_select import make_embedder
    from llmos.drivers.embedder_onnx import OnnxEmbedder

    auto = make_embedder("auto", cache_dir=tmp_path)  # onnxruntime imports here: ONNX serves every call
    assert isinstance(getattr(auto, "fast", auto), OnnxEmbedder)  # (and bf16 bulk ingest on a bf16 CPU)
    assert isinstance(make_embedder("onnx", cache_dir=tmp_path), OnnxEmbedder)
    assert isinstance(make_embedder("torch"), SentenceEmbedder)
    (tmp_path / "llmos.toml").write_text('[kernel]\nembedder_backend = "torch"\n')
    assert Config.load(tmp_path).embedder_backend == "torch"
    monkeypatch.setenv("LLMOS_EMBEDDER_BACKEND", "onnx")
    assert Config.load(tmp_path).embedder_backend == "onnx"
    monkeypatch.setenv("LLMOS_EMBEDDER_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="embedder_backend must be one of 'auto', 'onnx', 'torch', 'bf16', got 'tensorrt'"):
        Config.load(tmp_path)
    with pytest.raises(ConfigError, match="embedder_backend"):
        make_embedder("fast")


def test_the_shape_is_read_from_the_config_without_loading_and_other_poolings_are_refused(tmp_path):
    """memfs opens a volume's index with `dim`: reading it loads no model (`llmos mem ls` took 5 s, now
    ~1.3 s). A model with another pooling is refused with the setting that runs it."""
    import shutil
    from pathlib import Path

    from llmos.drivers.embedder import default_model_path
    from llmos.drivers.embedder_onnx import OnnxEmbedder
    from llmos.kernel.errors import ModelLoadError

    fast = OnnxEmbedder(cache_dir=tmp_path / "cache")
    assert (fast.dim, fast.max_seq_length) == (384, 256)
    assert fast._session is None and fast._tokenizer is None and not (tmp_path / "cache").exists()
    cls_model = tmp_path / "cls-model"
    for name in ("modules.json", "sentence_bert_config.json", "config.json", "1_Pooling/config.json"):
        (cls_model / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(default_model_path()) / name, cls_model / name)
    pooling = cls_model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps(config | {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ModelLoadError, match="the onnx embedder runs Transformer \\+ mean Pooling.*"
                                             "pooling_mode_cls_token.*set embedder_backend = 'torch'"):
        _ = OnnxEmbedder(str(cls_model), cache_dir=tmp_path / "cache").dim
