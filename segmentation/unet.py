"""A U-Net whose encoder is our ImageNet EfficientNet-Lite0 (TernausNet's idea: a pretrained classifier as the
encoder), and the ``unet:PATH`` segmenter that runs a trained one.

Encoder: :meth:`retrieval.efficientnet_lite.EfficientNetLite.pyramid`, feature maps at strides 2, 4, 8, 16, 32
(Lite0: 16, 24, 40, 112, 1280 channels). Decoder: a 1x1 "bridge" conv shrinks the stride-32 map, then at each
finer stride (16, 8, 4, 2) the map is upsampled x2 (bilinear), concatenated with the encoder's map of that stride
(the skip connection) and passed through two 3x3 conv + BN + ReLU. A 1x1 conv gives one logit per stride-2
pixel, upsampled x2 to the input resolution. The decoder stops at stride 2: a full-resolution stage would cost
more than the whole encoder on a CPU for little gain after the final bilinear upsampling.

Input: ``(N, 3, H, W)`` RGB pixels in [0, 255] (uint8 or float), normalised inside the network like
:meth:`retrieval.model.EmbeddingNet.normalise`; any ``H, W`` (padded to a multiple of 32, cropped back).
Output: ``(N, 1, H, W)`` logits (object where > 0).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.checkpoint import load_checkpoint
from retrieval.efficientnet_lite import MEAN, STD, efficientnet_lite0
from retrieval.model import resolve_device
from retrieval.registry import Registry
from retrieval.resize import target_size

from .base import SEGMENTERS

log = logging.getLogger(__name__)

#: ``model_config["kind"]`` of U-Net checkpoints; embedding-network checkpoints have no ``kind``.
KIND = "unet"
#: The network's input sides are padded up to a multiple of this (the encoder's total stride).
STRIDE = 32

# name -> factory(weights: "imagenet" | "random") -> a module with ``pyramid(x) -> list[Tensor]`` (strides
# 2..32, finest first) and ``pyramid_channels``, expecting inputs normalised with MEAN / STD below.
ENCODERS: Registry[Callable[[str], nn.Module]] = Registry("U-Net encoder")


@ENCODERS.register("efficientnet_lite0")
def _lite0_encoder(weights: str) -> nn.Module:
    if weights not in ("imagenet", "random"):
        raise ValueError(f"encoder weights must be 'imagenet' or 'random', got {weights!r}")
    net = efficientnet_lite0("imagenet" if weights == "imagenet" else None)
    net.fc = nn.Identity()  # the ImageNet classifier is not used; keep it out of checkpoints
    return net


@dataclass(frozen=True)
class UNetConfig:
    """What a U-Net is; saved as the checkpoint's ``model_config`` (with ``kind = "unet"``)."""

    encoder: str = "efficientnet_lite0"
    #: What the encoder started from before training: "imagenet" or "random".
    encoder_weights: str = "imagenet"
    #: Trained on ``image_size`` squares; at inference images are resized so their longest side is this.
    image_size: int = 192
    #: Output channels of the decoder stages at strides 16, 8, 4, 2.
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        if len(self.decoder_channels) != 4 or min(self.decoder_channels) < 1:
            raise ValueError(
                f"decoder_channels needs 4 positive numbers (strides 16, 8, 4, 2), got {self.decoder_channels}"
            )
        if self.image_size < STRIDE:
            raise ValueError(f"image_size must be at least {STRIDE}, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": KIND, **dataclasses.asdict(self)}
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        if d.get("kind") != KIND:
            raise ValueError(f"not a U-Net model configuration (kind {d.get('kind')!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields - {"kind"}
        if unknown:
            raise ValueError(f"unknown U-Net config fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in fields})


def is_unet_config(model_config: object) -> bool:
    """True if a checkpoint's ``model_config`` describes a U-Net (not an embedding network)."""
    return isinstance(model_config, dict) and model_config.get("kind") == KIND


def pad_to_multiple(x: Tensor, multiple: int = STRIDE) -> Tensor:
    """Zero-pad bottom/right so both sides are multiples of ``multiple``: ``(N, C, H, W) -> (N, C, H', W')``."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip map, two 3x3 conv + BN + ReLU.

    ``(N, in_ch, h, w), skip (N, skip_ch, H, W) -> (N, out_ch, H, W)`` with ``H, W`` the skip's size.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class UNet(nn.Module):
    """Pixels ``(N, 3, H, W)`` in [0, 255] -> logits ``(N, 1, H, W)``.

    ``pretrained_encoder=False`` skips loading ``config.encoder_weights`` (when a checkpoint's state dict
    is loaded right after, as :func:`load_unet` does).
    """

    def __init__(self, config: UNetConfig, pretrained_encoder: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = ENCODERS.get(config.encoder)(config.encoder_weights if pretrained_encoder else "random")
        skips = tuple(self.encoder.pyramid_channels)  # strides 2, 4, 8, 16, 32
        dec = config.decoder_channels
        self.bridge = _conv_bn_relu(skips[-1], dec[0], kernel=1)
        ins = (dec[0], *dec[:-1])
        # decoder[i] works at stride 16 / 2**i, taking the encoder map of that stride as its skip.
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips[-2::-1], dec))
        self.logit = nn.Conv2d(dec[-1], 1, 1)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    def normalise(self, pixels: Tensor) -> Tensor:
        """``(N, 3, H, W)`` pixels in [0, 255] -> the encoder's input range."""
        return (pixels.float() - self.mean) / self.std

    def forward(self, pixels: Tensor) -> Tensor:
        """``(N, 3, H, W)`` pixels in [0, 255] -> ``(N, 1, H, W)`` logits."""
        h, w = pixels.shape[-2:]
        feats = self.encoder.pyramid(pad_to_multiple(self.normalise(pixels)))
        x = self.bridge(feats[-1])
        for block, skip in zip(self.decoder, feats[-2::-1]):
            x = block(x, skip)
        x = F.interpolate(self.logit(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return x[..., :h, :w]


def load_unet(path: str | Path, device: str | torch.device = "cpu") -> UNet:
    """A trained U-Net from a checkpoint written by :class:`segmentation.training.SegTrainer`, in eval mode.

    Raises ``ValueError`` (a message naming the file) when the file is not a lookalike checkpoint or holds
    another kind of network.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"U-Net checkpoint not found: {path}")
    ck = load_checkpoint(path)
    if not is_unet_config(ck["model_config"]):
        held = ck["model_config"].get("kind") or "an embedding network"  # embedding checkpoints have no kind
        raise ValueError(f"{path} holds {held}, not a U-Net segmenter; train one with `lookalike train-seg`")
    net = UNet(UNetConfig.from_dict(ck["model_config"]), pretrained_encoder=False)
    net.load_state_dict(ck["state_dict"])
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return net.eval().to(dev)


@torch.inference_mode()
def predict_logits(net: UNet, pixels: np.ndarray, image_size: int) -> Tensor:
    """One image ``(H, W, 3)`` uint8, resized so its longest side is ``image_size``, through the network;
    the logits are resized back: ``-> (H, W)`` float32 on the network's device. ``net`` should be in eval mode.
    """
    height, width = pixels.shape[:2]
    device = next(net.parameters()).device
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float()
    size = target_size(width, height, image_size, multiple=1)[::-1]  # (h, w): longest side image_size
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    logits = net(x)
    if size != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits[0, 0].float()


def predict_mask(net: UNet, pixels: np.ndarray, image_size: int, threshold: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` bool: sigmoid of :func:`predict_logits` above ``threshold``."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB pixels, got shape {pixels.shape}")
    probs = torch.sigmoid(predict_logits(net, pixels, image_size))
    return (probs > threshold).cpu().numpy()


class UNetSegmenter:
    """The :class:`segmentation.base.Segmenter` of a trained U-Net: ``(H, W, 3) uint8 -> (H, W) bool``.

    ``image_size`` defaults to the size the network was trained at; ``threshold`` applies to the sigmoid.
    """

    def __init__(
        self, path: str | Path, image_size: int | None = None, threshold: float = 0.5, device: str = "auto"
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.net = load_unet(self.path, device)
        self.image_size = image_size or self.net.config.image_size
        self.threshold = threshold
        self.spec = f"{KIND}:{self.path}"  # absolute: a collection outlives the working directory
        log.info("U-Net segmenter %s at %d px on %s", self.path, self.image_size, next(self.net.parameters()).device)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return predict_mask(self.net, np.asarray(pixels, dtype=np.uint8), self.image_size, self.threshold)


@SEGMENTERS.register(KIND)
def _unet_segmenter(arg: str | None) -> UNetSegmenter:
    if not arg:
        raise ValueError("the unet segmenter needs a checkpoint: unet:PATH (train one with `lookalike train-seg`)")
    return UNetSegmenter(arg)
