import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from retrieval.backbones import BACKBONES, WeightsUnavailableError, build_backbone
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder, EmbeddingNet, resolve_device
from retrieval.registry import UnknownNameError

from .conftest import draw_image, needs_cpu_bf16


def test_registry_holds_the_promised_backbones():
    assert {"efficientnet_lite0", "resnet50", "resnet101", "vgg16", "mobilenet_v3_large"} <= set(BACKBONES.names())


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown backbone 'alexnet'; known: .*efficientnet_lite0"):
        build_backbone("alexnet")


@pytest.mark.parametrize("name,channels", [("mobilenet_v3_large", 960), ("resnet50", 2048)])
def test_torchvision_trunks_give_feature_maps(name, channels):
    bb = build_backbone(name, "random").module.eval()
    with torch.inference_mode():
        out = bb(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, channels, 2, 3)


def test_torchvision_weights_that_cannot_be_downloaded_give_an_actionable_error(monkeypatch):
    def offline(self, *a, **kw):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("mobilenet_v3_large", "imagenet")
    msg = str(err.value)
    assert "TORCH_HOME" in msg and "--weights FILE" in msg and ".pth" in msg


def test_torchvision_weights_load_from_a_file(tmp_path):
    ref = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("mobilenet_v3_large", str(path))
    torch.testing.assert_close(bb.module[0][0].weight, ref.features[0][0].weight)
    with pytest.raises(ValueError, match="does not match"):
        build_backbone("resnet50", str(path))
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet50", str(tmp_path / "missing.pth"))


def test_embedding_is_unit_norm_float32_and_independent_of_batch_composition():
    emb = Embedder(ModelConfig(image_size=64), RuntimeOptions(device="cpu"))
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    out = emb.embed_batch(pix)
    assert out.shape == (3, 1280) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.embed_batch(pix[1:2])[0], out[1], atol=1e-5)


def test_multiscale_sums_the_scales():
    cfg = ModelConfig(image_size=64, scales=(1.0, 0.5))
    net = EmbeddingNet(cfg).eval()
    single = EmbeddingNet(ModelConfig(image_size=64)).eval()
    single.load_state_dict(net.state_dict())
    x = torch.randint(0, 256, (2, 3, 64, 64)).float()
    with torch.inference_mode():
        both = net(x)
        full = single(x)
        half = single(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True))
    expected = torch.nn.functional.normalize(full + half, dim=1)
    torch.testing.assert_close(both, expected, atol=1e-4, rtol=1e-4)


@needs_cpu_bf16
def test_bf16_vectors_stay_close_to_fp32():
    """bf16 autocast as indexing runs it (channels_last, BatchNorm fused) against fp32, on noise and on drawings.

    Measured (8 noise and 8 drawn batches, 1 and 2 threads, oneDNN on native AVX512-BF16, on AVX512_CORE's
    emulation and on the AVX2 reference path): cosine 0.992-0.999, the three paths within 0.0005 of each other:
    the error is bf16 rounding, not the kernels' summation order, so AMX's kernels land in the same range.
    """
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    drawn = np.stack([np.asarray(draw_image(seed, (64, 64))) for seed in (1, 2, 3)])
    cfg = ModelConfig(image_size=64)
    fp32 = Embedder(cfg, RuntimeOptions(device="cpu"))
    bf16 = Embedder(cfg, RuntimeOptions(device="cpu", precision="bf16"))
    for pix in (noise, drawn):
        a, b = fp32.embed_batch(pix), bf16.embed_batch(pix)
        assert b.dtype == np.float32 and np.abs(a - b).max() > 1e-4  # bf16 really ran
        assert (a * b).sum(axis=1).min() > 0.98


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_device_auto_falls_back_to_cpu_and_cuda_without_gpu_is_refused():
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(RuntimeError, match="--device cpu"):
        resolve_device("cuda")
