"""Training the embedding network end to end: triplet (online mining) or contrastive (offline hard negatives).

The trainer knows nothing of files: it takes :class:`LabelledImages` (anything that can give an image's
pixels and everyone's labels), so tests hand it synthetic images and the CLI a folder.

- ``loss="triplet"``: batches of P classes x K images; the loss mines triplets inside each batch
  (``semihard`` as FaceNet, ``hard`` = batch-hard, or ``all``).
- ``loss="contrastive"``: at the start of every epoch the training images are embedded with the current
  network, each query gets a random positive and its hardest negatives (at most one per class), as
  Radenović et al. do; the loss is contrastive over the (query, positive) and (query, negative) pairs.

The whole network trains: backbone, pooling (GeM's ``p``; R-MAC's regional whitening when set), with the
backbone's BatchNorm statistics frozen (small retrieval batches estimate them badly). Every epoch the
validation images (held-out classes) are scored by leave-one-out mAP; the best checkpoint is kept at
``out`` and a resumable one at ``out`` + ``.last``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .functional import rmac_region_descriptors
from .losses import batch_triplet_loss_with_stats, contrastive_loss
from .metrics import retrieval_metrics
from .mining import make_contrastive_tuples, positive_pairs, tuple_pairs
from .model import EmbeddingNet, resolve_device, to_device
from .pooling import RMAC
from .resize import resize_longest
from .train_loop import EpochLoop, epoch_mean, last_path, seed_everything
from .whitening import learn_pca_whitening, learn_supervised_whitening

log = logging.getLogger(__name__)


class LabelledImages(Protocol):
    """A labelled image set: ``labels`` ``(N,)`` and ``load(i)`` -> ``(H, W, 3)`` uint8 RGB pixels."""

    labels: np.ndarray

    def __len__(self) -> int: ...
    def load(self, i: int) -> np.ndarray: ...


WHITENINGS = ("none", "layer", "supervised")
#: Radenović's whitening: matching pairs drawn per class (all of them in smaller classes).
WHITENING_PAIRS_PER_CLASS = 50


@dataclass
class TrainConfig:
    loss: str = "triplet"  # "triplet" | "contrastive"
    margin: float | None = None  # default: 0.2 for triplet, 0.7 for contrastive
    triplet_strategy: str = "semihard"  # "semihard" | "hard" | "all"
    epochs: int = 10
    batch_size: int = 32  # images per step (triplet: classes_per_batch x images_per_class)
    images_per_class: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    #: contrastive: queries per epoch and hard negatives per query (negatives mined among a pool of images).
    queries_per_epoch: int = 500
    negatives_per_query: int = 5
    mining_pool: int | None = 2000
    #: augmentation: random resized crop (scale range), horizontal flip, colour jitter strength (0: off).
    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip: bool = True
    color_jitter: float = 0.2
    seed: int = 0
    device: str = "auto"
    #: "none"; "layer": a whitening layer after pooling, PCA-initialised on the training images and trained
    #: with the network; "supervised": Radenović's whitening learned from matching training pairs after
    #: training, stored as the best checkpoint's whitening layer.
    whitening: str = "none"
    whitening_dim: int | None = None  # default: the pooled dimension (capped by the number of images - 1)
    #: "supervised": regularisation of the within-class covariance (``learn_supervised_whitening``'s ridge).
    #: Measured on LFW (aligned faces, network trained on folds 1-5, pairs of folds 6-10): ridge 1e-3 -> 78.7%,
    #: 0.1 -> 82.0%, 1.0 -> 84.3% (256-d: 84.8%) against 84.7% without whitening; so the default is 1.0.
    whitening_ridge: float = 1.0
    #: R-MAC only: learn the regional PCA-whitening from the training images first, then train it.
    region_whitening: bool = True
    #: PCA shrinkage of the initial whitenings (0: plain PCA-whitening; see learn_pca_whitening).
    whitening_shrinkage: float = 0.95
    whitening_sample: int = 5000  # images the whitenings are learned from, at most

    def resolved_margin(self) -> float:
        return self.margin if self.margin is not None else (0.2 if self.loss == "triplet" else 0.7)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d


@dataclass
class EpochReport:
    epoch: int
    loss: float
    val_map: float | None
    seconds: float
    active: float = 0.0  # triplet: fraction of mined triplets with a positive loss


@dataclass
class TrainResult:
    best_epoch: int
    best_val_map: float | None
    initial_val_map: float | None
    history: list[EpochReport] = field(default_factory=list)
    #: validation mAP after Radenović's supervised whitening was learned (``whitening="supervised"``).
    whitened_val_map: float | None = None


def _freeze_batchnorm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Augment:
    """Random resized crop to ``size x size``, flip, colour jitter: ``(H, W, 3)`` uint8 -> ``(3, size, size)`` uint8."""

    def __init__(self, size: int, cfg: TrainConfig) -> None:
        from torchvision.transforms import v2

        ops: list[Any] = [v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), antialias=True)]
        if cfg.flip:
            ops.append(v2.RandomHorizontalFlip())
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
        self.transform = v2.Compose(ops)

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return self.transform(torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1))


@torch.inference_mode()
def embed_all(
    net: EmbeddingNet, images: LabelledImages, size: int, device: torch.device, batch: int = 64, whiten: bool = True
) -> np.ndarray:
    """Vectors of every image without augmentation, in eval mode: ``-> (N, D)`` float32
    (``whiten=False``: the pooled descriptors before the network's whitening layer, ``(N, C)``).

    Images are resized exactly as indexing resizes them (:func:`retrieval.resize.resize_longest`: aspect
    ratio kept, longest side ``size``) and batched by shape, so validation scores what a collection will hold.
    """
    was_training = net.training
    net.eval()
    dim = net.out_dim if whiten or net.whiten is None else net.whiten.in_features
    out = np.zeros((len(images), dim), np.float32)
    pending: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}  # shape -> images waiting for a batch

    def flush(items: list[tuple[int, np.ndarray]]) -> None:
        x = to_device(torch.from_numpy(np.stack([p for _, p in items])), device).permute(0, 3, 1, 2)
        out[[j for j, _ in items]] = net(x, whiten=whiten).float().cpu().numpy()

    for i in range(len(images)):
        pixels = resize_longest(images.load(i), size)
        group = pending.setdefault(pixels.shape, [])
        group.append((i, pixels))
        if len(group) == batch:
            flush(pending.pop(pixels.shape))
    for group in pending.values():
        flush(group)
    net.train(was_training)
    if was_training:
        _freeze_batchnorm(net)
    return out


def _pk_batches(labels: np.ndarray, per_class: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of P x K batches: classes shuffled, ``per_class`` images each (with replacement if fewer)."""
    classes = {c: np.nonzero(labels == c)[0] for c in np.unique(labels)}
    usable = [c for c, idx in classes.items() if len(idx) >= 2]
    p = max(2, batch_size // per_class)
    if len(usable) < 2:
        raise ValueError("triplet training needs at least two classes with two or more images each")
    steps = max(1, len(labels) // (p * per_class))
    batches = []
    for _ in range(steps):
        chosen = rng.choice(len(usable), size=min(p, len(usable)), replace=False)
        idx = []
        for c in chosen:
            members = classes[usable[c]]
            idx.extend(rng.choice(members, size=per_class, replace=len(members) < per_class))
        batches.append(np.array(idx))
    return batches


class Trainer:
    """Trains ``model_config``'s network on ``train`` and validates on ``val``, writing checkpoints to ``out``."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        out: str | Path,
        on_epoch: Callable[[EpochReport], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        if config.loss not in ("triplet", "contrastive"):
            raise ValueError(f"unknown loss {config.loss!r}; known: contrastive, triplet")
        if config.whitening not in WHITENINGS:
            raise ValueError(f"unknown whitening {config.whitening!r}; known: {', '.join(WHITENINGS)}")
        if model_config.whitening_layer:
            raise ValueError(
                "training starts from a network without a whitening layer; "
                "start from the checkpoint it was trained from, or without --weights"
            )
        self.model_config = model_config
        self.config = config
        self.out = Path(out)
        self.last = last_path(self.out)
        self.on_epoch = on_epoch or (lambda r: None)
        self.on_step = on_step or (lambda i, n: None)
        self.device = resolve_device(config.device)

    def fit(self, train: LabelledImages, val: LabelledImages | None = None, resume: bool = False) -> TrainResult:
        cfg = self.config
        seed_everything(cfg.seed)
        net = EmbeddingNet(self.model_config).to(self.device)
        size = self.model_config.image_size
        loop: EpochLoop[EpochReport] = EpochLoop(
            self.out,
            epochs=cfg.epochs,
            train_config=cfg.to_dict(),
            report_type=EpochReport,
            score="val_map",
            score_label="mAP",
            score_before_training=True,
            on_epoch=self.on_epoch,
        )
        ck = loop.resumable() if resume else None
        if ck is not None:
            net.load_trained_state(ck["state_dict"])
        else:
            self._init_whitening(net, train)
        opt = torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        augment = Augment(size, cfg)
        labels = np.asarray(train.labels)
        label_ids = np.unique(labels, return_inverse=True)[1].reshape(-1)  # any label type -> 0..C-1
        margin = cfg.resolved_margin()
        negatives = contrastive_negatives(cfg, labels) if cfg.loss == "contrastive" else 0

        def train_epoch(epoch: int) -> dict[str, float]:
            rng = np.random.default_rng(cfg.seed * 1000 + epoch)
            if cfg.loss == "triplet":
                batches = _pk_batches(label_ids, cfg.images_per_class, cfg.batch_size, rng)
            else:
                tuples = make_contrastive_tuples(
                    embed_all(net, train, size, self.device),
                    labels,
                    cfg.queries_per_epoch,
                    negatives,
                    rng=rng,
                    pool=cfg.mining_pool,
                )
                per_batch = max(1, cfg.batch_size // (2 + negatives))
                batches = [tuples[i : i + per_batch] for i in range(0, len(tuples), per_batch)]
            net.train()
            _freeze_batchnorm(net)
            losses, actives = [], []
            for step, batch in enumerate(batches):
                if cfg.loss == "triplet":
                    x = to_device(torch.stack([augment(train.load(int(i))) for i in batch]), self.device)
                    out = batch_triplet_loss_with_stats(
                        net(x), torch.as_tensor(label_ids[batch], device=self.device), margin, cfg.triplet_strategy
                    )
                    loss = out.loss
                    actives.append(float(out.active_fraction))
                else:
                    uniq = np.unique(batch.reshape(-1))
                    pos = {int(j): k for k, j in enumerate(uniq)}
                    vecs = net(to_device(torch.stack([augment(train.load(int(j))) for j in uniq]), self.device))
                    left, right, same = tuple_pairs(batch)
                    a = vecs[[pos[int(j)] for j in left]]
                    b = vecs[[pos[int(j)] for j in right]]
                    loss = contrastive_loss(a, b, torch.as_tensor(same, device=self.device), margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())  # read back once per epoch: no GPU sync per step
                self.on_step(step + 1, len(batches))
            return {
                "loss": epoch_mean(losses),
                "active": float(np.mean(actives)) if actives else 0.0,
            }

        def validate() -> float:
            assert val is not None
            return float(retrieval_metrics(embed_all(net, val, size, self.device), val.labels)["mAP"])

        result = loop.run(
            net, opt, train_epoch, None if val is None else validate, model_config=net.config.to_dict(), resume_from=ck
        )
        whitened = self._supervised_whitening(net, train, val) if cfg.whitening == "supervised" else None
        return TrainResult(
            best_epoch=result.best_epoch,
            best_val_map=result.best_score,
            initial_val_map=result.initial_score,
            history=result.history,
            whitened_val_map=whitened,
        )

    def _init_whitening(self, net: EmbeddingNet, train: LabelledImages) -> None:
        """Before training: R-MAC's regional whitening and/or the whitening layer, PCA-learned on ``train``;
        both then train with the rest of the network (Gordo et al.)."""
        cfg = self.config
        sample = _Sample(train, cfg.whitening_sample, cfg.seed)
        if isinstance(net.pool, RMAC) and cfg.region_whitening and net.pool.region_proj is None:
            regions = region_descriptors(net, sample, self.model_config.image_size, self.device)
            channels = regions.shape[1]
            if len(regions) <= channels:
                log.warning(
                    "only %d regions to learn R-MAC's %d-d regional whitening from: left out", len(regions), channels
                )
            else:
                w = learn_pca_whitening(regions, channels, shrinkage=cfg.whitening_shrinkage)
                net.pool.set_region_whitening(torch.from_numpy(w.shift), torch.from_numpy(w.proj))
                net.pool.to(self.device)
                log.info("R-MAC regional whitening learned from %d regions", len(regions))
        if cfg.whitening == "layer":
            x = embed_all(net, sample, self.model_config.image_size, self.device, whiten=False)
            dim = whitening_dim(cfg.whitening_dim, x)
            w = learn_pca_whitening(x, dim, shrinkage=cfg.whitening_shrinkage)
            net.set_whitening(w.shift, w.proj)
            log.info("whitening layer to %d dimensions, initialised by PCA on %d images", dim, len(x))

    def _supervised_whitening(
        self, net: EmbeddingNet, train: LabelledImages, val: LabelledImages | None
    ) -> float | None:
        """After training: Radenović's whitening learned from matching pairs of ``train`` on the best network,
        stored in the best checkpoint as its whitening layer. Returns the validation mAP with it."""
        cfg = self.config
        best = load_checkpoint(self.out)
        net.load_trained_state(best["state_dict"])
        size = self.model_config.image_size
        sample = _Sample(train, cfg.whitening_sample, cfg.seed)
        x = embed_all(net, sample, size, self.device, whiten=False)
        pairs = positive_pairs(sample.labels, rng=cfg.seed, per_class=WHITENING_PAIRS_PER_CLASS)
        dim = whitening_dim(cfg.whitening_dim, x)
        w = learn_supervised_whitening(x, pairs, dim, ridge=cfg.whitening_ridge)
        net.set_whitening(w.shift, w.proj)
        val_map = None
        if val is not None:
            val_map = float(retrieval_metrics(embed_all(net, val, size, self.device), val.labels)["mAP"])
            log.info(
                "validation mAP with supervised whitening: %.4f (without: %s)", val_map, best["train"]["best_val_map"]
            )
        train_state = {
            **best["train"],
            "supervised_whitening": {"pairs": int(len(pairs)), "images": len(x), "dim": dim, "val_map": val_map},
        }
        save_checkpoint(self.out, net.config.to_dict(), net.state_dict(), train_state)
        return val_map


def whitening_dim(asked: int | None, x: np.ndarray) -> int:
    """The output size of a whitening learned from descriptors ``x (N, C)``: ``asked`` (default: ``C``), but at
    most ``C`` and ``N - 1`` (more carry no information); a smaller one than asked is a warning saying why."""
    n, c = x.shape
    dim = min(asked or c, c, n - 1)
    if asked is not None and dim < asked:
        why = f"descriptors have {c} dimensions" if dim == c else f"{n} images give at most {n - 1} dimensions"
        log.warning(
            "whitening to %d dimensions, not the %d asked for: %s (use more training images, or a smaller "
            "--whitening-dim)",
            dim,
            asked,
            why,
        )
    return dim


def contrastive_negatives(cfg: TrainConfig, labels: np.ndarray) -> int:
    """Hard negatives per query for the contrastive loss: ``cfg.negatives_per_query``, but at most one per other
    class of ``labels`` (a smaller number than asked is a warning saying why); ``ValueError`` with one class."""
    classes = len(np.unique(labels))
    if classes < 2:
        raise ValueError(f"contrastive training needs at least two classes, the training set has {classes}")
    if cfg.negatives_per_query > classes - 1:
        log.warning(
            "the contrastive loss mines %d hard negatives per query, not the %d asked for: the training set has "
            "%d classes and negatives are at most one per other class (train on more classes, or --negatives %d)",
            classes - 1,
            cfg.negatives_per_query,
            classes,
            classes - 1,
        )
    return min(cfg.negatives_per_query, classes - 1)


class _Sample:
    """At most ``limit`` items of a ``LabelledImages`` (seeded, sorted), to learn whitenings from."""

    def __init__(self, base: LabelledImages, limit: int, seed: int) -> None:
        n = len(base)
        self.base = base
        self.idx = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
        self.labels = np.asarray(base.labels)[self.idx]

    def __len__(self) -> int:
        return len(self.idx)

    def load(self, i: int) -> np.ndarray:
        return self.base.load(int(self.idx[i]))


@torch.inference_mode()
def region_descriptors(net: EmbeddingNet, images: LabelledImages, size: int, device: torch.device) -> np.ndarray:
    """R-MAC's L2-normalised regional MAC vectors of every image, before any regional whitening:
    ``-> (sum of regions, C)`` float32."""
    was_training = net.training
    net.eval()
    out = []
    for i in range(len(images)):
        pixels = resize_longest(images.load(i), size)
        x = to_device(torch.tensor(pixels), device).permute(2, 0, 1)[None]  # a copy: the pixels may be read-only
        fmap = net.features(net.normalise(x))
        out.append(rmac_region_descriptors(fmap, net.pool.levels)[0].float().cpu().numpy())
    net.train(was_training)
    if was_training:
        _freeze_batchnorm(net)
    return np.concatenate(out)
