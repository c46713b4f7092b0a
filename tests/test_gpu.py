"""The GPU paths: what is chosen for a device (checked everywhere, as pure functions) and the paths themselves on
CUDA (``needs_cuda``: skipped, saying why, without a GPU; `python -m pytest -m needs_cuda` runs them all)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from indexer.cli import main
from indexer.pipeline import batch_and_workers, embed_files
from retrieval.config import ModelConfig, RuntimeOptions, device_plan
from retrieval.model import Embedder, to_device

from .conftest import draw_image, make_folder, needs_cuda

# --------------------------------------------------------------------------------------------- chosen per device


def test_unset_batch_and_workers_are_chosen_for_the_device():
    cpu = device_plan("cpu", RuntimeOptions(), cpu_count=16)
    gpu = device_plan("cuda", RuntimeOptions(), cpu_count=16)
    assert (cpu.batch_size, cpu.workers) == (32, 2)
    assert (gpu.batch_size, gpu.workers) == (128, 16)  # a GPU is fed by many decoding threads
    assert gpu.pin_memory and gpu.non_blocking and not cpu.pin_memory and not cpu.non_blocking
    assert device_plan("cuda", RuntimeOptions(), cpu_count=4).workers == 4  # never more threads than cores
    assert device_plan("cuda", RuntimeOptions(), cpu_count=1).workers == 2


def test_given_batch_workers_and_precision_are_kept_on_every_device():
    asked = RuntimeOptions(batch_size=8, workers=0, precision="bf16")
    for device_type in ("cpu", "cuda", "mps"):
        plan = device_plan(device_type, asked, cpu_count=16)
        assert (plan.batch_size, plan.workers, plan.precision) == (8, 0, "bf16")
        assert plan.autocast_dtype == "bfloat16"
    assert device_plan("cuda", RuntimeOptions(precision="fp16")).autocast_dtype == "float16"
    assert device_plan("cpu", RuntimeOptions()).autocast_dtype is None


def test_fp16_on_the_cpu_is_refused_with_what_to_use_instead():
    with pytest.raises(ValueError, match="fp16 runs on a GPU only; on the CPU use --precision bf16 or fp32"):
        device_plan("cpu", RuntimeOptions(precision="fp16"))
    with pytest.raises(ValueError, match="fp16 runs on a GPU only"):
        Embedder(ModelConfig(image_size=64), RuntimeOptions(device="cpu", precision="fp16"))


def test_the_pipeline_takes_unset_sizes_from_the_embedders_device_plan():
    class OnGpu:
        plan = device_plan("cuda", RuntimeOptions(), cpu_count=8)

    assert batch_and_workers(OnGpu(), None, None) == (128, 8)
    assert batch_and_workers(OnGpu(), 16, 1) == (16, 1)
    assert batch_and_workers(object(), None, None) == (32, 2)  # a test double without a plan: the CPU defaults


def test_batches_are_stacked_as_numpy_stacks_them_and_embedded_the_same_on_the_cpu(one_thread):
    embedder = Embedder(ModelConfig(image_size=64), RuntimeOptions(device="cpu"))
    images = [np.asarray(draw_image(seed, (64, 48))) for seed in range(3)]
    stacked = embedder.stack_batch(images)
    np.testing.assert_array_equal(stacked, np.stack(images))
    assert not torch.from_numpy(stacked).is_pinned()  # pinning is for CUDA copies only
    t = torch.zeros(2)
    assert to_device(t, torch.device("cpu")) is t


def test_index_says_which_device_embedded(tmp_path):
    make_folder(tmp_path / "photos", 3)
    res = CliRunner().invoke(
        main,
        ["--home", str(tmp_path / "home"), "--device", "cpu", "--workers", "0"]
        + ["index", str(tmp_path / "photos"), "--image-size", "64"],
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"images/s on cpu \(fp32, batch 32, 0 decoding threads\)", res.output), res.output


def test_models_lists_the_devices_and_what_auto_picks():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    assert "devices:" in res.output and "--device auto:" in res.output and "search:" in res.output


# --------------------------------------------------------------------------------------------- on a CUDA GPU


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@needs_cuda
def test_torch_search_on_cuda_matches_faiss_flat_search():
    from indexer.torch_search import TorchFlatIndex
    from indexer.vector_index import IndexConfig, VectorIndex, brute_force_search

    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((20_000, 256)))
    ids = rng.choice(10**9, 20_000, replace=False).astype(np.int64)
    queries = unit(vectors[:50] + 0.3 * rng.standard_normal((50, 256)))
    reference = VectorIndex.build(ids, vectors, IndexConfig(kind="flat", device="cpu"))
    rs, ri = reference.search(queries, 10)
    s, i = TorchFlatIndex.build(ids, vectors, device="cuda", dtype="fp32").search(queries, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    s, i = TorchFlatIndex.build(ids, vectors, device="cuda", dtype="fp16").search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ri)]) >= 0.99
    assert np.abs(s - rs).max() < 3e-3
    auto = VectorIndex.build(ids, vectors, IndexConfig(kind="hnsw", device="auto"))
    assert auto.search_backend in ("faiss-gpu", "torch-cuda")
    _, i = auto.search(queries, 10)
    truth = brute_force_search(vectors, ids, queries, 10)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, truth)]) >= 0.99


@needs_cuda
@pytest.mark.parametrize(("precision", "cosine"), [("fp32", 0.999), ("fp16", 0.999), ("bf16", 0.98)])
def test_embedding_on_cuda_gives_the_cpu_vectors(precision, cosine):
    """fp32 on the GPU (TF32 convolutions allowed) and fp16 autocast keep cosine >= 0.999 to the CPU's fp32
    vectors; bf16 keeps 8 mantissa bits, and measured 0.992-0.999 on CPUs (test_backbones), hence 0.98."""
    images = np.stack([np.asarray(draw_image(seed, (96, 96))) for seed in range(6)])
    cfg = ModelConfig(image_size=96)
    reference = Embedder(cfg, RuntimeOptions(device="cpu")).embed_batch(images)
    gpu = Embedder(cfg, RuntimeOptions(device="cuda", precision=precision))
    assert gpu.plan.pin_memory and gpu.plan.batch_size == 128
    vectors = gpu.embed_batch(gpu.stack_batch(list(images)))
    assert vectors.dtype == np.float32
    assert (vectors * reference).sum(axis=1).min() >= cosine


@needs_cuda
def test_embed_files_on_cuda_uses_the_gpu_plan(tmp_path):
    paths = [str(p) for p in make_folder(tmp_path, 10)]
    gpu = Embedder(ModelConfig(image_size=64), RuntimeOptions(device="auto"))
    assert gpu.device.type == "cuda" and "cuda:" in gpu.describe_device()
    out = sorted(embed_files(paths, gpu), key=lambda e: e.index)
    cpu = Embedder(ModelConfig(image_size=64), RuntimeOptions(device="cpu"))
    ref = sorted(embed_files(paths, cpu, workers=0), key=lambda e: e.index)
    assert all(e.error is None for e in out)
    assert min(float(a.vector @ b.vector) for a, b in zip(out, ref)) >= 0.999


@needs_cuda
def test_training_runs_on_cuda_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    import dataclasses

    from retrieval.model import EmbeddingNet
    from retrieval.training import Trainer

    from .test_training import SIZE, Synthetic, quick

    out = tmp_path / "net.pt"
    result = Trainer(ModelConfig(image_size=SIZE), dataclasses.replace(quick(), device="cuda"), out).fit(
        Synthetic(range(4)), Synthetic(range(4, 6))
    )
    assert result.history[0].loss > 0 and np.isfinite(result.history[0].loss)
    net = EmbeddingNet(ModelConfig(image_size=SIZE, weights=str(out)))
    assert next(net.parameters()).device.type == "cpu"


@needs_cuda
def test_segmentation_training_and_masks_run_on_cuda(tmp_path):
    from segmentation.training import SegTrainer
    from segmentation.unet import UNetSegmenter

    from .test_segmentation_unet import fast_config, pairs_in_memory

    out = tmp_path / "seg.pt"
    result = SegTrainer(fast_config(epochs=1, device="cuda"), out).fit(pairs_in_memory(8), pairs_in_memory(2, 50))
    assert np.isfinite(result.history[0].loss)
    segmenter = UNetSegmenter(out, device="cuda")
    assert next(segmenter.net.parameters()).device.type == "cuda"
    mask = segmenter(np.asarray(draw_image(3, (72, 56))))
    assert mask.shape == (56, 72) and mask.dtype == bool


@needs_cuda
def test_index_with_device_auto_embeds_on_the_gpu(tmp_path):
    make_folder(tmp_path / "photos", 6)
    res = CliRunner().invoke(
        main, ["--home", str(tmp_path / "home"), "index", str(tmp_path / "photos"), "--image-size", "64"]
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"images/s on cuda:\d", res.output), res.output
