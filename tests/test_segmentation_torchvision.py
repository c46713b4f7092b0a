"""torchvision segmenters, offline: fakes and randomly initialised networks, never a download."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from retrieval.backbones import WeightsUnavailableError
from segmentation import build_segmenter
from segmentation import torchvision_models as tvm
from segmentation.torchvision_models import (
    MODELS,
    TorchvisionSegmenter,
    build_network,
    build_torchvision_segmenter,
    resized_shape,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty torch hub cache, and any download attempt fails as it would without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(enum: object) -> dict:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(tvm, "_download_state_dict", no_network)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RedIsObject(nn.Module):
    """A fake semantic network: class 1 wherever the (normalised) red channel exceeds the green one."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(tuple(x.shape))
        score = x[:, 0] - x[:, 1]
        return {"out": torch.stack([-score, score, torch.full_like(score, -9)], dim=1)}


class BoxInstances(nn.Module):
    """A fake instance network: two boxes, one confident, one not."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        _, h, w = images[0].shape
        masks = torch.zeros(2, 1, h, w)
        masks[0, 0, : h // 2, : w // 2] = 0.9
        masks[1, 0, h // 2 :, w // 2 :] = 0.9
        return [{"scores": torch.tensor([0.8, 0.3]), "masks": masks}]


def red_square(h: int = 60, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 1] = 150
    truth = np.zeros((h, w), bool)
    truth[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = True
    pixels[truth] = (220, 30, 30)
    return pixels, truth


def test_semantic_foreground_is_not_background_class_resized_back() -> None:
    net = RedIsObject()
    seg = TorchvisionSegmenter(net, "semantic", "fake", resize=30)
    pixels, truth = red_square()
    mask = seg(pixels)
    assert net.seen == [(1, 3, 30, 45)]  # shorter side resized to 30, aspect kept
    assert mask.shape == truth.shape and mask.dtype == bool
    assert (mask == truth).mean() > 0.97


def test_instance_foreground_is_union_of_confident_masks() -> None:
    seg = TorchvisionSegmenter(BoxInstances(), "instance", "fake")
    mask = seg(np.zeros((40, 50, 3), np.uint8))
    assert mask[:20, :25].all() and mask.sum() == 20 * 25


def test_instance_without_confident_detection_gives_empty_mask() -> None:
    seg = TorchvisionSegmenter(BoxInstances(), "instance", "fake", score_threshold=0.95)
    assert not seg(np.zeros((40, 50, 3), np.uint8)).any()


def test_tiny_images_give_whole_image_mask() -> None:
    seg = TorchvisionSegmenter(RedIsObject(), "semantic", "fake")
    for shape in [(1, 1, 3), (1, 40, 3), (5, 5, 3)]:
        mask = seg(np.zeros(shape, np.uint8))
        assert mask.shape == shape[:2] and mask.all()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="semantic"):
        TorchvisionSegmenter(RedIsObject(), "panoptic", "fake")


def test_resized_shape_caps_the_longer_side() -> None:
    assert resized_shape(480, 640, 520, 1024) == (520, 693)
    assert resized_shape(10, 1000, 520, 1024) == (10, 1024)
    assert resized_shape(1, 1, 520, 1024) == (520, 520)


def test_random_deeplab_mobilenet_gives_bool_mask_of_input_shape() -> None:
    seg = build_torchvision_segmenter("deeplab_mobilenet", "random", resize=64)
    pixels, _ = red_square(50, 70)
    mask = seg(pixels)
    assert mask.shape == (50, 70) and mask.dtype == bool
    assert seg.spec == "deeplab_mobilenet:random"


def test_random_maskrcnn_gives_bool_mask_of_input_shape() -> None:
    net = build_network(
        "maskrcnn",
        "random",
        min_size=64,
        max_size=96,
        rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_test=5,
        box_detections_per_img=3,
        box_score_thresh=0.0,
    )
    seg = build_torchvision_segmenter("maskrcnn", "random", model=net, score_threshold=0.0)
    pixels, _ = red_square(50, 70)
    mask = seg(pixels)
    assert mask.shape == (50, 70) and mask.dtype == bool


def test_missing_weights_error_names_the_ways_to_supply_them() -> None:
    with pytest.raises(WeightsUnavailableError) as err:
        build_segmenter("deeplab")
    message = str(err.value)
    assert "deeplabv3_resnet50_coco-cd0a2569.pth" in message
    assert "$TORCH_HOME/hub/checkpoints" in message and "deeplab:/path/to/" in message
    assert "no network in tests" in message


def test_no_download_when_not_allowed() -> None:
    with pytest.raises(WeightsUnavailableError, match="not cached"):
        build_network("fcn", allow_download=False)


def test_weights_file_in_spec_and_in_cache_are_loaded(tmp_path: Path) -> None:
    net = build_network("deeplab_mobilenet", "random")
    with torch.no_grad():
        net.classifier[-1].bias.fill_(0.25)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)

    seg = build_segmenter(f"deeplab_mobilenet:{path}")
    assert seg.spec == f"deeplab_mobilenet:{path}"
    assert torch.all(seg.model.classifier[-1].bias == 0.25)
    assert seg.model.aux_classifier is None

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / tvm.weights_file_name("deeplab_mobilenet")).write_bytes(path.read_bytes())
    cached = build_segmenter("deeplab_mobilenet")
    assert cached.spec == "deeplab_mobilenet"
    assert torch.all(cached.model.classifier[-1].bias == 0.25)


def test_mismatched_weights_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not match"):
        build_network("deeplab_mobilenet", str(path))
    with pytest.raises(FileNotFoundError):
        build_network("deeplab_mobilenet", str(tmp_path / "absent.pth"))


def test_every_torchvision_model_is_registered() -> None:
    from segmentation.base import SEGMENTERS

    build_segmenter("grabcut")  # imports the built-in modules
    assert set(MODELS) <= set(SEGMENTERS.names())
