"""Metric-learning losses for the embedding network, with online triplet mining inside a batch.

Embeddings are L2-normalised ``(N, D)`` float tensors; every distance here is the **Euclidean** distance
``d(x, y) = ||x - y||_2`` (not squared), so with unit vectors ``d`` lies in ``[0, 2]`` and
``d^2 = 2 - 2 x.y``. Square roots go through :func:`_safe_sqrt`, which gives an exact zero with a zero
gradient at zero distance instead of a NaN.

* :func:`contrastive_loss` - Siamese pairs (Hadsell et al.; Radenovic et al., Gordo et al. for retrieval).
  No ``1/2`` factor: a matching pair pays ``d^2``, a non-matching pair pays ``max(0, margin - d)^2``.
  (cirtorch's ``ContrastiveLoss`` sums ``0.5 *`` these terms, i.e. half of ``reduction="sum"`` here.)
* :func:`triplet_loss` - explicit triplets, ``max(0, d(a, p) - d(a, n) + margin)``.
* :func:`batch_triplet_loss` - triplets mined online in a labelled batch ("semihard", "hard", "all");
  :func:`batch_triplet_loss_with_stats` also reports the fraction of active (positive-loss) triplets.

The ``nn.Module`` wrappers :class:`ContrastiveLoss` and :class:`TripletLoss` are registered in ``LOSSES``.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn

from .registry import Registry

Tensor = torch.Tensor

log = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum", "none")
TRIPLET_STRATEGIES = ("semihard", "hard", "all")
DEFAULT_CONTRASTIVE_MARGIN = 0.7
DEFAULT_TRIPLET_MARGIN = 0.1

_SQRT_FLOOR = 1e-12  # keeps sqrt's derivative finite in the branch torch.where discards


# --------------------------------------------------------------------------------------------- distances


def _safe_sqrt(sq: Tensor) -> Tensor:
    """Element-wise ``sqrt`` of non-negative ``sq`` that is exactly 0, with gradient 0, where ``sq <= 0``."""
    positive = sq > 0
    root = sq.clamp_min(_SQRT_FLOOR).sqrt()
    return torch.where(positive, root, torch.zeros_like(root))


def _euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Euclidean distance: ``(P, D), (P, D) -> (P,)``, NaN-free gradient at zero distance."""
    return _safe_sqrt((a - b).pow(2).sum(dim=-1))


def pairwise_distances(x: Tensor, squared: bool = False) -> Tensor:
    """All Euclidean distances between the rows of ``x``: ``(N, D) -> (N, N)``.

    Computed from the Gram matrix (``O(N^2)`` memory, not ``O(N^2 D)``), clamped at zero against rounding,
    with an exact zero diagonal. The square root is NaN-safe: a zero distance has a zero gradient.
    ``squared=True`` returns the squared distances.
    """
    if x.dim() != 2:
        raise ValueError(f"pairwise_distances expects (N, D) embeddings, got {tuple(x.shape)}")
    sq_norms = x.pow(2).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    sq = sq.masked_fill(eye, 0.0)
    return sq if squared else _safe_sqrt(sq)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        # An empty batch gives a 0 (not NaN) that stays attached to the graph.
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")


def _check_rows(*tensors: Tensor) -> None:
    first = tensors[0]
    if first.dim() != 2:
        raise ValueError(f"expected (P, D) embeddings, got {tuple(first.shape)}")
    for t in tensors[1:]:
        if t.shape != first.shape:
            raise ValueError(f"embedding shapes differ: {tuple(first.shape)} vs {tuple(t.shape)}")


# --------------------------------------------------------------------------------------- pair / triplet


def contrastive_loss(
    a: Tensor, b: Tensor, same: Tensor, margin: float = DEFAULT_CONTRASTIVE_MARGIN, reduction: str = "mean"
) -> Tensor:
    """Contrastive loss of pairs ``(a[i], b[i])``: ``(P, D), (P, D), (P,) -> scalar`` (``(P,)`` for "none").

    ``same`` is bool or 0/1: matching pairs pay ``d^2``, non-matching pairs ``max(0, margin - d)^2``, with
    ``d`` the Euclidean distance (no ``1/2`` factor). ``reduction`` is "mean" (over all ``P`` pairs),
    "sum" or "none".
    """
    _check_rows(a, b)
    if same.shape != (a.shape[0],):
        raise ValueError(f"same must have shape ({a.shape[0]},), got {tuple(same.shape)}")
    same = same.to(device=a.device, dtype=torch.bool)
    pos = (a - b).pow(2).sum(dim=-1)
    neg = (margin - _euclidean(a, b)).clamp_min(0.0).pow(2)
    return _reduce(torch.where(same, pos, neg), reduction)


