"""Does masking make queries match objects rather than backgrounds? mAP with and without masks, in one run.

Protocol: the cluttered composites of ``benchmarks/composites.py`` (COIL-20 objects pasted onto shared real
backgrounds; a query's true matches are in other poses on other backgrounds, while 16 distractors share its
exact background). Queries (``images/queries``) are searched against the database (``images/database``),
relevance = same object; mAP and recall@1 through the engine's own embedding path
(:func:`indexer.evaluate.evaluate_folder`, i.e. ``lookalike eval DB --queries Q --mask SEG --mask-apply A``),
default model (Lite0 + GeM, 224 px). Rows:

- ``whole``: no mask;
- for each segmenter (``grabcut``, and ``unet:CHECKPOINT`` when given) and each way of applying the mask
  (``pool``: inside GeM; ``pixels``: background set to the mean colour; ``both``);
- ``truth``: the true masks (an upper bound for any segmenter), applied the same three ways.

Also per segmenter: mean IoU against the true masks on all composites, and images/s of the whole embedding
pass (decode + segment + embed; the first apply mode's pass, with segmentation) against ``whole``'s.

    python -m benchmarks.composites benchmarks/results/composites     # build the set first (seconds)
    python -m benchmarks.bench_masked_retrieval [--composites DIR] [--segmenter unet:CKPT ...]
    python -m benchmarks.bench_masked_retrieval --speed-only 160 --segmenter grabcut --segmenter unet:CKPT
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.composites import image_mask_files, set_folders
from benchmarks.timing import Stopwatch, interleaved, rate, warm_up
from indexer.evaluate import embed_paths, evaluate_folder
from indexer.imageio import load_image
from indexer.masking import MASK_APPLY, Masker, MaskSettings
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder
from segmentation import build_segmenter, iou
from segmentation.data import load_mask


def pixel_key(pixels: np.ndarray) -> str:
    """Identifies an image by its pixels."""
    return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()


class Cached:
    """Runs a segmenter once per distinct image (keyed by its pixels), so the apply modes share one pass."""

    def __init__(self, segmenter, spec: str) -> None:
        self.segmenter, self.spec = segmenter, spec
        self.masks: dict[str, np.ndarray] = {}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        key = pixel_key(pixels)
        if key not in self.masks:
            self.masks[key] = self.segmenter(pixels)
        return self.masks[key]


class TrueMasks:
    """The composites' true masks, found by the pixels of the (resized) image they belong to."""

    spec = "truth"

    def __init__(self, root: Path, max_side: int) -> None:
        self.by_key: dict[str, np.ndarray] = {}
        for image, mask in image_mask_files(root):
            pixels = load_image(image, max_side).pixels  # exactly what the pipeline hands the segmenter
            self.by_key[pixel_key(pixels)] = load_mask(mask, (pixels.shape[1], pixels.shape[0]))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.by_key[pixel_key(pixels)]


def mean_iou(segmenter, root: Path) -> float:
    scores = []
    for image, mask in image_mask_files(root):
        pixels = load_image(image, None).pixels
        truth = load_mask(mask, (pixels.shape[1], pixels.shape[0]))
        scores.append(iou(np.asarray(segmenter(pixels), bool), truth))
    return float(np.mean(scores))


def speed_only(db: Path, embedder: Embedder, runtime: RuntimeOptions, specs: list[str], n: int) -> None:
    """Images/s of the embedding pipeline (decode + segment + embed) on the same ``n`` images, whole vs each
    segmenter, interleaved over 3 rounds (median), so that a drifting machine affects all alike."""
    paths = sorted(str(p) for p in db.rglob("*.jpg"))[:n]
    maskers: dict[str, Masker | None] = {"whole": None}
    maskers.update({spec: Masker(MaskSettings(segmenter=spec)) for spec in specs})

    def images_per_second(masker: Masker | None, paths: list[str] = paths) -> float:
        return embed_paths(paths, embedder, runtime.batch_size, runtime.workers, masker)[3]

    warm_up(lambda: images_per_second(None, paths[:8]))
    rates = interleaved({name: partial(images_per_second, masker) for name, masker in maskers.items()}, 3)
    medians = {name: round(float(np.median(r)), 2) for name, r in rates.items()}
    write_json(
        "masked_indexing_speed.json",
        {
            "benchmark": "indexing_speed_with_masks",
            "images": len(paths),
            "images_per_second_median": medians,
            "ratio_to_whole": {k: round(v / medians["whole"], 3) for k, v in medians.items()},
            "rounds": rates,
            "machine": machine(),
        },
    )


def main() -> None:
    ap = BenchParser(__doc__, threads=2)
    ap.add_argument("--composites", type=Path, default=RESULTS / "composites")
    ap.add_argument("--segmenter", action="append", default=None, help="segmenter spec (repeatable; default grabcut)")
    ap.add_argument("--apply", action="append", choices=MASK_APPLY, default=None)
    ap.add_argument(
        "--speed-only",
        type=int,
        metavar="N",
        default=0,
        help="only time indexing of N database images: whole vs each segmenter, 3 interleaved rounds",
    )
    args = ap.parse_args()
    root = args.composites
    db, queries = set_folders(root)
    model = ModelConfig()
    runtime = RuntimeOptions(device="cpu", workers=2)
    embedder = Embedder(model, runtime)
    rows: dict[str, dict] = {}

    def run(name: str, masker: Masker | None) -> float:
        with Stopwatch() as clock:
            rep = evaluate_folder(
                db, embedder, queries=queries, batch_size=runtime.batch_size, workers=runtime.workers, masker=masker
            )
        rows[name] = {
            "mAP": round(rep.metrics["mAP"], 4),
            "recall@1": round(rep.metrics["recall@1"], 4),
            "images_per_second": rate(rep.images, clock.seconds, 1),
        }
        print(name, rows[name], flush=True)
        return rep.metrics["mAP"]

    if args.speed_only:
        speed_only(db, embedder, runtime, args.segmenter or ["grabcut"], args.speed_only)
        return
    run("whole", None)
    applies = args.apply or list(MASK_APPLY)
    ious: dict[str, float] = {}
    for spec in args.segmenter or ["grabcut"]:
        cached = Cached(build_segmenter(spec), spec)
        for i, apply in enumerate(applies):
            run(f"{spec}/{apply}", Masker(MaskSettings(segmenter=spec, apply=apply), segmenter=cached))
            if i:
                rows[f"{spec}/{apply}"].pop("images_per_second")  # masks came from the cache
        ious[spec] = round(mean_iou(build_segmenter(spec), root), 4)
        print(spec, "IoU", ious[spec], flush=True)
    truth = TrueMasks(root, model.image_size)
    for apply in applies:
        run(f"truth/{apply}", Masker(MaskSettings(segmenter="truth", apply=apply), segmenter=truth))
        rows[f"truth/{apply}"].pop("images_per_second")
    write_json(
        "masked_retrieval.json",
        {
            "benchmark": "composites_query_vs_database",
            "composites": str(root),
            "model": model.to_dict(),
            "results": rows,
            "segmenter_iou_on_composites": ious,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
