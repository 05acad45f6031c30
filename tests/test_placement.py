"""Per-model placement ([models.NAME] device, n_gpu_layers, main_gpu): checked at boot, honoured or
refused with a clear error at load by each driver. On this CPU machine the GPU cases are refusals;
`make gpu-check` (scripts/gpu_check.py) runs the offloading side on a CUDA machine."""

from __future__ import annotations

import pytest

import llmos
from llmos.kernel.config import Config
from llmos.kernel.errors import ConfigError, ModelLoadError
from llmos.kernel.models.placement import Placement, placement
from llmos.kernel.models.registry import ModelRegistry


@pytest.mark.parametrize("table, needle", [
    ({"device": "tpu"}, "device must be"),
    ({"device": "cuda:x"}, "device must be"),
    ({"n_gpu_layers": -2}, "n_gpu_layers must be an integer"),
    ({"n_gpu_layers": "all"}, "n_gpu_layers must be an integer"),
    ({"main_gpu": -1}, "main_gpu must be a GPU index"),
    ({"device": "cpu", "n_gpu_layers": 10}, "offloads nothing"),
    ({"n_gpu_layers": 2**32}, "n_gpu_layers must be an integer"),  # llama.cpp's int32 would read it as 0 layers
    ({"device": "cuda:01"}, "device must be"),
    ({"device": "cuda:1", "main_gpu": 3}, "name two GPUs"),
])
def test_a_bad_placement_is_a_config_error_naming_the_table(tmp_path, table, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        placement("mine", table)
    assert "[models.mine]" in str(info.value)


def test_placement_maps_onto_torch_devices():
    assert Placement().torch_device("cpu") == "cpu" and Placement().torch_device("cuda") == "cuda"
    assert Placement(main_gpu=1).torch_device("cuda") == "cuda:1"
    assert Placement("cuda:2").torch_device("cpu") == "cuda:2"  # asked for: the driver refuses it if absent
    assert Placement("cpu").torch_device("cuda") == "cpu"


def test_a_models_table_reaches_its_spec_and_a_typo_stops_the_boot(tmp_path):
    (tmp_path / "llmos.toml").write_text('[models.smollm2]\ndevice = "cpu"\nmain_gpu = 1\n')
    cfg = Config.load(tmp_path)
    spec = ModelRegistry(cfg.home, cfg.models).resolve("smollm2")
    assert spec.options["placement"] == Placement("cpu", 0, 1)
    (tmp_path / "llmos.toml").write_text('[models.smollm2]\nn_gpu_layer = 3\n')
    with pytest.raises(ConfigError, match="n_gpu_layers"):
        Config.load(tmp_path)


def test_a_bad_value_in_any_models_table_stops_the_boot_and_a_missing_file_breaks_only_its_own_name(tmp_path):
    from llmos.kernel.errors import ModelFormatError

    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF" + b"\0" * 64)
    (tmp_path / "llmos.toml").write_text(f'[models.good]\npath = "{good}"\n[models.gone]\npath = "/no/such.gguf"\n'
                                         f'[models.typo]\npath = "{good}"\nn_gpu_layers = -7\n')
    cfg = Config.load(tmp_path)
    with pytest.raises(ConfigError, match=r"\[models.typo\].*n_gpu_layers"):
        ModelRegistry(cfg.home, cfg.models)  # at boot, not at the first request naming "typo"
    del cfg.models["typo"]
    registry = ModelRegistry(cfg.home, cfg.models)
    assert registry.resolve("good").path == good  # its broken sibling does not take it down
    with pytest.raises(ModelFormatError, match="cannot read model file /no/such.gguf"):
        registry.resolve("gone")
    assert "good" in [s.name for s in registry.list()] and "gone" not in [s.name for s in registry.list()]


def _boot(tmp_path, llmos_home, table: str):
    (llmos_home / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache").symlink_to(llmos_home / "cache")  # the dequantized weights the suite already made
    (tmp_path / "llmos.toml").write_text(f"[models.smollm2]\n{table}\n")
    return llmos.boot(Config.load(tmp_path), load_entrypoints=False)


@pytest.mark.model
def test_a_gpu_asked_of_this_cpu_machine_is_refused_at_load_saying_what_to_change(tmp_path, llmos_home):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/gpu_check.py covers it")
    with _boot(tmp_path, llmos_home, 'device = "cuda"') as k:
        with pytest.raises(ModelLoadError, match=r'sees 0 CUDA device.*device = "cpu"'):
            k.load("smollm2", driver="torch")
        with pytest.raises(ModelLoadError, match=r"built for the CPU only.*make clean install"):
            k.load("smollm2", driver="llamacpp")
        assert k.engines() == []


@pytest.mark.model
def test_device_cpu_loads_on_the_cpu_with_both_drivers(tmp_path, llmos_home):
    with _boot(tmp_path, llmos_home, 'device = "cpu"') as k:
        for driver in ("llamacpp", "torch"):
            assert k.chat([{"role": "user", "content": "Hi"}], driver=driver, max_tokens=2).text is not None
        assert sorted(e["device"] for e in k.engines()) == ["cpu", "cpu"]
