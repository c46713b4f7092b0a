"""The default ``foreground`` segmenter on objects and backgrounds it never saw: mask IoU, retrieval mAP, speed.

Protocol (``benchmarks/train_default_segmenter.py`` trains on COIL-20 objects 1-10, the Weizmann training
photos and LFW ``people[0::8]``; nothing below is in it):

- Held-out composites (:mod:`benchmarks.composites`, built once into ``--composites``): COIL-20 objects
  ``--objects`` (default 11-20) pasted onto patches of the 82 *test* Weizmann photos that each hold a good part
  of their horse (10-60% of the patch: a second salient thing the segmenter must leave out), one object per
  image; 5 poses per object (1 query pose on 2 backgrounds, 4 database poses on 3), 14 backgrounds, each
  shared by every object: 20 queries, 120 database images (seeded).
- Mask IoU per segmenter against the true masks on every composite (full 256 px), and on the 82 held-out
  Weizmann photos (their horse is the object there), with masking speed (images/s of the segmenter calls alone,
  one thread; ``bench_seg_weizmann.score``).
- Retrieval: queries vs database through the engine's embedding path (``indexer.evaluate.evaluate_folder``, as
  ``lookalike eval DB --queries Q --mask SEG``; default model, masks applied ``both``): whole image, each
  segmenter, the true masks. ``images_per_second`` of each pass includes decoding and segmentation.

Segmenters: ``grabcut``, ``foreground``, ``foreground:grabcut`` and each ``--segmenter SPEC`` (e.g. the horse-only
U-Net ``unet:benchmarks/results/unet_horses.pt`` from ``benchmarks/train_unet_weizmann.py``). The swap: train on
objects 11-20 (``train_default_segmenter --objects 11-20 --out SWAP.pt --export SWAP16.pt``) and score that
network (``--weights``) on objects 1-10. The machine is shared: the 1-minute load average is recorded next to
the speeds.

    python -m benchmarks.bench_default_segmenter                         # builds the held-out set first
    python -m benchmarks.bench_default_segmenter --objects 1-10 --weights SWAP.pt --out default_segmenter_swap.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from benchmarks.bench_masked_retrieval import TrueMasks
from benchmarks.bench_seg_weizmann import score
from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.composites import CompositeConfig, Manifest, build_composites, image_mask_files, set_folders
from benchmarks.shared_data import weizmann_split
from benchmarks.timing import Stopwatch, loadavg, rate
from indexer.evaluate import evaluate_folder
from indexer.imageio import load_image
from indexer.masking import Masker, MaskSettings
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.model import Embedder
from segmentation import build_segmenter
from segmentation.data import load_mask, load_pair
from segmentation.foreground import ForegroundSegmenter

DEFAULT_SEGMENTERS = ("grabcut", "foreground", "foreground:grabcut")


def heldout_config(objects: tuple[int, ...], seed: int) -> CompositeConfig:
    """The held-out set: ``objects`` on horse-holding patches of the Weizmann test photos (see the docstring)."""
    return CompositeConfig(
        seed=seed,
        objects=objects,
        poses=5,
        query_poses=1,
        backgrounds=14,
        db_backgrounds_per_pose=3,
        query_backgrounds_per_pose=2,
        min_horse=0.10,
        max_horse=0.60,
        photos="test",
    )


def ensure_set(root: Path, objects: tuple[int, ...], seed: int) -> Manifest:
    """The held-out set in ``root``, built first when it is not there (a set built otherwise is refused)."""
    wanted = heldout_config(objects, seed)
    if (root / "manifest.json").exists():
        manifest = Manifest.load(root / "manifest.json")
        if manifest.config != wanted:
            raise SystemExit(f"{root} holds another set ({manifest.config}); pass a new --composites folder")
        return manifest
    return build_composites(root, seed, config=wanted)


def composite_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every composite at full size with its true mask: ``[(pixels (H, W, 3) uint8, truth (H, W) bool)]``."""
    out = []
    for image, mask in image_mask_files(root):
        pixels = load_image(image, None).pixels
        out.append((pixels, load_mask(mask, (pixels.shape[1], pixels.shape[0]))))
    return out


