"""Test setup: offline, an isolated LLMOS_HOME, no installed plugins, shared real-model kernels.

Markers: `model` (loads a real model), `cli` (runs the installed `llmos` command). A quick run:
`pytest -m "not model and not cli"`.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="llmos-test-home-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["LLMOS_HOME"] = str(_HOME)
os.environ["LLMOS_PLUGINS"] = ""
for _var in [v for v in os.environ if v.startswith("LLMOS_") and v not in ("LLMOS_HOME", "LLMOS_PLUGINS")]:
    del os.environ[_var]
os.environ["LLMOS_KEEP_ALIVE"] = "-1"  # shared kernels keep their models loaded; keep_alive tests set their own


#: a test (setup, call and teardown) running past this is stuck: every thread's stack is printed and the
#: run ends. faulthandler's watchdog is a C thread, so it fires even when a thread holds the GIL or the
#: main thread waits where pytest-timeout's signal cannot reach it (seen once: a silent CI hang).
STUCK_S = 900


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(STUCK_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def llmos_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def kernel():
    """One real kernel (SmolLM2 on llama.cpp) shared by the model tests."""
    import llmos

    k = llmos.boot(load_entrypoints=False, max_running=8, n_ctx=4096)
    k.load("smollm2")
    yield k
    k.shutdown()


@pytest.fixture(scope="session")
def scorer(kernel):
    """Checks greedy llama.cpp outputs against plain llama_cpp.Llama (tests/greedy.py)."""
    from .greedy import GreedyScorer

    s = GreedyScorer(str(kernel.load("smollm2").spec.path))
    yield s
    s.close()


@pytest.fixture(scope="session")
def torch_reference():
    """The torch embedder and its vectors for the backends' agreement tests (computed once): ~450 real
    chunks of a third of CPython's pydoc topics, and the fixed query set."""
    from pydoc_data.topics import topics

    from llmos.drivers.embedder_select import make_embedder

    from .test_embedder_onnx import QUERIES

    torch = make_embedder("torch")
    corpus = [c.text for name in sorted(topics)[::3] for c in torch.chunk(topics[name])]
    return torch, corpus, torch.embed(corpus), torch.embed(QUERIES)


@pytest.fixture(scope="module")
def fake_kernel(tmp_path_factory):
    """A kernel whose default model runs on the deterministic fake driver (tests/fakes.py): no model."""
    import llmos

    from .fakes import FakeDriver
    from .test_kernel_fake import plugin_manager

    home = tmp_path_factory.mktemp("fake")
    model = home / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    k = llmos.boot(home=home / "home", plugins=plugin_manager(FakeDriver), default_model=str(model))
    yield k
    k.shutdown()


def pytest_sessionfinish(session, exitstatus):
    """The isolated home holds a dequantized model copy (hundreds of MB): never leave it behind."""
    shutil.rmtree(_HOME, ignore_errors=True)
