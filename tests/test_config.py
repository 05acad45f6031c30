"""Configuration: file < environment < explicit overrides, with typed errors naming the culprit."""

from __future__ import annotations

import pytest

from llmos.kernel.config import Config
from llmos.kernel.errors import ConfigError


def test_defaults_file_env_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "llmos.toml").write_text('[kernel]\nmax_queue = 7\nmax_running = 4\n[server]\nport = 9\n')
    monkeypatch.setenv("LLMOS_MAX_RUNNING", "3")
    cfg = Config.load(tmp_path, n_ctx=2048)
    assert (cfg.max_queue, cfg.max_running, cfg.n_ctx) == (7, 3, 2048)
    assert cfg.sections == {"server": {"port": 9}} and cfg.threads >= 1


@pytest.mark.parametrize("text, needle", [
    ("[kernel\n", "not valid TOML"),
    ("[kernel]\nmax_quue = 3\n", "unknown [kernel] keys ['max_quue']"),
    ("[kernel]\nmax_queue = 0\n", "max_queue must be an integer >= 1"),
    ("[kernel]\nmax_running = 64\nmax_batched_tokens = 32\n", "max_batched_tokens (32) must be >= max_running"),
])
def test_bad_config_file(tmp_path, text, needle):
    (tmp_path / "llmos.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(tmp_path)
    assert needle in str(info.value)


def test_bad_environment_value(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_MAX_QUEUE", "lots")
    with pytest.raises(ConfigError, match="LLMOS_MAX_QUEUE must be an integer"):
        Config.load(tmp_path)


def test_config_models_extend_the_registry(tmp_path):
    from llmos.kernel.models.registry import ModelRegistry

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 16)
    (tmp_path / "llmos.toml").write_text(f'[models.mine]\npath = "{model}"\n')
    cfg = Config.load(tmp_path)
    reg = ModelRegistry(cfg.home, cfg.models)
    assert reg.resolve("mine").path == model and "mine" in reg.names()


def test_listing_models_has_no_side_effects(tmp_path):
    from llmos.kernel.models.registry import ModelRegistry

    specs = {s.name: s for s in ModelRegistry(tmp_path).list()}
    assert specs["gemma3-270m"].location == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert specs["gemma3-270m"].size_bytes > 100_000_000
    assert not (tmp_path / "models").exists()  # assembling waits until the model is used
