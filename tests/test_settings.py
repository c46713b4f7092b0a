"""Settings from what a person asks for: model options over a base, a trained checkpoint's architecture,
masking options; mistakes are library errors with a message to act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from indexer.errors import LookalikeError
from indexer.masking import MaskSettings
from indexer.settings import (
    SettingsError,
    build_embedder,
    build_masker,
    mask_settings_with,
    model_config_with,
    settings_with,
)
from indexer.vector_index import IndexConfig
from retrieval.checkpoint import read_checkpoint, save_checkpoint
from retrieval.config import ModelConfig
from retrieval.model import EmbeddingNet

from .conftest import FAST_RUNTIME


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, ModelConfig]:
    """A freshly initialised network saved as `lookalike train` saves one (MAC pooling, 64 px, whitening to 16)."""
    config = ModelConfig(weights="random", pooling="mac", image_size=64, whitening_layer=16)
    torch.manual_seed(0)
    net = EmbeddingNet(config)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(path, config.to_dict(), net.state_dict(), {"epoch": 1})
    return path, config


def test_no_options_give_the_base_or_the_default_model():
    assert model_config_with(None) == ModelConfig()
    base = ModelConfig(pooling="spoc", image_size=96)
    assert model_config_with(base, backbone=None, weights=None) == base
    assert model_config_with(base, scales=(1, 0.5)) == ModelConfig(pooling="spoc", image_size=96, scales=(1.0, 0.5))


def test_a_trained_checkpoint_brings_its_architecture_and_whitening_layer(trained):
    path, _ = trained
    got = model_config_with(None, weights=str(path))
    assert (got.backbone, got.pooling, got.image_size, got.whitening_layer) == ("efficientnet_lite0", "mac", 64, 16)
    assert got.weights == str(path.resolve())
    # the resolved configuration rebuilds the saved network, whitening layer included
    net = EmbeddingNet(got)
    saved = read_checkpoint(path)
    assert saved is not None
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved["state_dict"].items())


def test_options_given_with_a_checkpoint_override_its_architecture_but_not_its_whitening(trained):
    path, _ = trained
    got = model_config_with(ModelConfig(pooling="spoc"), weights=str(path), pooling="gem", image_size=96)
    assert (got.pooling, got.image_size, got.whitening_layer) == ("gem", 96, 16)


def test_a_relative_weights_file_is_made_absolute(trained, monkeypatch):
    path, _ = trained
    monkeypatch.chdir(path.parent)
    assert model_config_with(None, weights="net.pt").weights == str(path.resolve())


def test_other_weights_drop_the_whitening_layer_of_the_base(tmp_path):
    base = ModelConfig(weights="/x/net.pt", whitening_layer=32)
    assert model_config_with(base, weights="imagenet").whitening_layer == 0
    plain = tmp_path / "state.pth"  # a plain state dict, not one of our checkpoints: nothing comes with it
    torch.save({"w": torch.zeros(1)}, plain)
    got = model_config_with(base, weights=str(plain))
    assert (got.weights, got.whitening_layer, got.pooling) == (str(plain), 0, "gem")
    assert model_config_with(base, pooling="mac").whitening_layer == 32


def test_a_segmentation_checkpoint_is_refused_with_advice(tmp_path):
    path = tmp_path / "seg.pt"
    save_checkpoint(path, {"kind": "unet", "image_size": 64}, {})
    with pytest.raises(SettingsError, match="segmentation network, not an embedding network"):
        model_config_with(None, weights=str(path))


def test_invalid_values_raise_a_library_error_that_is_still_a_value_error():
    with pytest.raises(SettingsError, match="image_size must be at least 32") as err:
        model_config_with(None, image_size=16)
    assert isinstance(err.value, LookalikeError) and isinstance(err.value, ValueError)
    assert settings_with(IndexConfig(), kind="flat", nprobe=None).kind == "flat"


def test_mask_settings_take_none_and_resolve_unet_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = MaskSettings(segmenter="grabcut", apply="pool")
    assert mask_settings_with(base) == base
    assert mask_settings_with(base, "none") == MaskSettings(segmenter=None, apply="pool")
    assert mask_settings_with(base, apply="both").segmenter == "grabcut"
    assert mask_settings_with(MaskSettings(), "unet:seg.pt").segmenter == "unet:" + str(tmp_path / "seg.pt")


def test_parts_that_cannot_be_built_raise_settings_errors():
    assert build_masker(MaskSettings()) is None
    with pytest.raises(SettingsError, match="cannot build the segmenter 'no-such'.*unknown segmenter"):
        build_masker(MaskSettings(segmenter="no-such"))
    with pytest.raises(SettingsError, match="unknown backbone 'alexnet'; known:"):
        build_embedder(ModelConfig(backbone="alexnet"), FAST_RUNTIME)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"these are my notes", "is not a weights file lookalike can read (not a PyTorch file)"),
        ("module", "holds Python objects besides tensors and plain data"),
        ("truncated", "is a damaged or unsupported PyTorch file"),
    ],
)
def test_a_file_that_is_not_weights_is_a_settings_error_that_never_advises_unsafe_loading(tmp_path, content, message):
    path = tmp_path / "weights.bin"
    if content == "module":
        torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: not loadable safely
    elif content == "truncated":
        torch.save({"w": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(SettingsError, match="weights") as err:
        model_config_with(None, weights=str(path))
    assert message in str(err.value) and "weights_only" not in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(SettingsError, match="weights file not found"):
        model_config_with(None, weights=str(tmp_path / "missing.pt"))


def test_an_unpickling_error_while_building_the_network_is_translated_too(tmp_path):
    from indexer.settings import build_embedder

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(SettingsError, match="not a weights file lookalike can read") as err:
        build_embedder(ModelConfig(weights=str(notes), image_size=64), FAST_RUNTIME)
    assert "weights_only" not in str(err.value)


def test_devices_are_checked_by_name_and_by_what_the_machine_has(monkeypatch):
    import retrieval.config
    from indexer.settings import check_device_available
    from retrieval.config import RuntimeOptions, check_device

    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert check_device(good) == good
    with pytest.raises(
        ValueError, match=r"unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps \(available here: cpu"
    ):
        RuntimeOptions(device="gpu")
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        RuntimeOptions(precision="fp8")
    monkeypatch.setattr(retrieval.config, "available_devices", lambda: ["cpu", "cuda", "cuda:0"])
    check_device_available("cuda:0")
    check_device_available("auto")
    with pytest.raises(SettingsError, match="device 'cuda:1' is not available here; available: cpu, cuda, cuda:0"):
        check_device_available("cuda:1")
