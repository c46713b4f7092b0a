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

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.shared_data import weizmann_photos
from benchmarks.timing import Stopwatch, interleaved, rate, warm_up
from indexer.engine import Collection
from indexer.pipeline import decoded
from indexer.scan import scan_folder
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder


def bare_forward(embedder: Embedder, batches: list[np.ndarray]) -> float:
    """Images/s of the network alone on ready batches."""
    with Stopwatch() as clock:
        for b in batches:
            embedder.embed_batch(b)
    return rate(sum(len(b) for b in batches), clock.seconds)


def index_folder(folder: Path, embedder: Embedder, model: ModelConfig, runtime: RuntimeOptions, files: int) -> float:
    """Images/s of ``lookalike index`` (``Collection.index_folder``) into a fresh collection."""
    with tempfile.TemporaryDirectory() as home:
        coll = Collection(home, runtime=runtime, embedder_factory=lambda c, r: embedder)
        coll.configure(model=model)
        with Stopwatch() as clock:
            report = coll.index_folder(folder)
        assert report.embedded == files, report.skipped
    return rate(files, clock.seconds)


def main() -> None:
    ap = BenchParser(__doc__, workers=2, precision=True)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    folder = args.folder or weizmann_photos()
    model = ModelConfig()
    runtime = RuntimeOptions(device="cpu", batch_size=args.batch_size, workers=args.workers, precision=args.precision)
    embedder = Embedder(model, runtime)
    files = [f.path for f in scan_folder(folder).files]
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for _, item in decoded(files, model.image_size, workers=args.workers):  # the pipeline's own decoding
        assert not isinstance(item, str), item
        by_shape.setdefault(item.image.pixels.shape, []).append(item.image.pixels)
    batches = [
        np.stack(group[i : i + args.batch_size])
        for group in by_shape.values()
        for i in range(0, len(group), args.batch_size)
    ]
    warm_up(lambda: bare_forward(embedder, batches[:2]))
    speeds = interleaved(
        {
            "bare": lambda: bare_forward(embedder, batches),
            "pipeline": lambda: index_folder(folder, embedder, model, runtime, len(files)),
        },
        args.rounds,
    )
    bare, pipe = speeds["bare"], speeds["pipeline"]
    ratios = [p / b for p, b in zip(pipe, bare)]
    result = {
        "benchmark": "pipeline_vs_bare_forward",
        "folder": str(folder),
        "images": len(files),
        "shapes": len(by_shape),
        "model": model.describe(),
        "precision": args.precision,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "bare_forward_images_per_s": round(float(np.median(bare)), 1),
        "pipeline_images_per_s": round(float(np.median(pipe)), 1),
        "ratio_median": round(float(np.median(ratios)), 3),
        "rounds": {
            "bare": [round(x, 1) for x in bare],
            "pipeline": [round(x, 1) for x in pipe],
            "ratio": [round(x, 3) for x in ratios],
        },
        "machine": machine(),
    }
    write_json(f"pipeline_{args.precision}.json", result)


if __name__ == "__main__":
    main()
