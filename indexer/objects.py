"""The per-object index: besides its whole-image vector, each image of an objects collection holds one vector per
object found in it, and a search ranks images by their best-matching part.

Objects are the instances of the segmenter's foreground mask: connected parts covering at least
``min_area`` of the image, and the parts that come apart when the mask is eroded (``split``: touching objects),
the ``max_objects`` largest, each embedded from its box crop, cut from the image at
full resolution (as a ``--box`` query is) and masked by its own part the way the collection masks. An image
where nothing is found, or a collection without a segmenter, falls back to a fixed grid of overlapping windows
(``fallback="grid"``, recorded as each row's ``source``) or to no object at all (``"none"``); its whole-image
vector is always kept.

Objects are rows derived from their image (table ``objects``): written in the same transaction as the image's
vector, dropped with it (:class:`ImageObjects`, a :class:`~indexer.sync.Dependents`), searched through their own
:class:`~indexer.index_cache.IndexCache` (``objects.faiss``), which shares the image index's version counter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image
from sqlalchemy import Float, ForeignKey, Integer, LargeBinary, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from retrieval.resize import target_size

from .db import Base
from .imageio import DEFAULT_MAX_PIXELS, ImageLoadError, check_box, load_image
from .masking import Masker, MaskOutcome
from .store import vector_bytes

if TYPE_CHECKING:
    from retrieval.model import Embedder

log = logging.getLogger(__name__)

OBJECTS_INDEX_FILE = "objects.faiss"
OBJECTS_STATE_FILE = "objects.json"
#: ``objects.source``: an instance of the foreground mask, or a window of the fallback grid.
MASK, GRID = "mask", "grid"
FALLBACKS = ("grid", "none")


class ObjectRecord(Base):
    """One object found in an image: its box in pixels of the image as shown, its share of the image, where it
    came from (``mask`` / ``grid``) and its raw float32 vector."""

    __tablename__ = "objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(Integer, ForeignKey("images.id"), index=True)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    area: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


@dataclass(frozen=True)
class ObjectSettings:
    """Whether a collection indexes objects, and how it finds them (stored with the collection)."""

    enabled: bool = False
    #: What an image where the segmenter finds nothing (or a collection without ``--mask``) gets: ``grid``
    #: windows or ``none`` (its whole-image vector only).
    fallback: str = "grid"
    #: Parts of the mask smaller than this share of the image are not objects.
    min_area: float = 0.01
    #: At most this many objects per image (the largest).
    max_objects: int = 8
    #: Boxes are widened by this share of their sides on each side (context, and rough masks' edges).
    pad: float = 0.05
    #: Parts that come apart when the mask is eroded by this share of its shorter side are objects too (0: off):
    #: objects touching each other or another salient thing. bench_objects (4 unseen objects per image): mAP
    #: 0.908 without, 0.942 at 0.08 (region queries 0.895, 0.944); 0.04 and 0.12 measured no better than 0.08.
    split: float = 0.08

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"objects fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if not 0.0 <= self.min_area < 1.0 or self.max_objects < 1 or not 0.0 <= self.pad < 1.0 or self.split < 0:
            raise ValueError(f"invalid object settings {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectSettings:
        return cls(**d)

    def describe(self) -> str:
        if not self.enabled:
            return "whole images only"
        return f"objects (mask instances, fallback {self.fallback})"


@dataclass(frozen=True)
class FoundObject:
    """One object of an image: ``box`` ``(x, y, w, h)`` in pixels of the image as shown, ``area`` its share
    of the image, ``mask`` ``(h, w)`` bool over the box or ``None`` (unmasked), ``source`` mask / grid."""

    box: tuple[int, int, int, int]
    area: float
    source: str
    mask: np.ndarray | None = None


def _components(mask: np.ndarray, need: float) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    parts = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= max(need, 1)]
    return [(labels == i, tuple(int(v) for v in stats[i, :4])) for i in parts]


def _box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def instances(
    mask: np.ndarray, min_area: float, max_objects: int, split: float = 0.0
) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """``mask (H, W) bool`` -> its connected parts covering at least ``min_area`` of it, at most ``max_objects``,
    largest first: ``(part mask (H, W) bool, (x, y, w, h))`` in mask pixels. ``split`` > 0 also adds the pieces
    of a part that comes apart into several when the mask is eroded by that share of its shorter side (objects
    touching each other or another salient thing), each grown back within the part."""
    need = min_area * mask.size
    parts = _components(mask, need)
    if split > 0:
        k = max(3, int(round(split * min(mask.shape))) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        eroded = cv2.erode(mask.astype(np.uint8), kernel) > 0
        for whole, whole_box in list(parts):
            pieces = _components(eroded & whole, need / 4)
            if len(pieces) < 2:  # only a part that comes apart into several is split
                continue
            for piece, _ in pieces:
                grown = (cv2.dilate(piece.astype(np.uint8), kernel) > 0) & whole
                ys, xs = np.nonzero(grown)
                box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
                if grown.sum() >= need and _box_iou(box, whole_box) < 0.7:
                    parts.append((grown, box))
    parts.sort(key=lambda p: -int(p[0].sum()))
    return parts[:max_objects]


def grid_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The fallback windows over a ``width`` x ``height`` image: half its sides, at steps of a quarter (3 x 3)."""
    w, h = max(2, width // 2), max(2, height // 2)
    xs = sorted({0, (width - w) // 2, width - w})
    ys = sorted({0, (height - h) // 2, height - h})
    return [(x, y, w, h) for y in ys for x in xs]


def find_objects(outcome: MaskOutcome | None, width: int, height: int, settings: ObjectSettings) -> list[FoundObject]:
    """The objects of a ``width`` x ``height`` image (as shown) from its mask outcome (at any scale; ``None``:
    no segmenter): the mask's instances, or the fallback windows when none is found."""
    found: list[FoundObject] = []
    if outcome is not None and outcome.mask is not None:
        mh, mw = outcome.mask.shape
        sx, sy = width / mw, height / mh
        for part, (x, y, w, h) in instances(outcome.mask, settings.min_area, settings.max_objects, settings.split):
            px, py = settings.pad * w, settings.pad * h
            x0, y0 = max(0, int((x - px) * sx)), max(0, int((y - py) * sy))
            x1, y1 = min(width, int(np.ceil((x + w + px) * sx))), min(height, int(np.ceil((y + h + py) * sy)))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            # the part's mask over the box, in mask pixels (resized to the crop when embedded)
            mx0, my0 = int(x0 / sx), int(y0 / sy)
            mx1, my1 = max(mx0 + 1, int(np.ceil(x1 / sx))), max(my0 + 1, int(np.ceil(y1 / sy)))
            area = float(np.count_nonzero(part)) / part.size
            found.append(FoundObject((x0, y0, x1 - x0, y1 - y0), area, MASK, part[my0:my1, mx0:mx1]))
    if not found and settings.fallback == "grid":
        found = [FoundObject(b, b[2] * b[3] / (width * height), GRID) for b in grid_boxes(width, height)]
    return found


def crop_inputs(
    full: np.ndarray, obj: FoundObject, max_side: int, masker: Masker | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The network inputs of one object: its box cut from the full-resolution pixels ``full (H, W, 3)`` and
    resized as a query's box is (longest side ``max_side``), masked by its part when the collection masks
    (``masker``): ``(1, h, w, 3)`` pixels and ``(1, h, w)`` pooling mask or ``None``."""
    left, top, right, bottom = check_box(obj.box, full.shape[1], full.shape[0])
    img = Image.fromarray(full[top:bottom, left:right])
    size = target_size(img.width, img.height, max_side)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)[None]
    if masker is None or obj.mask is None:
        return pixels, None
    part = cv2.resize(obj.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if not part.any():
        return pixels, None
    return masker.network_inputs(pixels, [part])


def embed_objects(
    path: str,
    embedder: Embedder,
    masker: Masker | None,
    settings: ObjectSettings,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[FoundObject], np.ndarray]:
    """Find and embed the objects of the image file ``path``: ``(objects, (n, D) float32 raw vectors)``.
    ``masker``: the collection's (its outcome on the image as the pipeline decoded it is reused, see
    :class:`RememberingMasker`); ``None``: no segmenter, the fallback windows."""
    size = embedder.config.image_size
    try:
        full = load_image(path, None, max_pixels)
    except ImageLoadError as exc:
        log.warning("cannot read %s for its objects: %s", path, exc.reason)
        return [], np.zeros((0, 0), np.float32)
    outcome = None
    if masker is not None:
        outcome = masker(load_image(path, size, max_pixels).pixels)
    found = find_objects(outcome, full.width, full.height, settings)
    if not found:
        return found, np.zeros((0, embedder.dim), np.float32)
    inputs = [crop_inputs(full.pixels, obj, size, masker) for obj in found]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for n, (pixels, _) in enumerate(inputs):
        by_shape.setdefault(pixels.shape[1:3], []).append(n)
    out = np.zeros((len(found), embedder.dim), np.float32)
    for shape, group in by_shape.items():  # crops of a shape in one batch (sides are multiples of the stride)
        pixels = np.concatenate([inputs[n][0] for n in group])
        masks = None
        if any(inputs[n][1] is not None for n in group):
            full_mask = np.ones((1, *shape), bool)
            masks = np.concatenate([m if (m := inputs[n][1]) is not None else full_mask for n in group])
        out[group] = embedder.embed_batch(pixels, masks)
    return found, out


class RememberingMasker:
    """A :class:`Masker` that remembers its recent outcomes by the pixels they were computed on, so the objects
    pass reuses the mask the embedding pipeline computed for the same decoded image instead of segmenting it
    again. Thread-safe (the pipeline masks in its decoding threads)."""

    def __init__(self, masker: Masker, keep: int = 512) -> None:
        self.masker, self.keep = masker, keep
        self.settings = masker.settings
        self._seen: OrderedDict[bytes, MaskOutcome] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(pixels: np.ndarray) -> bytes:
        h = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16)
        h.update(str(pixels.shape).encode())
        return h.digest()

    def __call__(self, pixels: np.ndarray) -> MaskOutcome:
        key = self._key(pixels)
        with self._lock:
            hit = self._seen.pop(key, None)
        if hit is not None:
            return hit
        outcome = self.masker(pixels)
        with self._lock:
            self._seen[key] = outcome
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
        return outcome

    def network_inputs(
        self, pixels: np.ndarray, masks: list[np.ndarray | None]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.masker.network_inputs(pixels, masks)


class ImageObjects:
    """The objects of an image (:class:`~indexer.sync.Dependents`): they go when their image changes or goes
    (a moved image keeps them: they hold no path)."""

    def moved(self, s: Session, file_id: int, path: str) -> None:
        pass

    def drop(self, s: Session, file_ids: Sequence[int]) -> set[int]:
        ids = set(s.scalars(select(ObjectRecord.id).where(ObjectRecord.image_id.in_(file_ids))))
        if ids:
            s.execute(delete(ObjectRecord).where(ObjectRecord.image_id.in_(file_ids)))
        return ids


def object_rows(
    image_id: int, found: Sequence[FoundObject], vectors: np.ndarray, dtype: str = "float32"
) -> list[ObjectRecord]:
    """The rows to store for the objects ``found`` in image ``image_id`` and their raw vectors ``(n, D)``, kept in
    ``dtype`` (the collection's ``vector_dtype``)."""
    return [
        ObjectRecord(
            image_id=image_id,
            x=o.box[0],
            y=o.box[1],
            w=o.box[2],
            h=o.box[3],
            area=o.area,
            source=o.source,
            vector=vector_bytes(v, dtype),
        )
        for o, v in zip(found, vectors)
    ]


@dataclass
class ObjectCounts:
    objects: int = 0
    #: images that hold objects, and of those the ones whose objects are fallback windows
    images: int = 0
    fallback_images: int = 0


def count_objects(s: Session) -> ObjectCounts:
    objects = s.scalar(select(func.count()).select_from(ObjectRecord)) or 0
    images = s.scalar(select(func.count(func.distinct(ObjectRecord.image_id)))) or 0
    fallback = (
        s.scalar(select(func.count(func.distinct(ObjectRecord.image_id))).where(ObjectRecord.source == GRID)) or 0
    )
    return ObjectCounts(objects, images, fallback)


def owners(s: Session, object_ids: Sequence[int]) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Object id -> ``(image id, box)``."""
    out: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
    ids = sorted({int(i) for i in object_ids})
    for n in range(0, len(ids), 500):
        q = select(
            ObjectRecord.id, ObjectRecord.image_id, ObjectRecord.x, ObjectRecord.y, ObjectRecord.w, ObjectRecord.h
        )
        for r in s.execute(q.where(ObjectRecord.id.in_(ids[n : n + 500]))):
            out[r[0]] = (r[1], (r[2], r[3], r[4], r[5]))
    return out


#: ``(image id, score, box or None)``: one candidate part of an image for a query.
Part = tuple[int, float, "tuple[int, int, int, int] | None"]


def best_parts(candidates: Sequence[Part]) -> list[Part]:
    """Each image's best-scoring part among ``candidates`` (whole image: box ``None``), best first; ties keep
    the whole image."""
    best: dict[int, Part] = {}
    for image_id, score, box in candidates:
        kept = best.get(image_id)
        if kept is None or score > kept[1]:
            best[image_id] = (image_id, score, box)
    return sorted(best.values(), key=lambda p: -p[1])


__all__ = [
    "OBJECTS_INDEX_FILE",
    "OBJECTS_STATE_FILE",
    "MASK",
    "GRID",
    "ObjectRecord",
    "ObjectSettings",
    "FoundObject",
    "instances",
    "grid_boxes",
    "find_objects",
    "crop_inputs",
    "embed_objects",
    "RememberingMasker",
    "ImageObjects",
    "object_rows",
    "ObjectCounts",
    "count_objects",
    "owners",
    "best_parts",
]
