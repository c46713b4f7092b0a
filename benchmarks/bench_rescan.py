"""Re-scanning an unchanged folder: how long ``lookalike index DIR`` takes when nothing changed.

Protocol: ``--images`` (default 10,000) small PNG files are written to a temporary folder (spread over 100
sub-folders), indexed once with a small model (random weights, 32 px: the first pass is not what is measured),
then indexed again unchanged (timed: scan + database comparison + index check, no model is loaded), and once
more after touching 1% of the files with new content (timed: only those are embedded).

    python -m benchmarks.bench_rescan [--images 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import machine, write_json
from indexer.engine import Collection
from retrieval.config import ModelConfig, RuntimeOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        t0 = time.perf_counter()
        first = coll.index_folder(folder)
        first_s = time.perf_counter() - t0
        again = Collection(Path(tmp) / "home", runtime=runtime)
        t0 = time.perf_counter()
        unchanged = again.index_folder(folder)
        unchanged_s = time.perf_counter() - t0
        changed_files = sorted(folder.rglob("*.png"))[:: 100]
        for p in changed_files:
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(p)
        t0 = time.perf_counter()
        partial = Collection(Path(tmp) / "home", runtime=runtime).index_folder(folder)
        partial_s = time.perf_counter() - t0
    assert unchanged.embedded == 0 and partial.embedded == len(changed_files)
    write_json("rescan.json", {
        "benchmark": "rescan_unchanged_folder", "images": args.images,
        "first_index_s": round(first_s, 2), "first_embedded": first.embedded,
        "rescan_unchanged_s": round(unchanged_s, 2),
        "rescan_1pct_changed_s": round(partial_s, 2), "changed_embedded": partial.embedded,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
