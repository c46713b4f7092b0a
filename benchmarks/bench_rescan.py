"""Re-scanning an unchanged folder: how long ``lookalike index DIR`` takes when nothing changed.

Protocol: ``--images`` (default 10,000) small PNG files are written to a temporary folder (spread over 100
sub-folders), indexed once with a small model (random weights, 32 px: the first pass is not what is measured),
then indexed again unchanged (timed: scan + database comparison + index check, no model is loaded), and once
more after touching 1% of the files with new content (timed: only those are embedded).

    python -m benchmarks.bench_rescan [--images 10000]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.timing import Stopwatch
from indexer.engine import Collection
from retrieval.config import ModelConfig, RuntimeOptions


def main() -> None:
    ap = BenchParser(__doc__)
    ap.add_argument("--images", type=int, default=10_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        for i in range(args.images):
            d = folder / f"d{i % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")
        runtime = RuntimeOptions(device="cpu", batch_size=64, workers=2)
        coll = Collection(Path(tmp) / "home", runtime=runtime)
        coll.configure(model=ModelConfig(weights="random", image_size=32))
        with Stopwatch() as first_s:
            first = coll.index_folder(folder)
        again = Collection(Path(tmp) / "home", runtime=runtime)
        with Stopwatch() as unchanged_s:
            unchanged = again.index_folder(folder)
        changed_files = sorted(folder.rglob("*.png"))[::100]
        for p in changed_files:
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(p)
        with Stopwatch() as partial_s:
            partial = Collection(Path(tmp) / "home", runtime=runtime).index_folder(folder)
    assert unchanged.embedded == 0 and partial.embedded == len(changed_files)
    write_json(
        "rescan.json",
        {
            "benchmark": "rescan_unchanged_folder",
            "images": args.images,
            "first_index_s": round(first_s.seconds, 2),
            "first_embedded": first.embedded,
            "rescan_unchanged_s": round(unchanged_s.seconds, 2),
            "rescan_1pct_changed_s": round(partial_s.seconds, 2),
            "changed_embedded": partial.embedded,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
