"""The Ray runner on a real Ray cluster started on this machine: a head node and a worker node (Ray's own
multi-node test cluster, ``ray.cluster_utils.Cluster``), each with one CPU and a small object store.

The model actor needs the custom resource ``lookalike_embedder``, which only the worker node offers, so the
network runs on the worker and killing that node kills the actor. Effects are checked through the API.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.engine import Collection
from indexer.errors import Interrupted, LookalikeError, SettingsError
from indexer.masking import MaskSettings
from indexer.objects import ObjectSettings
from indexer.ray_runner import INSTALL_HINT, RayOptions, plan_actors
from retrieval.config import RuntimeOptions

from .conftest import FAST_RUNTIME, SMALL_MODEL, make_folder

#: Ray Data's own settings object warns about its deprecated fields whenever it is copied: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

EMBEDDER = "lookalike_embedder"  # the custom resource the test actors need: only worker nodes offer it
NODE_ARGS = dict(num_cpus=1, object_store_memory=80 * 2**20)
#: One actor on the worker node; decoding tasks (half a CPU each) on the head.
OPTIONS = RayOptions(actors=1, batch_size=4, cpus_per_actor=1, decode_cpus=0.5, resources={EMBEDDER: 1})


@dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    worker: Any  # the worker node (its handle, to kill it)

    @property
    def address(self) -> str:
        return self.cluster.address

    def replace_worker(self) -> None:
        """Kill the worker node at once (no graceful shutdown) and start a fresh one in its place."""
        self.cluster.remove_node(self.worker, allow_graceful=False)
        self.worker = self.cluster.add_node(**NODE_ARGS, resources={EMBEDDER: 1})


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as exc:
        pytest.skip(f"Ray is not installed ({exc}): {INSTALL_HINT}")
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(**NODE_ARGS, include_dashboard=False))
        worker = cluster.add_node(**NODE_ARGS, resources={EMBEDDER: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # no shared memory, no free ports, a sandbox that forbids it: say what happened
        pytest.skip(f"cannot start a local Ray cluster: {exc.__class__.__name__}: {exc}")
    yield LocalCluster(cluster, worker)
    ray.shutdown()
    cluster.shutdown()


def photo_folder(root: Path, n: int, bad: bool = True) -> Path:
    """``n`` PIL-drawn images (PNG and JPEG) and, with ``bad``, a truncated PNG and a text file named .jpg."""
    make_folder(root, n - n // 4)
    make_folder(root / "sub", n // 4, start_seed=500, ext="jpg")
    if bad:
        (root / "truncated.png").write_bytes((root / "img_0000.png").read_bytes()[:200])
        (root / "sub" / "notes.jpg").write_text("not an image")
    return root


def collection(home: Path, masked_objects: bool = False) -> Collection:
    """The small model; with ``masked_objects``, images masked by a classical segmenter and their objects indexed."""
    coll = Collection(home, runtime=FAST_RUNTIME, commit_every=4)
    if masked_objects:
        coll.configure(
            model=SMALL_MODEL,
            mask=MaskSettings(segmenter="lab_kmeans"),
            objects=ObjectSettings(enabled=True, fallback="none", max_objects=2),
        )
    else:
        coll.configure(model=SMALL_MODEL)
    return coll


def vectors_by_path(home: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(home / "lookalike.db") as con:
        rows = con.execute("SELECT path, vector FROM images WHERE status = 'indexed'").fetchall()
    return {p: np.frombuffer(v, dtype=np.float32) for p, v in rows}


def objects_by_box(home: Path) -> dict[tuple[str, int, int, int, int], np.ndarray]:
    with sqlite3.connect(home / "lookalike.db") as con:
        rows = con.execute(
            "SELECT i.path, o.x, o.y, o.w, o.h, o.vector FROM objects o JOIN images i ON i.id = o.image_id"
        ).fetchall()
    return {tuple(r[:5]): np.frombuffer(r[5], dtype=np.float32) for r in rows}


def mask_fractions(home: Path) -> dict[str, float | None]:
    with sqlite3.connect(home / "lookalike.db") as con:
        return dict(con.execute("SELECT path, mask_fraction FROM images").fetchall())


def assert_same_vectors(expected: dict, got: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, vec in expected.items():
        cosine = float(vec @ got[key]) / float(np.linalg.norm(vec) * np.linalg.norm(got[key]))
        assert cosine >= 0.9999, key


def paths_in_db(home: Path) -> list[str]:
    with sqlite3.connect(home / "lookalike.db") as con:
        return [p for (p,) in con.execute("SELECT path FROM images")]


class CallAfter:
    """A progress bar that calls ``action`` when the ``at``-th result has been put."""

    def __init__(self, at: int, action) -> None:
        self.at, self.action, self.seen = at, action, 0

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.seen += n
        if self.seen == self.at:
            self.action()

    def finish(self) -> None:
        pass


def interrupt() -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------ without a cluster


def test_actor_plan_gives_one_actor_per_gpu_when_the_cluster_has_gpus():
    nodes = [{"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 1}, {"CPU": 4}]
    plan = plan_actors(nodes, RayOptions(), RuntimeOptions())
    assert (plan.actors, plan.cpus, plan.gpus, plan.device, plan.batch_size) == (3, 1.0, 1.0, "cuda", 128)


def test_actor_plan_on_cpus_leaves_a_quarter_of_each_node_to_decoding():
    nodes = [{"CPU": 16}, {"CPU": 8}, {"CPU": 2}]
    plan = plan_actors(nodes, RayOptions(), RuntimeOptions())
    assert (plan.actors, plan.cpus, plan.gpus, plan.device, plan.batch_size) == (6 + 3 + 0, 2.0, 0.0, "cpu", 32)
    assert plan_actors([{"CPU": 2}], RayOptions(), RuntimeOptions()).actors == 1  # at least one


def test_actor_plan_keeps_what_was_asked_and_a_cpu_device_keeps_off_the_gpus():
    nodes = [{"CPU": 8, "GPU": 4}]
    asked = plan_actors(nodes, RayOptions(actors=2, cpus_per_actor=3, batch_size=16), RuntimeOptions(batch_size=8))
    assert (asked.actors, asked.cpus, asked.gpus, asked.batch_size) == (2, 3, 1.0, 16)
    on_cpu = plan_actors(nodes, RayOptions(), RuntimeOptions(device="cpu", batch_size=8))
    assert (on_cpu.gpus, on_cpu.device, on_cpu.batch_size) == (0.0, "cpu", 8)


@pytest.mark.parametrize(
    "bad", [dict(actors=0), dict(batch_size=0), dict(cpus_per_actor=0), dict(decode_cpus=0), dict(decode_memory_mb=0)]
)
def test_ray_options_refuse_values_that_cannot_work(bad):
    with pytest.raises(SettingsError):
        RayOptions(**bad)


def test_without_ray_installed_index_ray_says_how_to_install_it(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos", 4, bad=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(LookalikeError, match=r'pip install -e "\.\[ray\]"'):
        collection(tmp_path / "api").index_folder(folder, ray=RayOptions())
    res = CliRunner().invoke(main, ["--home", str(tmp_path / "cli"), "index", str(folder), "--ray"])
    assert res.exit_code == 1
    assert INSTALL_HINT in res.output and "Traceback" not in res.output
    assert paths_in_db(tmp_path / "cli") == []  # refused before anything was scanned


# ------------------------------------------------------------------------------------ on a local Ray cluster


def test_an_interrupted_ray_run_resumed_by_index_ray_gives_the_plain_pipelines_vectors_counts_and_errors(
    tmp_path, ray_cluster
):
    """Masks and objects included. The first Ray run stops after 5 results (a driver killed mid-run keeps what
    it committed); ``lookalike index DIR --ray ADDRESS`` resumes the rest."""
    folder = photo_folder(tmp_path / "photos", 8)
    plain_home, ray_home = tmp_path / "plain", tmp_path / "ray"
    plain = collection(plain_home, masked_objects=True).index_folder(folder)
    assert (plain.scanned, plain.embedded, len(plain.skipped)) == (10, 8, 2)
    with pytest.raises(Interrupted):
        collection(ray_home, masked_objects=True).index_folder(folder, progress=CallAfter(5, interrupt), ray=OPTIONS)
    assert collection(ray_home).stats().pending == 10 - 5
    bad_left = 2 - len(collection(ray_home).errors())
    args = ["--home", str(ray_home), "--device", "cpu", "--batch-size", "4", "index", str(folder)]
    res = CliRunner().invoke(main, [*args, "--ray", ray_cluster.address])
    assert res.exit_code == (3 if bad_left else 0), res.output  # 3: finished, skipped files listed
    assert "10 images in" in res.output and "5 resumed" in res.output and "on Ray" in res.output
    assert collection(ray_home).errors() == collection(plain_home).errors()
    ray_stats, plain_stats = collection(ray_home).stats(), collection(plain_home).stats()
    assert (ray_stats.images, ray_stats.indexed, ray_stats.errors, ray_stats.pending) == (10, 8, 2, 0)
    assert (plain_stats.indexed, plain_stats.errors, plain_stats.mask_fallbacks) == (8, 2, ray_stats.mask_fallbacks)
    assert ray_stats.object_vectors == plain_stats.object_vectors > 0
    assert_same_vectors(vectors_by_path(plain_home), vectors_by_path(ray_home))
    assert_same_vectors(objects_by_box(plain_home), objects_by_box(ray_home))
    assert mask_fractions(ray_home) == pytest.approx(mask_fractions(plain_home))
    [hit] = collection(ray_home).search([folder / "img_0003.png"], k=1)[0].hits
    assert hit.path == str((folder / "img_0003.png").resolve())


def test_a_worker_node_killed_mid_run_and_the_run_still_finishes_with_every_file_once(tmp_path, ray_cluster, caplog):
    n = 48  # the first results arrive after about 8 files: most of the work is left when the node dies
    folder = photo_folder(tmp_path / "photos", n, bad=False)
    caplog.set_level(logging.INFO, logger="indexer.ray_runner")
    killed = CallAfter(1, ray_cluster.replace_worker)  # at the first result: the actor is still busy
    report = collection(tmp_path / "home").index_folder(folder, progress=killed, ray=OPTIONS)
    assert killed.seen == n
    assert (report.embedded, report.skipped) == (n, [])
    paths = paths_in_db(tmp_path / "home")
    assert len(paths) == len(set(paths)) == n
    assert len(vectors_by_path(tmp_path / "home")) == n
    # the killed node's actor embedded the first files, its replacement the rest
    assert f"embedded {n} files on 2 Ray nodes" in caplog.text
