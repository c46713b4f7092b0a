"""LFW face verification before and after training, on people the trained network has not seen.

Protocol: ../shared/data/lfw (LFW deep-funneled, Huang et al. 2007 / Huang, Mattar, Lee & Learned-Miller 2012)
and its View 2 pairs.txt (10 folds, disjoint in people). Half A = folds 1-5, half B = folds 6-10. The network
is trained on every image of the people who appear in half A's pairs (people with at least two images; a
fifth of them held out for validation) and scored on half B's 3,000 pairs; ``--halves BA`` swaps the halves
and ``--halves both`` runs both. Scoring is the LFW protocol on each scored half: cosine similarity of
whole-image vectors (no face detection or alignment here), each fold's threshold chosen on the other folds
of that half. The untrained
ImageNet model and the published anchors are reported beside it: FaceNet 99.63%, dlib 99.38% (all 10 folds).

    python -m benchmarks.bench_train_lfw [--epochs 2] [--image-size 160] [--halves AB|BA|both]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, BenchParser, machine, trained_config, write_json
from benchmarks.shared_data import LFW_HALVES, in_folds, lfw_pairs, pair_paths, people_images
from benchmarks.timing import Stopwatch
from indexer.evaluate import score_pairs
from indexer.train_data import FolderImages, Subset, split_classes
from retrieval.config import ModelConfig
from retrieval.model import EmbeddingNet
from retrieval.training import TrainConfig, Trainer, embed_all

ANCHORS = {"FaceNet (published, 10 folds)": 0.9963, "dlib ResNet (published, 10 folds)": 0.9938}


def score_half(net: EmbeddingNet, pairs: list, size: int, whiten: bool = True) -> dict:
    paths = pair_paths(pairs)
    images = FolderImages(paths, paths, size)
    vecs = embed_all(net, images, size, torch.device("cpu"), whiten=whiten)
    m, n = score_pairs(pairs, dict(zip(images.paths, vecs)))
    return {
        "accuracy": round(float(m["accuracy"]), 4),
        "accuracy_std": round(float(m["accuracy_std"]), 4),
        "auc": round(float(m["auc"]), 4),
        "tar@far=1e-2": round(float(m["tar@far=1e-2"]), 4),
        "pairs": n,
    }


def main() -> None:
    ap = BenchParser(__doc__, lfw_data=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--loss", default="triplet", choices=["triplet", "contrastive"])
    ap.add_argument("--strategy", default="semihard", choices=["semihard", "hard", "all"])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--whitening",
        choices=["none", "layer", "supervised"],
        default="none",
        help="supervised: also score with Radenović's whitening learned from training pairs after training",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the checkpoints as benchmarks/results/lfw_trained_on_<folds>[_<data>].pt",
    )
    ap.add_argument(
        "--halves",
        choices=["AB", "BA", "both"],
        default="AB",
        help="AB: train on half A, score half B; BA: the reverse; both: one after the other",
    )
    args = ap.parse_args()
    root, _, pairs = lfw_pairs(args.data)
    size = args.image_size
    runs = []
    a, b = LFW_HALVES.values()
    for train_half, test_half in {"AB": [(a, b)], "BA": [(b, a)], "both": [(a, b), (b, a)]}[args.halves]:
        files, labels = people_images(root, in_folds(pairs, train_half))
        test_pairs = in_folds(pairs, test_half)
        images = FolderImages(files, labels, size)
        tr, va = split_classes(images.labels, 0.2, seed=0)
        model = ModelConfig(image_size=size)
        before = score_half(EmbeddingNet(model), test_pairs, size)
        print("untrained", before, flush=True)
        out = Path(tempfile.mkdtemp()) / "lfw.pt"
        if args.keep:
            out = RESULTS / (
                f"lfw_trained_on_{train_half.start + 1}-{train_half.stop}"
                + ("" if args.data is None else f"_{args.data.name}")
                + ".pt"
            )
        cfg = TrainConfig(
            loss=args.loss,
            triplet_strategy=args.strategy,
            epochs=args.epochs,
            lr=args.lr,
            device="cpu",
            color_jitter=0.1,
            whitening=args.whitening,
        )
        with Stopwatch() as training:
            result = Trainer(model, cfg, out, on_epoch=lambda r: print(r, flush=True)).fit(
                Subset(images, tr), Subset(images, va)
            )
        trained = EmbeddingNet(trained_config(out))
        after = score_half(trained, test_pairs, size, whiten=args.whitening != "supervised")
        print("trained", after, flush=True)
        whitened = score_half(trained, test_pairs, size) if args.whitening == "supervised" else None
        if whitened is not None:
            print("trained + supervised whitening", whitened, flush=True)
        runs.append(
            {
                "train_folds": [f + 1 for f in train_half],
                "test_folds": [f + 1 for f in test_half],
                "train_people": len(set(labels)),
                "train_images": len(files),
                "untrained": before,
                "trained": after,
                "trained_supervised_whitening": whitened,
                "train_seconds": round(training.seconds, 1),
                "best_epoch": result.best_epoch,
                "history": [vars(h) for h in result.history],
            }
        )
    tag = ("" if args.data is None else f"_{args.data.name}") + (
        "" if args.whitening == "none" else f"_{args.whitening}"
    )
    write_json(
        f"train_lfw_{args.loss}_{args.halves}{tag}.json",
        {
            "benchmark": "lfw_view2_train_half_test_other_half",
            "image_size": size,
            "train_config": cfg.to_dict(),
            "runs": runs,
            "mean_accuracy_untrained": float(np.mean([r["untrained"]["accuracy"] for r in runs])),
            "mean_accuracy_trained": float(np.mean([r["trained"]["accuracy"] for r in runs])),
            "mean_accuracy_trained_supervised_whitening": (
                float(np.mean([r["trained_supervised_whitening"]["accuracy"] for r in runs]))
                if args.whitening == "supervised"
                else None
            ),
            "anchors": ANCHORS,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
