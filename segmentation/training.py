"""Training the U-Net segmenter on image + mask pairs: Dice + BCE, joint augmentation, validation IoU per epoch.

The trainer takes :class:`MaskedImageSet` (anything that gives ``(pixels, mask)`` pairs) or a list of
:class:`segmentation.data.MaskedImage` files, so tests can hand it drawn shapes and the CLI a folder.

Each epoch: the training pairs are shuffled (seeded per epoch), augmented (random resized crop to
``image_size`` squares, horizontal flip, colour jitter; the crop and flip move the mask with the image) and
batched; the loss is :func:`segmentation.losses.dice_bce_loss`; AdamW with a cosine learning-rate decay over
the epochs (the encoder at ``encoder_lr_scale`` times the decoder's rate, or frozen with its BatchNorm
statistics). Then every validation image goes through exactly what the ``unet:PATH`` segmenter does (resize
to the longest side, threshold, resize back) and is scored by IoU at its own resolution; the best
checkpoint by mean IoU is kept at ``out``, and a resumable one (optimiser, RNG, epoch, history) at
``out`` + ``.last``, both written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from retrieval.model import resolve_device, to_device
from retrieval.resize import target_size
from retrieval.train_loop import EpochLoop, epoch_mean, last_path, seed_everything
from retrieval.training import Augment, TrainConfig

from .base import iou
from .data import MaskedImage, load_pair
from .losses import dice_bce_loss
from .unet import UNet, UNetConfig, predict_mask

log = logging.getLogger(__name__)


class MaskedImageSet(Protocol):
    """Image + mask pairs: ``load(i)`` -> ``(H, W, 3)`` uint8 RGB pixels and the ``(H, W)`` bool mask.

    A training set that also has ``set_epoch(epoch)`` (e.g. :class:`segmentation.composites.CompositeSet`,
    drawn on the fly) is told each epoch's number before the epoch is drawn.
    """

    def __len__(self) -> int: ...
    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SegTrainConfig:
    epochs: int = 12
    batch_size: int = 8
    #: AdamW learning rate of the decoder (the peak of the cosine decay); the encoder's is scaled below.
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    #: Training squares' side; also the longest side the segmenter resizes images to.
    image_size: int = 192
    #: "imagenet" or "random": what the encoder starts from.
    encoder_weights: str = "imagenet"
    #: Keep the encoder (weights and BatchNorm statistics) as it started; train only the decoder.
    freeze_encoder: bool = False
    #: Augmentation: random resized crop (area share range) + horizontal flip + colour jitter; off: plain resize.
    augment: bool = True
    crop_scale: tuple[float, float] = (0.4, 1.0)
    color_jitter: float = 0.2
    #: Share of the training pairs held out for validation when no validation set is given (see
    #: :func:`split_validation`).
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(float(s) for s in self.crop_scale))
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be 0 < low <= high <= 1, got {self.crop_scale}")

    def model_config(self) -> UNetConfig:
        return UNetConfig(encoder_weights=self.encoder_weights, image_size=self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d


@dataclass
class SegEpochReport:
    epoch: int
    loss: float
    val_iou: float | None
    seconds: float


@dataclass
class SegTrainResult:
    best_epoch: int
    best_val_iou: float | None
    history: list[SegEpochReport] = field(default_factory=list)


class InMemoryPairs:
    """Pairs held in memory as numpy arrays; :meth:`from_files` reads them, optionally shrunk to ``max_side``."""

    def __init__(self, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.items = list(items)

    @classmethod
    def from_files(
        cls,
        pairs: Sequence[MaskedImage],
        max_side: int | None = None,
        on_load: Callable[[int], None] | None = None,
        on_skip: Callable[[MaskedImage, Exception], None] | None = None,
    ) -> InMemoryPairs:
        """Read ``pairs``; ``on_load(1)`` after each. An unreadable pair raises, or with ``on_skip`` is
        reported to it and left out."""
        items = []
        for pair in pairs:
            try:
                pixels, mask = load_pair(pair)
            except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
                if on_skip is None:
                    raise
                on_skip(pair, exc)
            else:
                items.append(shrink_pair(pixels, mask, max_side) if max_side else (pixels, mask))
            if on_load is not None:
                on_load(1)
        return cls(items)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[i]


def shrink_pair(pixels: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale an ``(H, W, 3)`` image and its ``(H, W)`` mask so the longest side is at most ``max_side``."""
    h, w = mask.shape
    if max(h, w) <= max_side:
        return pixels, mask
    size = target_size(w, h, max_side, multiple=1)
    small = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) > 127
    return small, small_mask


def split_validation(
    pairs: Sequence[MaskedImage], fraction: float, seed: int = 0
) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """A seeded random ``fraction`` of ``pairs`` held out for validation: ``(train, val)``.

    At least one pair is held out when ``fraction > 0`` and there are two or more pairs; none when ``fraction`` is 0.
    """
    n = len(pairs)
    n_val = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx])


