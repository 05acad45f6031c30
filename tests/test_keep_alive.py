"""Model residency without a model: keep_alive (config, per model, per request), the reaper, and
max_loaded_models, on the deterministic fake driver; the duration parser and its errors."""

from __future__ import annotations

import math
import time

import pytest

import llmos
from llmos.kernel.config import Config, parse_duration
from llmos.kernel.errors import ConfigError, InvalidRequestError

from .fakes import FakeDriver
from .test_kernel_fake import plugin_manager
from .util import wait_for


class SlowFake(FakeDriver):
    """The fake driver, 20 ms a step: a request lasts long enough to be seen running."""

    def execute(self, batch):
        time.sleep(0.02)
        return super().execute(batch)


def boot(tmp_path, *models: str, driver=FakeDriver, **config):
    paths = []
    for name in models or ("m",):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF" + b"\0" * 64)
        paths.append(str(path))
    return llmos.boot(home=tmp_path / "home", plugins=plugin_manager(driver), default_model=paths[0],
                      **config), paths


def loaded(kernel) -> list[str]:
    return [e["model"] for e in kernel.engines()]


@pytest.mark.parametrize("value, seconds", [
    (0, 0.0), (5, 5.0), (2.5, 2.5), ("10", 10.0), (" 7 ", 7.0), ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0),
    ("1h", 3600.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("0s", 0.0), (-1, math.inf), ("-5m", math.inf),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m", "5m3", "1h 2m", "nan", "five", True, None, [5]])
def test_bad_durations_say_what_is_accepted(value):
    with pytest.raises(ValueError, match="expected seconds or a duration like"):
        parse_duration(value)


def test_bad_keep_alive_config_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMOS_KEEP_ALIVE")  # conftest's; the file's value must count
    (tmp_path / "llmos.toml").write_text('[kernel]\nkeep_alive = "10 minutes"\n')
    with pytest.raises(ConfigError, match=r"^keep_alive: expected seconds or a duration like .*'10 minutes'"):
        Config.load(tmp_path)
    (tmp_path / "llmos.toml").write_text('[models.smollm2]\nkeep_alive = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[models\.smollm2\] keep_alive: .*'soon'"):
        Config.load(tmp_path)
    (tmp_path / "llmos.toml").write_text('[kernel]\nkeep_alive_s = 5\n')  # unknown keys stay errors
    with pytest.raises(ConfigError, match="unknown .*keep_alive_s.*did you mean 'keep_alive'"):
        Config.load(tmp_path)
    (tmp_path / "llmos.toml").write_text('[kernel]\nmax_loaded_models = -1\n')
    with pytest.raises(ConfigError, match="max_loaded_models must be an integer >= 0"):
        Config.load(tmp_path)
    (tmp_path / "llmos.toml").write_text('[kernel]\nkeep_alive = "1h"\nmax_loaded_models = 2\n'
                                         '[models.smollm2]\nkeep_alive = 0\n')
    config = Config.load(tmp_path)
    assert (config.keep_alive_for("other"), config.keep_alive_for("smollm2"), config.max_loaded_models) == \
        (3600.0, 0.0, 2)
    monkeypatch.setenv("LLMOS_KEEP_ALIVE", "later")
    with pytest.raises(ConfigError, match="keep_alive: .*'later'"):
        Config.load(tmp_path)


def test_an_idle_model_is_unloaded_after_keep_alive_and_reloads_on_use(tmp_path):
    kernel, (path,) = boot(tmp_path, keep_alive="300ms")
    try:
        kernel.generate("hi", max_tokens=4)
        (row,) = kernel.engines()
        assert row["keep_alive_s"] == 0.3 and row["memory_bytes"] == 1000 and row["idle_s"] >= 0
        wait_for(lambda: not loaded(kernel), timeout=5, msg=lambda: kernel.engines())
        assert kernel.generate("hi again", max_tokens=4).text  # loads again on use
        assert loaded(kernel) == [path]
    finally:
        kernel.shutdown()


def test_per_request_keep_alive_and_a_busy_model_is_never_unloaded(tmp_path):
    kernel, (path,) = boot(tmp_path, driver=SlowFake, keep_alive=-1)
    try:
        assert kernel.engines() == [] and kernel.generate("hi", max_tokens=2).text
        time.sleep(0.3)
        assert kernel.engines()[0]["keep_alive_s"] is None  # forever
        handle = kernel.submit("long", max_tokens=40, ignore_eos=True, keep_alive=0)  # 0: unload right after
        time.sleep(0.4)  # ~20 steps in: running, so loaded
        assert not handle.done and loaded(kernel) == [path]
        assert len(handle.result(10).token_ids) == 40
        wait_for(lambda: not loaded(kernel), timeout=2, msg=lambda: kernel.engines())
        kernel.generate("hi", max_tokens=2, keep_alive="1h")
        assert kernel.engines()[0]["keep_alive_s"] == 3600.0
        with pytest.raises(InvalidRequestError, match="keep_alive: expected seconds") as exc:
            kernel.submit("hi", keep_alive="a while")
        assert exc.value.param == "keep_alive"
    finally:
        kernel.shutdown()


def test_reap_unloads_only_models_idle_past_their_keep_alive(tmp_path):
    kernel, (a, b) = boot(tmp_path, "a", "b", keep_alive="100s")
    try:
        kernel.generate("hi", model=a, max_tokens=2)
        kernel.generate("hi", model=b, max_tokens=2, keep_alive="200s")
        manager = kernel._models
        now = time.monotonic()
        assert 90 < manager.reap(now) <= 100 and sorted(loaded(kernel)) == sorted([a, b])
        assert 80 < manager.reap(now + 110) <= 90 and loaded(kernel) == [b]  # a expired, b has under 90 s left
        pinned = manager.get(b, pin=True)  # a request being prepared on b
        assert manager.reap(now + 1000) == math.inf and loaded(kernel) == [b]
        manager.unpin(pinned)
        assert manager.reap(time.monotonic() + 201) == math.inf and loaded(kernel) == []
    finally:
        kernel.shutdown()


def test_max_loaded_models_unloads_the_least_recently_used_idle_model(tmp_path):
    kernel, (a, b, c) = boot(tmp_path, "a", "b", "c", keep_alive=-1, max_loaded_models=2)
    try:
        for model in (a, b):
            kernel.generate("hi", model=model, max_tokens=2)
        kernel.generate("hi", model=a, max_tokens=2)  # b is now the least recently used
        kernel.generate("hi", model=c, max_tokens=2)
        assert sorted(loaded(kernel)) == sorted([a, c])
    finally:
        kernel.shutdown()
