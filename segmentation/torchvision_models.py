"""torchvision's pretrained segmentation networks as class-agnostic foreground segmenters.

Registered names (spec ``NAME`` or ``NAME:WEIGHTS``):

=====================  ===========================================  ===============================================
name                   network                                       foreground
=====================  ===========================================  ===============================================
``deeplab``            DeepLabV3, ResNet-50 (COCO, VOC's 21 labels)   pixels whose arg-max class is not background
``deeplab_mobilenet``  DeepLabV3, MobileNetV3-Large (same labels)     same
``fcn``                FCN, ResNet-50 (same labels)                  same
``maskrcnn``           Mask R-CNN, ResNet-50 FPN (COCO, 91 labels)    union of instance masks scored >= 0.5
=====================  ===========================================  ===============================================

The VOC label set has 20 object classes (person, animals, vehicles, furniture, bottle, potted plant, tv...);
objects outside it are background to these networks, which is the price of reusing their weights.

Weights come the same way as the torchvision backbones' (:mod:`retrieval.backbones`): ``WEIGHTS`` in the spec is a
state-dict file (``deeplab:/path/deeplabv3_resnet50_coco-cd0a2569.pth``) or ``random`` (untrained, for tests);
without it the file torchvision names is taken from ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``),
else downloaded there once. When none of this works a :class:`retrieval.backbones.WeightsUnavailableError` says
which file to put where.

Semantic networks see the image resized so its shorter side is ``resize`` (520, torchvision's preset; the longer
side at most ``max_side``), normalised with the ImageNet mean/std; the mask is resized back to the input. Mask
R-CNN resizes internally (``min_size`` 800 by default, a constructor keyword).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsUnavailableError,
    load_state_dict_file,
)
from retrieval.model import resolve_device

from .base import SEGMENTERS
from .classical import MIN_SIDE, as_rgb_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchvisionModelInfo:
    """How to build one network: ``builder`` in ``torchvision.models.segmentation`` (semantic) or
    ``torchvision.models.detection`` (instance), the pretrained weights' enum name, and the number of classes."""

    builder: str
    weights: str
    kind: str  # "semantic" | "instance"
    num_classes: int


MODELS: dict[str, TorchvisionModelInfo] = {
    "deeplab": TorchvisionModelInfo(
        "deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1", "semantic", 21
    ),
    "deeplab_mobilenet": TorchvisionModelInfo(
        "deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", "semantic", 21
    ),
    "fcn": TorchvisionModelInfo("fcn_resnet50", "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1", "semantic", 21),
    "maskrcnn": TorchvisionModelInfo("maskrcnn_resnet50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "instance", 91),
}


def _weights_enum(info: TorchvisionModelInfo) -> Any:
    import torchvision

    return torchvision.models.get_weight(info.weights)


def weights_file_name(name: str) -> str:
    """The file name torchvision gives the pretrained weights of a registered network."""
    return _weights_enum(MODELS[name]).url.rsplit("/", 1)[-1]


def _download_state_dict(enum: Any) -> dict[str, torch.Tensor]:
    """torchvision's download into ``$TORCH_HOME/hub/checkpoints`` (a seam for tests, which must not download)."""
    return enum.get_state_dict(progress=False, check_hash=False)


def pretrained_state_dict(name: str, allow_download: bool = True) -> dict[str, torch.Tensor]:
    """The pretrained weights of ``name``: the cached file in ``$TORCH_HOME/hub/checkpoints`` if present, else a
    download (when ``allow_download``). Raises :class:`WeightsUnavailableError` naming the ways to supply them."""
    info = MODELS[name]
    enum = _weights_enum(info)
    file_name = enum.url.rsplit("/", 1)[-1]
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / file_name
    if cached.is_file():
        log.info("loading %s weights from %s", name, cached)
        return load_state_dict_file(cached)
    how = (
        f"Either run once with internet access (they are cached in $TORCH_HOME/hub/checkpoints), "
        f"copy {file_name} into {cache_dir}/, or give the file in the segmenter spec: {name}:/path/to/{file_name}."
    )
    if not allow_download:
        raise WeightsUnavailableError(f"the pretrained weights of {name} ({info.builder}) are not cached. {how}")
    try:
        return _download_state_dict(enum)
    except Exception as exc:  # network errors come in many types (URLError, socket errors, HTTP errors)
        raise WeightsUnavailableError(
            f"could not get the pretrained weights of {name} ({info.builder}; {exc.__class__.__name__}: {exc}). {how}"
        ) from exc


def build_network(name: str, weights: str | None = None, allow_download: bool = True, **kwargs: Any) -> nn.Module:
    """The network ``name`` in eval mode, on the CPU. ``weights``: ``None`` (pretrained: cache or download),
    ``"random"`` (untrained), or a state-dict file. ``kwargs`` go to the torchvision builder (e.g. Mask R-CNN's
    ``min_size``). Auxiliary heads are loaded if present, then dropped (they only serve training)."""
    import torchvision

    if name not in MODELS:
        raise KeyError(f"unknown torchvision segmenter {name!r}; known: {', '.join(sorted(MODELS))}")
    info = MODELS[name]
    state = None
    if weights is None:
        state = pretrained_state_dict(name, allow_download)
    elif weights != "random":
        state = load_state_dict_file(weights)
    if info.kind == "semantic":
        builder = getattr(torchvision.models.segmentation, info.builder)
        model = builder(weights=None, weights_backbone=None, num_classes=info.num_classes, aux_loss=True, **kwargs)
    else:
        builder = getattr(torchvision.models.detection, info.builder)
        model = builder(weights=None, weights_backbone=None, num_classes=info.num_classes, **kwargs)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("aux_classifier.")]
        if missing or unexpected:
            raise ValueError(
                f"{weights or weights_file_name(name)} does not match {info.builder}: "
                f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
            )
    if info.kind == "semantic":
        model.aux_classifier = None
    return model.eval()


