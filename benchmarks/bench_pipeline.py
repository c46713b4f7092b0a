"""Whole indexing pipeline vs the bare network forward pass, side by side on the same images.

Protocol: a folder of real photos (default: the 328 JPEG photos of ../shared/data/weizmann-horse/
weizmann_horse_db/rgb, Borenstein & Ullman; varied sizes and aspect ratios), the default model.
1. bare: every image is decoded and resized beforehand (not timed), grouped into batches by shape exactly as
   the pipeline groups them, and only ``Embedder.embed_batch`` is timed.
2. pipeline: ``Collection.index_folder`` into a fresh collection — scanning, reading, hashing, decoding in
   parallel threads, the network, SQLite writes and the FAISS index, as ``lookalike index`` runs it.
The two run back to back, ``--rounds`` times, in one process. The machine is shared and its speed drifts by
tens of percent over seconds, so the figure of merit is the median over rounds of each round's ratio
pipeline/bare; the per-round speeds are in the JSON too.

    python -m benchmarks.bench_pipeline [--folder DIR] [--rounds 2] [--workers 2] [--precision fp32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, require_dataset, write_json
from indexer.engine import Collection
from indexer.imageio import load_image
from indexer.scan import scan_folder
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder


def bare_forward(embedder: Embedder, batches: list[np.ndarray]) -> float:
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for b in batches:
        embedder.embed_batch(b)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    folder = args.folder or require_dataset("weizmann-horse/weizmann_horse_db/rgb")
    model = ModelConfig()
    runtime = RuntimeOptions(device="cpu", batch_size=args.batch_size, workers=args.workers, precision=args.precision)
    embedder = Embedder(model, runtime)
    files = [f.path for f in scan_folder(folder).files]
    images = [load_image(p, model.image_size).pixels for p in files]
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for img in images:
        by_shape.setdefault(img.shape, []).append(img)
    batches = [np.stack(group[i:i + args.batch_size]) for group in by_shape.values()
               for i in range(0, len(group), args.batch_size)]
    bare_forward(embedder, batches[:2])  # warm-up
    bare, pipe = [], []
    for _ in range(args.rounds):
        bare.append(bare_forward(embedder, batches))
        with tempfile.TemporaryDirectory() as home:
            coll = Collection(home, runtime=runtime, embedder_factory=lambda c, r: embedder)
            coll.configure(model=model)
            t0 = time.perf_counter()
            report = coll.index_folder(folder)
            elapsed = time.perf_counter() - t0
            assert report.embedded == len(files), report.skipped
            pipe.append(len(files) / elapsed)
    ratios = [p / b for p, b in zip(pipe, bare)]
    result = {
        "benchmark": "pipeline_vs_bare_forward", "folder": str(folder), "images": len(files),
        "shapes": len(by_shape), "model": model.describe(), "precision": args.precision,
        "workers": args.workers, "batch_size": args.batch_size,
        "bare_forward_images_per_s": round(float(np.median(bare)), 1),
        "pipeline_images_per_s": round(float(np.median(pipe)), 1),
        "ratio_median": round(float(np.median(ratios)), 3),
        "rounds": {"bare": [round(x, 1) for x in bare], "pipeline": [round(x, 1) for x in pipe],
                   "ratio": [round(x, 3) for x in ratios]},
        "machine": machine(),
    }
    write_json(f"pipeline_{args.precision}.json", result)


if __name__ == "__main__":
    main()