def triplet_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = DEFAULT_TRIPLET_MARGIN, reduction: str = "mean"
) -> Tensor:
    """Triplet loss ``max(0, d(a, p) - d(a, n) + margin)`` on Euclidean distances: ``3 x (T, D) -> scalar``.

    ``reduction`` is "mean" (over all ``T`` triplets, inactive ones included), "sum" or "none" (``(T,)``).
    """
    _check_rows(anchor, positive, negative)
    per = (_euclidean(anchor, positive) - _euclidean(anchor, negative) + margin).clamp_min(0.0)
    return _reduce(per, reduction)


# ----------------------------------------------------------------------------------- online batch mining


class BatchTripletOutput(NamedTuple):
    """What :func:`batch_triplet_loss_with_stats` returns."""

    loss: Tensor  # scalar, differentiable; 0 (still attached to the graph) when the batch has no triplet
    active_fraction: float  # share of the triplets the loss considered that have a positive loss
    n_triplets: int  # how many triplets the loss considered


def _label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(N,) -> (positive (N, N), negative (N, N))`` bool masks; the diagonal is in neither."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard_triplets(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-hard mining (Hermans et al. 2017): one triplet per anchor, ``(N, N), (N,) -> 3 x (A,)`` indices.

    For every anchor that has both a positive and a negative in the batch: its farthest positive and its
    nearest negative (ties go to the lowest index). Anchors lacking either are skipped.
    """
    with torch.no_grad():
        d = dist.detach()
        pos, neg = _label_masks(labels)
        anchors = (pos.any(dim=1) & neg.any(dim=1)).nonzero(as_tuple=True)[0]
        hardest_pos = torch.where(pos, d, torch.full_like(d, -1.0)).argmax(dim=1)
        hardest_neg = torch.where(neg, d, torch.full_like(d, float("inf"))).argmin(dim=1)
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


def semihard_triplets(dist: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """FaceNet semi-hard mining: one triplet per anchor-positive pair, ``(N, N), (N,) -> 3 x (T,)`` indices.

    For every ordered pair ``(a, p)`` with ``a != p`` of one label, where ``a`` has a negative in the batch:

    * if some negative lies farther than the positive (``d(a, n) > d(a, p)``), the **nearest** of those.
      When it lies inside the margin band ``d(a, p) < d(a, n) < d(a, p) + margin`` it is the hardest
      semi-hard negative; otherwise no semi-hard negative exists and the triplet has zero loss (inactive);
    * if every negative is at most as far as the positive, the **farthest** negative (the easiest of the
      hard ones), as TensorFlow Addons' ``triplet_semihard_loss`` does; that triplet always has a loss.

    Ties go to the lowest index. Anchors without a positive or without a negative give no triplet.
    """
    del margin  # the band only decides whether the chosen triplet is active, not which negative is chosen
    with torch.no_grad():
        d = dist.detach()
        pos, neg = _label_masks(labels)
        a, p = pos.nonzero(as_tuple=True)
        keep = neg.any(dim=1)[a]
        a, p = a[keep], p[keep]
        d_ap = d[a, p]  # (T,)
        d_an = d[a]  # (T, N)
        neg_a = neg[a]
        farther = neg_a & (d_an > d_ap[:, None])
        nearest_farther = torch.where(farther, d_an, torch.full_like(d_an, float("inf"))).argmin(dim=1)
        farthest = torch.where(neg_a, d_an, torch.full_like(d_an, -1.0)).argmax(dim=1)
        n = torch.where(farther.any(dim=1), nearest_farther, farthest)
        return a, p, n


def _mined_loss(dist: Tensor, a: Tensor, p: Tensor, n: Tensor, margin: float) -> BatchTripletOutput:
    per = (dist[a, p] - dist[a, n] + margin).clamp_min(0.0)  # (T,)
    count = int(a.numel())
    if not count:
        log.debug("batch has no valid triplet (no anchor with both a positive and a negative)")
    loss = per.mean() if count else per.sum()
    active = float((per.detach() > 0).sum().item()) / count if count else 0.0
    return BatchTripletOutput(loss, active, count)


def _batch_all_loss(dist: Tensor, labels: Tensor, margin: float) -> BatchTripletOutput:
    """Batch-all (Hermans et al.): every valid ``(a, p, n)``, averaged over those with a positive loss."""
    pos, neg = _label_masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]  # (N, N, N) indexed [a, p, n]
    per = (dist[:, :, None] - dist[:, None, :] + margin).clamp_min(0.0)
    per = torch.where(valid, per, torch.zeros_like(per))
    n_active = (per.detach() > 0).sum()
    n_valid = int(valid.sum().item())
    loss = per.sum() / n_active.clamp_min(1).to(per.dtype)
    active = float(n_active.item()) / n_valid if n_valid else 0.0
    return BatchTripletOutput(loss, active, n_valid)


def batch_triplet_loss_with_stats(
    embeddings: Tensor, labels: Tensor, margin: float = DEFAULT_TRIPLET_MARGIN, strategy: str = "semihard"
) -> BatchTripletOutput:
    """Triplet loss with triplets mined online in a labelled batch: ``(N, D), (N,) -> BatchTripletOutput``.

    ``strategy``:

    * "semihard" - :func:`semihard_triplets`; mean over all mined triplets (one per anchor-positive pair),
      zero-loss ones included;
    * "hard" - :func:`batch_hard_triplets`; mean over all mined triplets (one per anchor);
    * "all" - every valid triplet; mean over those with a positive loss only (``O(N^3)`` memory).

    Mining uses the current (detached) distances; the loss is differentiable through the chosen ones.
    A batch with no valid triplet gives a zero loss that is still part of the graph, so ``backward()`` works.
    """
    if strategy not in TRIPLET_STRATEGIES:
        raise ValueError(f"unknown triplet strategy {strategy!r}; known: {', '.join(TRIPLET_STRATEGIES)}")
    if embeddings.dim() != 2:
        raise ValueError(f"expected (N, D) embeddings, got {tuple(embeddings.shape)}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.to(embeddings.device)
    dist = pairwise_distances(embeddings)
    if strategy == "all":
        return _batch_all_loss(dist, labels, margin)
    if strategy == "hard":
        a, p, n = batch_hard_triplets(dist, labels)
    else:
        a, p, n = semihard_triplets(dist, labels, margin)
    return _mined_loss(dist, a, p, n, margin)


def batch_triplet_loss(
    embeddings: Tensor, labels: Tensor, margin: float = DEFAULT_TRIPLET_MARGIN, strategy: str = "semihard"
) -> Tensor:
    """The loss alone of :func:`batch_triplet_loss_with_stats`: ``(N, D), (N,) -> scalar``."""
    return batch_triplet_loss_with_stats(embeddings, labels, margin, strategy).loss


# ------------------------------------------------------------------------------------------------ modules

LOSSES: Registry[type[nn.Module]] = Registry("loss")


@LOSSES.register("contrastive")
class ContrastiveLoss(nn.Module):
    """:func:`contrastive_loss` on pairs: ``forward(a (P, D), b (P, D), same (P,)) -> scalar``."""

    def __init__(self, margin: float = DEFAULT_CONTRASTIVE_MARGIN, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
        self.margin = float(margin)
        self.reduction = reduction

    def forward(self, a: Tensor, b: Tensor, same: Tensor) -> Tensor:
        return contrastive_loss(a, b, same, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """:func:`batch_triplet_loss` on a labelled batch: ``forward(embeddings (N, D), labels (N,)) -> scalar``."""

    def __init__(self, margin: float = DEFAULT_TRIPLET_MARGIN, strategy: str = "semihard") -> None:
        super().__init__()
        if strategy not in TRIPLET_STRATEGIES:
            raise ValueError(f"unknown triplet strategy {strategy!r}; known: {', '.join(TRIPLET_STRATEGIES)}")
        self.margin = float(margin)
        self.strategy = strategy

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return batch_triplet_loss(embeddings, labels, self.margin, self.strategy)

    def with_stats(self, embeddings: Tensor, labels: Tensor) -> BatchTripletOutput:
        """The loss together with the active-triplet fraction and triplet count, for logging."""
        return batch_triplet_loss_with_stats(embeddings, labels, self.margin, self.strategy)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, strategy={self.strategy!r}"


def build_loss(name: str, margin: float | None = None, strategy: str = "semihard") -> nn.Module:
    """A loss module by registry name; ``margin=None`` takes the loss's default. ``strategy`` is for "triplet"."""
    cls = LOSSES.get(name)
    if cls is TripletLoss:
        return TripletLoss(DEFAULT_TRIPLET_MARGIN if margin is None else margin, strategy)
    if cls is ContrastiveLoss:
        return ContrastiveLoss(DEFAULT_CONTRASTIVE_MARGIN if margin is None else margin)
    return cls() if margin is None else cls(margin)