def main() -> None:
    ap = BenchParser(__doc__, threads=1, seed=0, out="default_segmenter.json")
    ap.add_argument("--objects", default="11-20", help="held-out COIL-20 objects, e.g. 11-20")
    ap.add_argument("--composites", type=Path, default=None, help="held-out set folder (built when missing)")
    ap.add_argument("--segmenter", action="append", default=[], help="another segmenter spec (repeatable)")
    ap.add_argument("--no-retrieval", action="store_true", help="mask IoU and speed only")
    ap.add_argument("--no-weizmann", action="store_true", help="skip the 82 held-out Weizmann photos")
    ap.add_argument(
        "--weights", type=Path, default=None, help="score this checkpoint as foreground (default: the packaged one)"
    )
    args = ap.parse_args()
    lo, _, hi = args.objects.partition("-")
    objects = tuple(range(int(lo), int(hi or lo) + 1))
    root = args.composites or RESULTS / f"heldout_composites_{args.objects}"
    manifest = ensure_set(root, objects, args.seed)
    specs = list(DEFAULT_SEGMENTERS) + [s for s in args.segmenter if s not in DEFAULT_SEGMENTERS]
    segmenters = {spec: build_segmenter(spec) for spec in specs}
    if args.weights is not None:  # e.g. the swap: a network trained on the other objects
        segmenters["foreground"] = ForegroundSegmenter(weights=args.weights)
        segmenters["foreground:grabcut"] = ForegroundSegmenter("grabcut", weights=args.weights)

    composites = composite_pairs(root)
    iou_composites = {spec: score(seg, composites) for spec, seg in segmenters.items()}
    load_after_composites = loadavg()
    print("IoU on held-out composites", {k: v["mean_iou"] for k, v in iou_composites.items()}, flush=True)
    iou_weizmann = {}
    if not args.no_weizmann:
        photos = [load_pair(p) for p in weizmann_split()[1]]
        iou_weizmann = {spec: score(seg, photos) for spec, seg in segmenters.items()}
        print("IoU on held-out Weizmann photos", {k: v["mean_iou"] for k, v in iou_weizmann.items()}, flush=True)

    retrieval: dict[str, dict] = {}
    if not args.no_retrieval:
        db, queries = set_folders(root)
        model = ModelConfig()
        runtime = RuntimeOptions(device="cpu", workers=2)
        embedder = Embedder(model, runtime)
        truth = TrueMasks(root, model.image_size)
        rows: dict[str, Masker | None] = {"whole": None}
        rows.update({spec: Masker(MaskSettings(segmenter=spec), segmenter=seg) for spec, seg in segmenters.items()})
        rows["truth"] = Masker(MaskSettings(segmenter="truth"), segmenter=truth)
        for name, masker in rows.items():
            with Stopwatch() as clock:
                rep = evaluate_folder(
                    db, embedder, queries=queries, batch_size=runtime.batch_size, workers=runtime.workers, masker=masker
                )
            retrieval[name] = {
                "mAP": round(rep.metrics["mAP"], 4),
                "recall@1": round(rep.metrics["recall@1"], 4),
                "images_per_second": rate(rep.images, clock.seconds, 1),
                "loadavg": loadavg(),
            }
            print(name, retrieval[name], flush=True)

    write_json(
        args.out,
        {
            "benchmark": "default_segmenter",
            "composites": str(root),
            "foreground_weights": str(args.weights or "packaged"),
            "dataset": {
                **{k: v for k, v in dataclasses.asdict(manifest.config).items() if k != "objects"},
                "objects": list(objects),
                "images": len(manifest.records),
                "queries": sum(r.split == "queries" for r in manifest.records),
                "mean_horse_fraction": round(float(np.mean([b.horse_fraction or 0 for b in manifest.backgrounds])), 4),
            },
            "iou_heldout_composites": iou_composites,
            "iou_weizmann_test": iou_weizmann,
            "retrieval_mask_apply_both": retrieval,
            "loadavg_after_iou": load_after_composites,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
