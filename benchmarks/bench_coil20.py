"""COIL-20 leave-one-out retrieval with the engine's own embedding pipeline.

Protocol: all 1,440 images of ../shared/data/coil-20/coil-20-proc (20 objects x 72 poses, 128x128 grey PNG,
Nene, Nayar & Murase 1996, Columbia University). Each image is a query against the other 1,439; an image of
the same object is relevant. Vectors come from ``indexer.pipeline.embed_files`` (the path ``lookalike index``
uses: decoding workers, resize of the longest side to ``image_size``, the network, pooling, L2). "whiten"
rows apply the PCA-whitening the engine learns from the collection itself (``--whiten``), learned here on the
1,440 vectors as the engine would, with the engine's default shrinkage ("plain": none). Output: mAP, recall@1/5/10, precision@10, images/s per configuration.

    python -m benchmarks.bench_coil20                  # the default model and the variants below
    python -m benchmarks.bench_coil20 --only default   # just the shipped default
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import BenchParser, machine, write_json
from benchmarks.shared_data import coil20
from indexer.engine import WhiteningSettings
from indexer.evaluate import embed_paths
from retrieval.config import ModelConfig, RuntimeOptions
from retrieval.metrics import retrieval_metrics
from retrieval.model import Embedder
from retrieval.whitening import learn_pca_whitening

MS = (1.0, 0.7071, 0.5)
DEFAULT_SHRINK = WhiteningSettings().shrinkage
CONFIGS: dict[str, tuple[ModelConfig, int | None, float]] = {
    # name: (model config, whitening dim or None, whitening shrinkage)
    "default": (ModelConfig(), None, 0.0),
    "mac": (ModelConfig(pooling="mac"), None, 0.0),
    "spoc": (ModelConfig(pooling="spoc"), None, 0.0),
    "rmac": (ModelConfig(pooling="rmac"), None, 0.0),
    "gem_multiscale": (ModelConfig(scales=MS), None, 0.0),
    "gem_plain_whiten256": (ModelConfig(), 256, 0.0),
    "gem_whiten256": (ModelConfig(), 256, DEFAULT_SHRINK),
    "gem_whiten512": (ModelConfig(), 512, DEFAULT_SHRINK),
    "rmac_whiten256": (ModelConfig(pooling="rmac"), 256, DEFAULT_SHRINK),
    "gem_multiscale_whiten256": (ModelConfig(scales=MS), 256, DEFAULT_SHRINK),
}


def main() -> None:
    ap = BenchParser(__doc__, workers=2, precision=True)
    ap.add_argument("--only", nargs="*", help=f"configurations to run (default all): {', '.join(CONFIGS)}")
    args = ap.parse_args()
    files, labels = coil20()
    runtime = RuntimeOptions(device="cpu", workers=args.workers, precision=args.precision)
    cache: dict[ModelConfig, tuple[np.ndarray, float]] = {}
    results = {}
    for name in args.only or list(CONFIGS):
        model, wdim, shrink = CONFIGS[name]
        if model not in cache:
            vecs, _, skipped, speed = embed_paths(files, Embedder(model, runtime), runtime.batch_size, runtime.workers)
            assert not skipped, skipped
            cache[model] = (vecs, speed)
        vecs, speed = cache[model]
        if wdim:
            vecs = learn_pca_whitening(vecs, wdim, shrinkage=shrink).apply(vecs)
        m = retrieval_metrics(vecs, labels)
        results[name] = {
            "model": model.to_dict(),
            "whiten_dim": wdim,
            "whiten_shrinkage": shrink if wdim else None,
            "images_per_s": round(speed, 1),
            **{k: round(v, 4) for k, v in m.items()},
        }
        print(f"{name:28s} mAP {m['mAP']:.4f}  R@1 {m['recall@1']:.4f}  {speed:.1f} img/s", flush=True)
    write_json(
        "coil20.json",
        {
            "benchmark": "coil20_leave_one_out",
            "images": len(files),
            "precision": args.precision,
            "machine": machine(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
