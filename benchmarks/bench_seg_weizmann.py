"""Foreground-mask quality on the Weizmann horses: mean IoU and images/s of every segmenter, with baselines.

Protocol: ../shared/data/weizmann-horse/weizmann_horse_db (Borenstein & Ullman, "Class-specific, top-down
segmentation", ECCV 2002): 328 RGB photos with figure-ground masks. The fixed held-out split of
``segmentation.data.split_pairs`` (every 4th photo by sorted name, starting with the first) gives 82 test and
246 training photos; this script scores the 82 test photos (``--split train`` scores the 246 training ones,
which is where the classical segmenters' settings were chosen). Each photo is read with
``segmentation.data.load_pair`` (RGB at full resolution; the mask, which comes at a smaller size, is resized to
it and binarised at > 127), the segmenter gets the ``(H, W, 3) uint8`` pixels and its ``(H, W) bool`` mask is
compared with the truth at the photo's resolution.

Segmenters: every one registered in ``segmentation.base.SEGMENTERS`` that can be built from its bare name
(those that need an argument, e.g. ``unet:PATH``, or whose pretrained weights are not available offline are
listed under ``skipped`` with the reason), plus each ``--segmenter SPEC`` (repeatable, e.g.
``--segmenter unet:seg.pt``); ``--only`` scores just the ``--segmenter`` ones. Baselines, so the numbers mean
something: ``baseline_whole`` (every pixel is horse) and ``baseline_ellipse`` (the ellipse inscribed in the
centred box that leaves 10% of each side as margin).

Per segmenter: mean / median / min IoU over the photos; ``fallback`` = how many masks
``segmentation.base.check_mask`` rejects (near-empty or near-full, where the engine uses the whole image), and
``mean_iou_engine`` = mean IoU after that fall-back (the mask the engine would actually use); images/s = photos
/ the summed wall time of the segmenter calls alone (decoding excluded; one untimed warm-up call first).
Threads: ``--threads`` (default 1) for torch and OpenCV. The machine is shared, so speeds are comparable within
one run only; the 1-minute load average is recorded.

Output: JSON on stdout, written to ``benchmarks/results/seg_weizmann[_train].json`` (or ``--out NAME``).

    python -m benchmarks.bench_seg_weizmann                                   # all registered + baselines
    python -m benchmarks.bench_seg_weizmann --segmenter unet:seg.pt           # ... and a trained U-Net
    python -m benchmarks.bench_seg_weizmann --only --segmenter grabcut:iterations=3
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.shared_data import weizmann_split
from benchmarks.timing import Stopwatch, loadavg, rate, warm_up
from segmentation.base import SEGMENTERS, build_segmenter, check_mask, iou
from segmentation.data import load_pair


def whole_image(pixels: np.ndarray) -> np.ndarray:
    """Baseline: every pixel is the object."""
    return np.ones(pixels.shape[:2], dtype=bool)


def centred_ellipse(pixels: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Baseline: the ellipse inscribed in the centred box leaving ``margin`` of each side."""
    h, w = pixels.shape[:2]
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    r = 0.5 - margin
    return (y[:, None] / r) ** 2 + (x[None, :] / r) ** 2 <= 1.0


def score(segment: Callable[[np.ndarray], np.ndarray], data: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """IoU statistics and speed of one segmenter over ``data`` = [(pixels, truth)]."""
    warm_up(lambda: segment(data[0][0]))  # lazy initialisation, allocator, oneDNN primitives
    ious, engine_ious, fallback = [], [], 0
    clock = Stopwatch()
    for pixels, truth in data:
        with clock:
            mask = segment(pixels)
        if mask.shape != truth.shape or mask.dtype != bool:
            raise ValueError(f"segmenter returned {mask.dtype} {mask.shape} for an image of {truth.shape}")
        ious.append(iou(mask, truth))
        usable = check_mask(mask).usable
        fallback += not usable
        engine_ious.append(ious[-1] if usable else iou(np.ones_like(truth), truth))
    return {
        "mean_iou": round(float(np.mean(ious)), 4),
        "median_iou": round(float(np.median(ious)), 4),
        "min_iou": round(float(np.min(ious)), 4),
        "fallback": fallback,
        "mean_iou_engine": round(float(np.mean(engine_ious)), 4),
        "img_per_s": rate(len(data), max(clock.seconds, 1e-9), 2),
        "seconds": round(clock.seconds, 2),
    }


def main() -> None:
    ap = BenchParser(__doc__, threads=1, threads_for=("torch", "opencv"))
    ap.add_argument(
        "--segmenter",
        action="append",
        default=[],
        metavar="SPEC",
        help="a segmenter spec to add to the comparison (repeatable), e.g. unet:seg.pt",
    )
    ap.add_argument("--only", action="store_true", help="score only the --segmenter specs (and the baselines)")
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--limit", type=int, help="score only the first N photos of the split (a quick look)")
    ap.add_argument("--out", help="JSON file name in benchmarks/results/ (default seg_weizmann[_train].json)")
    args = ap.parse_args()
    train, test = weizmann_split()
    pairs = (test if args.split == "test" else train)[: args.limit]
    data = [load_pair(p) for p in pairs]

    build_segmenter("grabcut")  # imports every built-in segmenter module, so the registry is complete
    specs = list(dict.fromkeys(([] if args.only else SEGMENTERS.names()) + args.segmenter))
    results: dict[str, dict] = {
        "baseline_whole": score(whole_image, data),
        "baseline_ellipse": score(centred_ellipse, data),
    }
    skipped: dict[str, str] = {}
    load_before = loadavg()
    for spec in specs:
        try:
            segmenter = build_segmenter(spec)
        except Exception as exc:  # noqa: BLE001  (a missing checkpoint or weights, a bad option: record why and go on)
            skipped[spec] = f"{exc.__class__.__name__}: {exc}"
            continue
        results[spec] = score(segmenter, data)
    write_json(
        args.out or f"seg_weizmann{'' if args.split == 'test' else '_' + args.split}.json",
        {
            "dataset": "Weizmann Horse Database (Borenstein & Ullman, ECCV 2002)",
            "split": args.split,
            "images": len(data),
            "results": dict(sorted(results.items(), key=lambda kv: -kv[1]["mean_iou"])),
            "skipped": skipped,
            "load_avg_1min": [load_before, loadavg()],
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
