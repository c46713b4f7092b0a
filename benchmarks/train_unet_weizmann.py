"""Train the U-Net segmenter on the Weizmann horses' fixed training split (never on the 82 test photos).

Protocol: ``segmentation.data.split_pairs`` holds out every 4th photo (by sorted name) for testing: 246 training
and 82 test photos. Of the 246, a seeded 20% (``split_validation``) validates each epoch; the best checkpoint on
validation IoU is kept. Score it afterwards on the test photos with ``benchmarks/bench_seg_weizmann.py``:

    python -m benchmarks.train_unet_weizmann [--epochs 18] [--image-size 176] [--out benchmarks/results/unet_horses.pt]
    python -m benchmarks.bench_seg_weizmann --segmenter unet:benchmarks/results/unet_horses.pt

Measured (2-core CPU, one thread, a shared machine): 18 epochs at 176 px in 892 s, validation IoU 0.855, test IoU 0.875.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.common import RESULTS, BenchParser, machine, write_json
from benchmarks.shared_data import weizmann_split
from benchmarks.timing import Stopwatch
from segmentation.training import SegTrainConfig, SegTrainer, split_validation


def main() -> None:
    ap = BenchParser(__doc__, threads=1)  # 1 thread is fastest on a busy 2-core machine
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--image-size", type=int, default=176)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "unet_horses.pt")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train_all, test = weizmann_split()
    cfg = SegTrainConfig(
        epochs=args.epochs, batch_size=8, lr=1e-3, image_size=args.image_size, seed=0, device=args.device
    )
    train, val = split_validation(train_all, cfg.val_fraction, cfg.seed)
    assert not {p.image for p in train + val} & {p.image for p in test}
    with Stopwatch() as training:
        result = SegTrainer(cfg, args.out).fit(train, val, resume=args.resume)
    write_json(
        "train_unet_weizmann.json",
        {
            "benchmark": "weizmann_unet_training",
            "train": len(train),
            "val": len(val),
            "test_untouched": len(test),
            "config": cfg.to_dict(),
            "best_epoch": result.best_epoch,
            "best_val_iou": result.best_val_iou,
            "seconds": round(training.seconds, 1),
            "checkpoint": str(args.out),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
