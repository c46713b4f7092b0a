"""The embedding pipeline over files: parallel decoding workers, shape-bucketed batches, the network.

Images are resized so their longest side is the model's ``image_size`` (sides rounded to the backbone
stride), so a folder of mixed photos falls into a handful of shapes; each shape fills its own batch, and
no pixel is spent on padding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.model import Embedder

from .imageio import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """One file's outcome: ``vector`` and metadata, or ``error``."""

    index: int  # position in the input sequence
    vector: np.ndarray | None = None  # (D,) float32
    width: int | None = None
    height: int | None = None
    content_hash: str | None = None
    error: str | None = None


class _FileDataset(Dataset):
    def __init__(self, paths: Sequence[str], max_side: int, max_pixels: int) -> None:
        self.paths = paths
        self.max_side = max_side
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, object]:
        try:
            return i, load_image(self.paths[i], self.max_side, self.max_pixels)
        except ImageLoadError as exc:
            return i, exc.reason
        except Exception as exc:  # never let one odd file kill a long run; report it instead
            log.exception("unexpected error reading %s", self.paths[i])
            return i, f"unexpected error: {exc.__class__.__name__}: {exc}"


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _identity(x: object) -> object:
    return x


def embed_files(
    paths: Sequence[str],
    embedder: Embedder,
    *,
    batch_size: int = 32,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Embedded]:
    """Embed ``paths``; yields one :class:`Embedded` per path, in completion order (not input order)."""
    if not paths:
        return
    ds = _FileDataset(paths, embedder.config.image_size, max_pixels)
    loader_kwargs: dict = {}
    if workers > 0:
        loader_kwargs = dict(worker_init_fn=_worker_init, prefetch_factor=max(2, batch_size), persistent_workers=False)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity, **loader_kwargs)
    buckets: dict[tuple[int, int], list[tuple[int, object]]] = {}

    def run(items: list[tuple[int, object]]) -> list[Embedded]:
        t0 = time.perf_counter()
        vecs = embedder.embed_batch(np.stack([img.pixels for _, img in items]))
        log.debug("batch of %d %s in %.3fs", len(items), items[0][1].pixels.shape, time.perf_counter() - t0)
        return [
            Embedded(i, v, img.width, img.height, img.content_hash) for (i, img), v in zip(items, vecs)
        ]

    for i, item in loader:
        if isinstance(item, str):
            yield Embedded(i, error=item)
            continue
        key = item.pixels.shape[:2]
        bucket = buckets.setdefault(key, [])
        bucket.append((i, item))
        if len(bucket) >= batch_size:
            yield from run(bucket)
            buckets[key] = []
    for bucket in buckets.values():
        if bucket:
            yield from run(bucket)
