"""The bf16 embedder against the torch one (real model, real torch in bf16): the same passages come back
on the pydoc query set, the traced model answers as the untraced one on shapes it was not traced on,
chunks and token counts are the torch backend's, and the backend is refused where bf16 is emulated."""

from __future__ import annotations

import numpy as np
import pytest

import llmos
from llmos.drivers.embedder_bf16 import native_bf16
from llmos.kernel.errors import ConfigError

from .test_embedder_onnx import assert_same_passages

needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no bf16 instructions")


@pytest.fixture(scope="module")
def backends(torch_reference):
    from llmos.drivers.embedder_select import make_embedder

    return make_embedder("bf16"), torch_reference[0]


@needs_bf16
@pytest.mark.model
def test_the_same_passages_come_back(backends, torch_reference):
    fast, torch = backends
    assert fast.backend == "bf16" and fast.dim == torch.dim == 384
    assert_same_passages(fast, torch_reference)


@needs_bf16
@pytest.mark.model
def test_the_trace_holds_no_shape_of_its_first_batch(backends):
    """Traced on a batch of 4 short texts, then asked batches of 1 to 7 texts of 3 to 256 tokens: the same
    vectors as the untraced bf16 model, in input order."""
    from pydoc_data.topics import topics

    fast, _torch = backends
    texts = ["a", "the with statement", topics["for"][:300], topics["with"], "x " * 400, "lambda", "try"]
    for size in (1, 3, 7):
        traced = fast.embed(texts, batch_size=size)
        eager = fast.embed(texts, batch_size=size, traced=False)
        assert np.abs(traced - eager).max() < 1e-3, size
        assert ((traced * eager).sum(1) > 0.99999).all()
    one_by_one = np.stack([fast.embed([t])[0] for t in texts])
    assert ((one_by_one * fast.embed(texts)).sum(1) > 0.9999).all()


@needs_bf16
@pytest.mark.model
def test_chunks_and_token_counts_agree(backends):
    from pydoc_data.topics import topics

    fast, torch = backends
    text = topics["for"] + topics["with"]
    assert fast.chunk(text) == torch.chunk(text) and len(fast.chunk(text)) > 2
    texts = ["hi", "x " * 700, text]
    assert fast.count_tokens(texts) == torch.count_tokens(texts)


def test_bf16_is_refused_where_the_cpu_would_emulate_it(tmp_path, monkeypatch):
    from llmos.drivers import embedder_bf16
    from llmos.drivers.embedder_select import make_embedder

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not native_bf16(cpuinfo) and not native_bf16(tmp_path / "absent")
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert native_bf16(cpuinfo)
    monkeypatch.setattr(embedder_bf16, "native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="bf16 instructions"):
        make_embedder("bf16")
    with pytest.raises(ConfigError, match="embedder_backend = 'bf16' needs a CPU with bf16 instructions.*'onnx'"):
        llmos.boot(home=tmp_path / "home", embedder_backend="bf16", load_entrypoints=False)  # at boot, not at first use
