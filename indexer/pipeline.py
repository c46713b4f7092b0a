"""The embedding pipeline over files: parallel decoding, shape-bucketed batches, the network.

Images are resized so their longest side is the model's ``image_size`` (sides rounded to the backbone
stride), so a folder of mixed photos falls into a handful of shapes; each shape fills its own batch, and
no pixel is spent on padding.

Decoding runs in a pool of threads: Pillow releases the GIL while it decodes and resizes, so threads decode
in parallel without the pickling and copying that worker processes need to hand pixels back. On Linux the
decoding threads run at the lowest priority, so on a small CPU the network's threads keep the cores and
decoding fills the gaps (an OpenMP thread pre-empted by a decoder stalls the whole batch).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from retrieval.config import DEFAULT_BATCH, DEFAULT_WORKERS

from .imageio import DEFAULT_MAX_PIXELS, Box, ImageLoadError, LoadedImage, load_image
from .masking import Masker, MaskOutcome

if TYPE_CHECKING:  # torch is imported where a network is built, not by reading files
    from retrieval.model import Embedder

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
    mask_fraction: float | None = None  # share of the image the foreground mask covers (masked collections)
    mask_fallback: str | None = None  # why the whole image was embedded instead of the mask


def _lower_thread_priority() -> None:
    try:  # Linux: niceness is per thread, set through the thread's native id
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


@dataclass
class Decoded:
    """A decoded image and, in a masked collection, its mask outcome (computed in the decoding thread)."""

    image: LoadedImage
    mask: MaskOutcome | None = None


#: What can be embedded: a file's path, or an encoded image already in memory (an upload).
Source = str | bytes


def _load(
    source: Source, max_side: int, max_pixels: int, masker: Masker | None = None, box: Box | None = None
) -> Decoded | str:
    """Decode (and mask) one file; an unusable file gives its reason as a string instead of raising."""
    try:
        image = load_image(source, max_side, max_pixels, box)
    except ImageLoadError as exc:
        return exc.reason
    except Exception as exc:  # never let one odd file kill a long run; report it instead
        log.exception("unexpected error reading %s", source if isinstance(source, str) else "an image in memory")
        return f"unexpected error: {exc.__class__.__name__}: {exc}"
    return Decoded(image, masker(image.pixels) if masker is not None else None)


def decoded(
    paths: Sequence[Source],
    max_side: int,
    *,
    workers: int | None = 2,
    prefetch: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    masker: Masker | None = None,
    box: Box | None = None,
) -> Iterator[tuple[int, Decoded | str]]:
    """Decode ``paths`` in order with ``workers`` threads (0: in the caller's thread; ``None``: the CPU default,
    2), ``prefetch`` ahead;
    with a ``masker``, each image's mask is computed in the same thread, right after decoding. ``box``: only
    that region of every image (see :func:`indexer.imageio.decode_image`)."""
    if workers is None:
        workers = DEFAULT_WORKERS["cpu"]
    if workers <= 0:
        for i, p in enumerate(paths):
            yield i, _load(p, max_side, max_pixels, masker, box)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="lookalike-decode", initializer=_lower_thread_priority) as pool:
        pending: deque[tuple[int, Future]] = deque()
        next_i = 0
        try:
            while next_i < len(paths) or pending:
                while next_i < len(paths) and len(pending) < prefetch:
                    pending.append((next_i, pool.submit(_load, paths[next_i], max_side, max_pixels, masker, box)))
                    next_i += 1
                i, fut = pending.popleft()
                yield i, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


def batch_and_workers(embedder: Embedder, batch_size: int | None, workers: int | None) -> tuple[int, int]:
    """``batch_size`` and ``workers``, those left ``None`` chosen for the embedder's device (``Embedder.plan``;
    the CPU defaults for an embedder without one)."""
    plan = getattr(embedder, "plan", None)
    if batch_size is None:
        batch_size = plan.batch_size if plan is not None else DEFAULT_BATCH["cpu"]
    if workers is None:
        workers = plan.workers if plan is not None else DEFAULT_WORKERS["cpu"]
    return batch_size, workers


def embed_decoded(
    items: Sequence[tuple[int, Decoded]], embedder: Embedder, masker: Masker | None = None
) -> list[Embedded]:
    """One network batch: same-sized decoded images ``(index, Decoded)`` (masked as ``masker`` says when
    given) -> their :class:`Embedded` results, each carrying its ``index``."""
    t0 = time.perf_counter()
    stack = getattr(embedder, "stack_batch", None) or np.stack
    pixels, masks = stack([d.image.pixels for _, d in items]), None
    if masker is not None:
        pixels, masks = masker.network_inputs(pixels, [d.mask.mask if d.mask else None for _, d in items])
    vecs = embedder.embed_batch(pixels, masks)
    log.debug("batch of %d %s in %.3fs", len(items), pixels.shape, time.perf_counter() - t0)
    return [
        Embedded(
            i,
            v,
            d.image.width,
            d.image.height,
            d.image.content_hash,
            mask_fraction=d.mask.fraction if d.mask else None,
            mask_fallback=d.mask.fallback if d.mask else None,
        )
        for (i, d), v in zip(items, vecs)
    ]


def embed_files(
    paths: Sequence[Source],
    embedder: Embedder,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    masker: Masker | None = None,
    box: Box | None = None,
) -> Iterator[Embedded]:
    """Embed ``paths`` (files, or encoded images in memory; masked by ``masker`` when given; only the region
    ``box`` of each when given); yields one :class:`Embedded` per path, in completion order (not input order).

    ``batch_size`` / ``workers`` left ``None`` are the embedder's choice for its device (``Embedder.plan``: on a
    GPU bigger batches and more decoding threads than on a CPU).
    """
    batch_size, workers = batch_and_workers(embedder, batch_size, workers)
    buckets: dict[tuple[int, int], list[tuple[int, Decoded]]] = {}

    for i, item in decoded(
        paths,
        embedder.config.image_size,
        workers=workers,
        prefetch=max(2 * batch_size, 8),
        max_pixels=max_pixels,
        masker=masker,
        box=box,
    ):
        if isinstance(item, str):
            yield Embedded(i, error=item)
            continue
        key = item.image.pixels.shape[:2]
        bucket = buckets.setdefault(key, [])
        bucket.append((i, item))
        if len(bucket) >= batch_size:
            yield from embed_decoded(bucket, embedder, masker)
            buckets[key] = []
    for bucket in buckets.values():
        if bucket:
            yield from embed_decoded(bucket, embedder, masker)
