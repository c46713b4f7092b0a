"""Backbones: convolutional trunks that map an image batch to a feature map, behind a registry.

``build_backbone(name, weights)`` returns a :class:`Backbone` whose ``module`` maps normalised pixels
``(N, 3, H, W) -> (N, C, H/s, W/s)``. ``weights`` is ``"imagenet"`` (pretrained), ``"random"``, or a path to a
state dict. ImageNet weights of EfficientNet-Lite0 ship inside a Python package and work offline; torchvision's
are downloaded once into ``$TORCH_HOME/hub/checkpoints`` (or taken from there, or from a file you give).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .registry import Registry

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had; the message names the ways to get them."""


@dataclass
class Backbone:
    module: nn.Module
    out_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


BACKBONES: Registry[Callable[[str], Backbone]] = Registry("backbone")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only``); accepts a bare state dict or a checkpoint holding one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return obj


@BACKBONES.register("efficientnet_lite0")
def _efficientnet_lite0(weights: str) -> Backbone:
    from .efficientnet_lite import MEAN, STD, efficientnet_lite0

    net = efficientnet_lite0(None if weights == "random" else weights)
    return Backbone(net, net.out_channels, MEAN, STD)


def _torchvision_trunk(
    arch: str, weights_enum: str, weights: str, trunk: Callable[[nn.Module], nn.Module], channels: int
) -> Backbone:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if weights == "imagenet":
        enum = torchvision.models.get_weight(weights_enum)
        try:
            state = enum.get_state_dict(progress=True, check_hash=False)
        except Exception as exc:  # network errors come in many types (URLError, socket errors, HTTP errors)
            file_name = enum.url.rsplit("/", 1)[-1]
            raise WeightsUnavailableError(
                f"could not get the ImageNet weights of {arch} ({exc.__class__.__name__}: {exc}). "
                f"Either run once with internet access (they are cached in $TORCH_HOME/hub/checkpoints), "
                f"copy {file_name} into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch), "
                f"or pass the file with --weights FILE."
            ) from exc
        model.load_state_dict(state)
    elif weights != "random":
        state = load_state_dict_file(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        feature_missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
        if feature_missing or unexpected:
            raise ValueError(
                f"{weights} does not match {arch}: missing {feature_missing[:5]}, unexpected {list(unexpected)[:5]}"
            )
    return Backbone(trunk(model), channels, IMAGENET_MEAN, IMAGENET_STD)


def _resnet_trunk(m: nn.Module) -> nn.Module:
    return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)


@BACKBONES.register("resnet50")
def _resnet50(weights: str) -> Backbone:
    return _torchvision_trunk("resnet50", "ResNet50_Weights.IMAGENET1K_V2", weights, _resnet_trunk, 2048)


@BACKBONES.register("resnet101")
def _resnet101(weights: str) -> Backbone:
    return _torchvision_trunk("resnet101", "ResNet101_Weights.IMAGENET1K_V2", weights, _resnet_trunk, 2048)


@BACKBONES.register("vgg16")
def _vgg16(weights: str) -> Backbone:
    # Without the last max-pool, as in the retrieval literature: conv5_3 + ReLU, 512 channels.
    return _torchvision_trunk("vgg16", "VGG16_Weights.IMAGENET1K_V1", weights, lambda m: m.features[:-1], 512)


@BACKBONES.register("mobilenet_v3_large")
def _mobilenet_v3_large(weights: str) -> Backbone:
    return _torchvision_trunk(
        "mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V2", weights, lambda m: m.features, 960
    )


def build_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build a registered backbone; raises ``UnknownNameError`` naming the known ones."""
    return BACKBONES.get(name)(weights)
