"""Train the default ``foreground`` segmenter on copy-paste composites and write the packaged fp16 checkpoint.

Protocol (nothing of the evaluation sets is seen in training; ``benchmarks/bench_default_segmenter.py`` scores it):

- Objects: COIL-20 objects ``--objects`` (default 1-10; objects 11-20 are the benchmark's unseen objects), all
  72 poses, cut from their black background (``segmentation.composites.coil_object_mask``); and the horses of
  the Weizmann training split (``segmentation.data.split_pairs``: the 246 photos that are not the 82 test ones),
  cut out by their masks.
- Backgrounds: the same Weizmann training photos (the horse kept as a distractor half the time, otherwise cropped
  away and inpainted) and LFW photos (a person: always a distractor) of every 8th person by name from the first
  (``people[0::8]``; the benchmark draws from ``people[1::8]``), first photo each, at most ``--lfw`` of them.
- Validation (keeps the best epoch): a fixed draw of composites over a seeded 20% of the Weizmann training photos
  (held out of the training backgrounds and horses) and ``people[4::8]``, same objects.
- Training: :class:`segmentation.training.SegTrainer` (the ``lookalike train-seg`` trainer: Dice + BCE, AdamW,
  cosine decay, best/last checkpoints every epoch), U-Net with the ImageNet EfficientNet-Lite0 encoder, ``--epochs``
  epochs of ``--per-epoch`` composites drawn afresh each epoch (:class:`segmentation.composites.CompositeSet`).
- Export: the best checkpoint halved to fp16 (``segmentation.foreground.export_fp16``) at ``--export`` (default:
  the packaged ``segmentation/weights/foreground_lite0.pt``).

    python -m benchmarks.train_default_segmenter                  # ~20-40 min on 2 shared CPU cores
    python -m benchmarks.train_default_segmenter --resume         # after an interruption
    python -m benchmarks.train_default_segmenter --export-only    # re-export the best checkpoint

Measured (2026-11-30, 2-core CPU shared with other jobs, load 5-11, one thread): 12 epochs x 1,000 composites at
160 px in 2,471 s, validation IoU 0.857 at the last epoch; the fp16 export is 8.5 MB.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.common import RESULTS, BenchParser, machine, require_dataset, write_json
from benchmarks.shared_data import COIL20, LFW, WEIZMANN
from benchmarks.timing import Stopwatch
from segmentation.composites import (
    CompositeConfig,
    CompositeSet,
    coil_cutouts,
    photo_backgrounds,
    photo_cutouts,
    plain_backgrounds,
)
from segmentation.data import find_pairs, split_pairs
from segmentation.foreground import PACKAGED_WEIGHTS, export_fp16
from segmentation.training import SegTrainConfig, SegTrainer, split_validation

log = logging.getLogger(__name__)


def lfw_people(part: slice, limit: int) -> list[Path]:
    """The first photo of the LFW people ``sorted(names)[part]``, at most ``limit``."""
    people = sorted(p for p in require_dataset(LFW).iterdir() if p.is_dir())[part]
    return [min(p.glob("*.jpg")) for p in people[:limit]]


def build_sets(objects: tuple[int, ...], per_epoch: int, val_size: int, lfw: int, size: int, seed: int):
    """-> (training CompositeSet, validation CompositeSet, a description of the sources)."""
    horses = find_pairs(require_dataset(WEIZMANN))
    train_photos, test_photos = split_pairs(horses)
    fit_photos, val_photos = split_validation(train_photos, 0.2, seed)
    grey = coil_cutouts(require_dataset(COIL20), objects)
    config = CompositeConfig(size=size)
    train = CompositeSet(
        grey,
        photo_backgrounds(fit_photos) + plain_backgrounds(lfw_people(slice(0, None, 8), lfw)),
        per_epoch,
        config,
        seed,
        colour_cutouts=photo_cutouts(fit_photos),
    )
    val = CompositeSet(
        grey,
        photo_backgrounds(val_photos) + plain_backgrounds(lfw_people(slice(4, None, 8), max(1, lfw // 5))),
        val_size,
        config,
        seed + 1,
        colour_cutouts=photo_cutouts(val_photos),
    )
    assert not {p.image for p in train_photos} & {p.image for p in test_photos}
    sources = {
        "coil_objects": list(objects),
        "coil_cutouts": len(grey),
        "horse_photos_train": len(fit_photos),
        "horse_photos_val": len(val_photos),
        "horse_photos_test_untouched": len(test_photos),
        "lfw_backgrounds_train": len(train.backgrounds) - len(fit_photos),
        "composite_config": config.__dict__,
    }
    return train, val, sources


def main() -> None:
    ap = BenchParser(__doc__, threads=1, seed=0)  # 1 thread: the machine is shared
    ap.add_argument("--objects", default="1-10", help="COIL-20 objects to train on (e.g. 1-10 or 11-20)")
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--per-epoch", type=int, default=1000, help="composites drawn per epoch")
    ap.add_argument("--val-size", type=int, default=80)
    ap.add_argument("--lfw", type=int, default=200, help="LFW background photos at most")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "foreground_lite0.pt", help="full-precision checkpoint")
    ap.add_argument("--export", type=Path, default=PACKAGED_WEIGHTS, help="where the fp16 checkpoint goes")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lo, _, hi = args.objects.partition("-")
    objects = tuple(range(int(lo), int(hi or lo) + 1))
    cfg = SegTrainConfig(
        epochs=args.epochs,
        batch_size=8,
        lr=1e-3,
        image_size=args.image_size,
        crop_scale=(0.6, 1.0),
        color_jitter=0.2,
        seed=args.seed,
        device=args.device,
    )
    result = None
    sources: dict = {}
    with Stopwatch() as training:
        if not args.export_only:
            train, val, sources = build_sets(
                objects, args.per_epoch, args.val_size, args.lfw, args.image_size, args.seed
            )
            result = SegTrainer(
                cfg,
                args.out,
                on_epoch=lambda r: log.info("epoch %d: loss %.4f, val IoU %.4f", r.epoch, r.loss, r.val_iou),
            ).fit(train, val, resume=args.resume)
    size = export_fp16(args.out, args.export)
    write_json(
        "train_default_segmenter.json",
        {
            "benchmark": "default_segmenter_training",
            "sources": sources,
            "config": cfg.to_dict(),
            "per_epoch": args.per_epoch,
            "best_epoch": result.best_epoch if result else None,
            "best_val_iou": result.best_val_iou if result else None,
            "history": [r.__dict__ for r in result.history] if result else None,
            "seconds": round(training.seconds, 1),
            "checkpoint": str(args.out),
            "exported": str(args.export),
            "exported_bytes": size,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