class JointAugment:
    """``(H, W, 3)`` uint8 pixels + ``(H, W)`` bool mask -> ``(3, S, S)`` uint8 + ``(S, S)`` float mask.

    With ``augment``: the embedding trainer's augmentation (random resized crop, horizontal flip, colour
    jitter), applied to the pixels and the mask together through torchvision's ``tv_tensors``, so the crop
    and flip move the mask with the image (resampled nearest-neighbour) and the jitter touches the pixels
    only; without: both resized to ``S x S``. Random draws come from torch's global generator.
    """

    def __init__(self, size: int, cfg: SegTrainConfig) -> None:
        from torchvision.transforms import v2

        if cfg.augment:
            self.transform = Augment(
                size, TrainConfig(crop_scale=cfg.crop_scale, flip=True, color_jitter=cfg.color_jitter)
            ).transform
        else:
            self.transform = v2.Resize((size, size), antialias=True)

    def __call__(self, pixels: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image = tv_tensors.Image(torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8))[None])
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)[0].float()


def mean_iou(net: UNet, images: MaskedImageSet, image_size: int) -> float:
    """Mean IoU of the network's masks (made as the ``unet:PATH`` segmenter makes them) over ``images``."""
    was_training = net.training
    net.eval()
    scores = []
    for i in range(len(images)):
        pixels, truth = images.load(i)
        scores.append(iou(predict_mask(net, pixels, image_size), truth))
    net.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


def cosine_factor(epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for 1-based ``epoch`` of ``epochs``: 1 at the first, decaying to ~0.05 at the last."""
    progress = (epoch - 1) / max(1, epochs)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One shuffled epoch of index batches; a trailing batch of one joins the previous (BatchNorm needs two)."""
    order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = np.concatenate(batches[-2:])
        batches.pop()
    return batches


def _as_set(data: Sequence[MaskedImage] | MaskedImageSet, max_side: int | None) -> MaskedImageSet:
    if hasattr(data, "load"):
        return data  # type: ignore[return-value]
    return InMemoryPairs.from_files(list(data), max_side)  # type: ignore[arg-type]


class SegTrainer:
    """Trains a U-Net on ``train`` pairs, validating on ``val`` pairs, writing checkpoints to ``out``."""

    def __init__(
        self,
        config: SegTrainConfig,
        out: str | Path,
        on_epoch: Callable[[SegEpochReport], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.model_config = config.model_config()
        self.out = Path(out)
        self.last = last_path(self.out)
        self.on_epoch = on_epoch or (lambda r: None)
        self.on_step = on_step or (lambda i, n: None)
        self.device = resolve_device(config.device)

    def fit(
        self,
        train: Sequence[MaskedImage] | MaskedImageSet,
        val: Sequence[MaskedImage] | MaskedImageSet | None = None,
        resume: bool = False,
    ) -> SegTrainResult:
        """Train for ``config.epochs`` epochs (after the last finished one in ``out.last`` when ``resume``).

        File lists are read into memory first (training images shrunk to twice ``image_size``).
        """
        cfg = self.config
        size = cfg.image_size
        train_set = _as_set(train, max_side=2 * size)
        val_set = None if val is None else _as_set(val, max_side=None)
        if len(train_set) == 0:
            raise ValueError("no training images")
        seed_everything(cfg.seed)
        net = UNet(self.model_config).to(self.device)
        encoder_params = list(net.encoder.parameters())
        if cfg.freeze_encoder:
            net.encoder.requires_grad_(False)
        encoder_ids = {id(p) for p in encoder_params}
        decoder_params = [p for p in net.parameters() if id(p) not in encoder_ids]
        groups = [{"params": decoder_params, "lr": cfg.lr}]
        if not cfg.freeze_encoder:
            groups.append({"params": encoder_params, "lr": cfg.lr * cfg.encoder_lr_scale})
        base_lrs = [g["lr"] for g in groups]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

        loop: EpochLoop[SegEpochReport] = EpochLoop(
            self.out,
            epochs=cfg.epochs,
            train_config=cfg.to_dict(),
            report_type=SegEpochReport,
            score="val_iou",
            score_label="IoU",
            on_epoch=self.on_epoch,
        )
        ck = loop.resumable() if resume else None
        if ck is not None:
            if ck["model_config"] != self.model_config.to_dict():
                raise ValueError(
                    f"{self.last} was trained with a different network ({ck['model_config']}); "
                    "use the same options, or start afresh without resuming"
                )
            net.load_state_dict(ck["state_dict"])

        augment = JointAugment(size, cfg)

        def train_epoch(epoch: int) -> dict[str, float]:
            # the rate is a function of (epoch, epochs), so a resumed run with more epochs follows its new decay
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * cosine_factor(epoch, cfg.epochs)
            net.train()
            if cfg.freeze_encoder:
                net.encoder.eval()  # keep its BatchNorm statistics
            if hasattr(train_set, "set_epoch"):  # data drawn on the fly (composites): a new draw every epoch
                train_set.set_epoch(epoch)
            batches = _batches(len(train_set), cfg.batch_size, np.random.default_rng(cfg.seed * 1000 + epoch))
            losses = []
            for step, batch in enumerate(batches):
                pairs = [augment(*train_set.load(int(i))) for i in batch]
                x = to_device(torch.stack([p for p, _ in pairs]), self.device)
                y = to_device(torch.stack([m for _, m in pairs])[:, None], self.device)
                loss = dice_bce_loss(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())  # read back once per epoch: no GPU sync per step
                self.on_step(step + 1, len(batches))
            return {"loss": epoch_mean(losses)}

        validate = None if val_set is None or len(val_set) == 0 else (lambda: mean_iou(net, val_set, size))
        result = loop.run(net, opt, train_epoch, validate, model_config=self.model_config.to_dict(), resume_from=ck)
        return SegTrainResult(best_epoch=result.best_epoch, best_val_iou=result.best_score, history=result.history)
