"""Training on seen objects, retrieval on unseen ones: COIL-20, before and after training, with baselines.

Protocol: ../shared/data/coil-20/coil-20-proc (Nene, Nayar & Murase 1996, Columbia University). The network
is trained on objects 1-10 (720 images) and evaluated on objects 11-20 (720 images), which it never saw:
leave-one-out within the test objects (each image a query against the other 719; same object = relevant).
Training holds out objects 9 and 10 for validation (the best epoch by their mAP is kept); the test
objects are not looked at until the end. Reported side by side in one run on the same test images:
a colour histogram, a perceptual hash, untrained ImageNet features with plain average pooling, the untrained
default model (GeM), and the trained model. Training time and hardware are recorded.

With ``--swap`` the halves change roles (train on 11-20 with 19-20 for validation, test on 1-10): the
untrained features already reach about 0.999 mAP on objects 11-20, so the swapped direction is the one with
room to show what training does.

    python -m benchmarks.bench_train_coil20 [--loss triplet] [--epochs 5] [--image-size 224] [--swap] [--out coil.pt]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchParser, machine, trained_config, write_json
from benchmarks.shared_data import coil20
from benchmarks.timing import Stopwatch
from indexer.train_data import FolderImages, Subset
from retrieval.baselines import colour_histogram, perceptual_hash
from retrieval.config import ModelConfig
from retrieval.metrics import retrieval_metrics
from retrieval.model import EmbeddingNet
from retrieval.training import TrainConfig, Trainer, embed_all


def main() -> None:
    ap = BenchParser(__doc__)
    ap.add_argument("--loss", default="triplet", choices=["triplet", "contrastive"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, help="where to keep the trained checkpoint (default: a temp file)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--swap", action="store_true", help="train on objects 11-20, test on 1-10")
    ap.add_argument("--queries-per-epoch", type=int, default=400, help="contrastive: mined tuples per epoch")
    ap.add_argument(
        "--whitening",
        choices=["none", "layer", "supervised"],
        default="none",
        help="supervised: also score the trained network with Radenović's whitening learned after training",
    )
    args = ap.parse_args()
    files, obj = coil20()
    images = FolderImages(files, [str(o) for o in obj], args.image_size)
    if args.swap:
        obj = np.where(obj > 10, obj - 10, obj + 10)  # relabel so that the code below reads the same
    train_idx, val_idx, test_idx = (
        np.nonzero(obj <= 8)[0],
        np.nonzero((obj > 8) & (obj <= 10))[0],
        np.nonzero(obj > 10)[0],
    )
    test = Subset(images, test_idx)
    device = torch.device("cpu") if args.device == "cpu" else None
    results: dict[str, dict] = {}

    def score(name: str, vectors: np.ndarray) -> None:
        m = retrieval_metrics(vectors, test.labels)
        results[name] = {k: round(v, 4) for k, v in m.items()}
        print(f"{name:32s} mAP {m['mAP']:.4f}  R@1 {m['recall@1']:.4f}", flush=True)

    score("colour_histogram", np.stack([colour_histogram(test.load(i)) for i in range(len(test))]))
    score("perceptual_hash", np.stack([perceptual_hash(test.load(i)) for i in range(len(test))]))
    base = ModelConfig(image_size=args.image_size)
    for name, cfg in [
        ("imagenet_average_pooling", ModelConfig(image_size=args.image_size, pooling="spoc")),
        ("imagenet_gem_untrained", base),
    ]:
        net = EmbeddingNet(cfg)
        score(name, embed_all(net, test, args.image_size, device or torch.device("cpu")))
    out = args.out or Path(tempfile.mkdtemp()) / "coil20.pt"
    tcfg = TrainConfig(
        loss=args.loss,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        queries_per_epoch=args.queries_per_epoch,
        negatives_per_query=5,
        whitening=args.whitening,
    )
    with Stopwatch() as training:
        result = Trainer(base, tcfg, out, on_epoch=lambda r: print(r, flush=True)).fit(
            Subset(images, train_idx), Subset(images, val_idx)
        )
    trained = EmbeddingNet(trained_config(out))
    if args.whitening == "supervised":
        score(f"trained_{args.loss}", embed_all(trained, test, args.image_size, torch.device("cpu"), whiten=False))
        score(
            f"trained_{args.loss}_supervised_whitening", embed_all(trained, test, args.image_size, torch.device("cpu"))
        )
    else:
        score(
            f"trained_{args.loss}" + ("" if args.whitening == "none" else f"_{args.whitening}_whitening"),
            embed_all(trained, test, args.image_size, torch.device("cpu")),
        )
    suffix = ("_swap" if args.swap else "") + ("" if args.whitening == "none" else f"_{args.whitening}")
    write_json(
        f"train_coil20_{args.loss}{suffix}.json",
        {
            "benchmark": "coil20_train_seen_test_unseen",
            "train_objects": "11-18 (+19-20 validation)" if args.swap else "1-8 (+9-10 validation)",
            "test_objects": "1-10" if args.swap else "11-20",
            "test_images": len(test),
            "image_size": args.image_size,
            "train_config": tcfg.to_dict(),
            "best_epoch": result.best_epoch,
            "validation_map_before": result.initial_val_map,
            "validation_map_best": result.best_val_map,
            "train_seconds": round(training.seconds, 1),
            "checkpoint": str(out),
            "history": [vars(h) for h in result.history],
            "results": results,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