def resized_shape(height: int, width: int, shorter: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``shorter`` and the longer at most ``max_side`` (aspect kept, sides >= 1)."""
    scale = min(shorter / min(height, width), max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class TorchvisionSegmenter:
    """A torchvision network as a :class:`segmentation.base.Segmenter`: ``(H, W, 3) uint8 -> (H, W) bool``.

    ``model`` is any module with torchvision's interface: for ``kind="semantic"`` it maps normalised
    ``(1, 3, h, w)`` to ``{"out": (1, C, h, w)}`` logits, class 0 = background; for ``kind="instance"`` it maps a
    list of ``(3, H, W)`` tensors in [0, 1] to ``[{"scores": (N,), "masks": (N, 1, H, W)}]``.
    Images whose shorter side is below :data:`segmentation.classical.MIN_SIDE` get an all-True mask.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        spec: str,
        device: str = "cpu",
        resize: int = 520,
        max_side: int = 1024,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
    ) -> None:
        if kind not in ("semantic", "instance"):
            raise ValueError(f"kind must be 'semantic' or 'instance', not {kind!r}")
        self.spec = spec
        self.kind = kind
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.resize = resize
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """``(H, W, 3) uint8 -> (1, 3, H, W) float`` in [0, 1] on the device."""
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        rgb = as_rgb_uint8(pixels)
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            return np.ones((height, width), dtype=bool)
        x = self._to_tensor(rgb)
        if self.kind == "semantic":
            h, w = resized_shape(height, width, self.resize, self.max_side)
            if (h, w) != (height, width):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            logits = self.model((x - self._mean) / self._std)["out"]  # (1, C, h', w')
            fg = (logits.argmax(dim=1, keepdim=True) != 0).float()
        else:
            out = self.model([x[0]])[0]
            keep = out["scores"] >= self.score_threshold
            masks = out["masks"][keep]  # (N, 1, H, W) probabilities
            if masks.shape[0] == 0:
                return np.zeros((height, width), dtype=bool)
            fg = (masks > self.mask_threshold).any(dim=0, keepdim=True).float()
        if fg.shape[-2:] != (height, width):
            fg = F.interpolate(fg, size=(height, width), mode="bilinear", align_corners=False)
        return (fg[0, 0] > 0.5).cpu().numpy()


def build_torchvision_segmenter(
    name: str,
    weights: str | None = None,
    device: str = "cpu",
    allow_download: bool = True,
    model: nn.Module | None = None,
    **options: Any,
) -> TorchvisionSegmenter:
    """Build the segmenter ``name`` (a key of :data:`MODELS`). ``model`` replaces the network (tests pass a fake
    or a randomly initialised one); ``options`` go to :class:`TorchvisionSegmenter` (``resize``, thresholds)."""
    info = MODELS[name]
    spec = name if weights is None else f"{name}:{weights}"
    net = model if model is not None else build_network(name, weights, allow_download)
    return TorchvisionSegmenter(net, info.kind, spec, device=device, **options)


def _factory(name: str) -> Callable[[str | None], TorchvisionSegmenter]:
    def factory(arg: str | None) -> TorchvisionSegmenter:
        return build_torchvision_segmenter(name, arg or None)

    factory.__doc__ = f"Build ``{name}``; ``arg`` is a weights file, ``random``, or absent (pretrained)."
    return factory


for _name in MODELS:
    SEGMENTERS.register(_name)(_factory(_name))
