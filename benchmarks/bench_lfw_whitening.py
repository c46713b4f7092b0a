"""Whitening after training, on LFW faces: Radenović's supervised whitening (by ridge and dimension) and PCA
(by shrinkage) against none, over one trained network.

Protocol: the network trained on the people of folds 1-5 (``bench_train_lfw --halves AB --keep``, or
``--halves both --keep``) embeds the images of those people (the whitening's training set: every image of a
person with at least two, matching pairs drawn up to 50 per person) and the images of the pairs of folds 6-10,
which are scored with the LFW 5-fold protocol (``indexer.evaluate.score_pairs``). Vectors are the network's
pooled descriptors before any whitening layer.

    python -m benchmarks.bench_lfw_whitening --checkpoint benchmarks/results/lfw_trained_on_1-5_lfw-aligned-haar.pt \\
        --data benchmarks/results/lfw-aligned-haar
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchParser, machine, trained_config, write_json
from benchmarks.shared_data import LFW_HALVES, in_folds, lfw_pairs, pair_paths, people_images
from indexer.evaluate import score_pairs
from indexer.train_data import FolderImages
from retrieval.mining import positive_pairs
from retrieval.model import EmbeddingNet
from retrieval.training import WHITENING_PAIRS_PER_CLASS, embed_all
from retrieval.whitening import learn_pca_whitening, learn_supervised_whitening


def main() -> None:
    ap = BenchParser(__doc__, threads=2, lfw_data=True)
    ap.add_argument("--checkpoint", type=Path, required=True, help="a network trained on the people of folds 1-5")
    args = ap.parse_args()
    root, _, pairs = lfw_pairs(args.data)
    config = trained_config(args.checkpoint)
    net = EmbeddingNet(config).eval()
    size, cpu = config.image_size, torch.device("cpu")
    files, labels = people_images(root, in_folds(pairs, LFW_HALVES["folds 1-5"]))
    train = FolderImages(files, labels, size)
    x = embed_all(net, train, size, cpu, whiten=False)
    test_pairs = in_folds(pairs, LFW_HALVES["folds 6-10"])
    test_paths = pair_paths(test_pairs)
    test = FolderImages(test_paths, test_paths, size)
    t = embed_all(net, test, size, cpu, whiten=False)

    def accuracy(vectors: np.ndarray) -> float:
        return round(float(score_pairs(test_pairs, dict(zip(test.paths, vectors)))[0]["accuracy"]), 4)

    results: dict[str, float] = {"none": accuracy(t)}
    matching = positive_pairs(
        np.unique(train.labels, return_inverse=True)[1], rng=0, per_class=WHITENING_PAIRS_PER_CLASS
    )
    for dim in (x.shape[1], 512, 256, 128):
        for ridge in (1e-3, 0.1, 1.0):
            results[f"supervised dim {dim} ridge {ridge:g}"] = accuracy(
                learn_supervised_whitening(x, matching, dim, ridge=ridge).apply(t)
            )
            print(dim, ridge, results[f"supervised dim {dim} ridge {ridge:g}"], flush=True)
    for dim in (512, 256):
        for shrinkage in (0.0, 0.5, 0.95):
            results[f"pca dim {dim} shrinkage {shrinkage:g}"] = accuracy(
                learn_pca_whitening(x, dim, shrinkage=shrinkage).apply(t)
            )
    write_json(
        "lfw_whitening.json",
        {
            "benchmark": "lfw_whitening_after_training",
            "checkpoint": str(args.checkpoint),
            "data": str(root),
            "train_images": len(x),
            "matching_pairs": len(matching),
            "scored_pairs": len(test_pairs),
            "accuracy_folds_6_10": results,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
