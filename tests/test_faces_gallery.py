"""The face gallery end to end on drawn "faces": a fake detector that finds the drawn patches, and a fake
embedder (a normalised thumbnail of the box) whose similarities are predictable; one test runs the real
small network on aligned crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from indexer.engine import LookalikeError, ModelMismatchError
from indexer.faces import UNKNOWN, FaceGallery, FaceSettings, default_face_embedder
from retrieval.config import ModelConfig
from retrieval.faces import Face, eyes_from_box, sort_faces

from .conftest import FAST_RUNTIME, draw_image

PATCH = 48


class BlobDetector:
    """Finds the drawn face patches: connected regions of non-black pixels, with eyes guessed from the box."""

    name = "blobs"

    def __init__(self, calls: list[int] | None = None) -> None:
        self.calls = calls if calls is not None else [0]

    def detect(self, pixels: np.ndarray) -> list[Face]:
        self.calls[0] += 1
        grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
        n, _, stats, _ = cv2.connectedComponentsWithStats((grey > 8).astype(np.uint8))
        faces = []
        for x, y, w, h, area in stats[1:n]:
            if area >= 200:
                box = (float(x), float(y), float(x + w), float(y + h))
                faces.append(Face(*box, score=float(area), landmarks=eyes_from_box(box), detector=self.name))
        return sort_faces(faces)


class ThumbEmbedder:
    """A fake face embedder: the box's pixels shrunk to 12x12, mean removed, unit length (432-d)."""

    dim = 432

    def __init__(self, calls: list[int] | None = None) -> None:
        self.calls = calls if calls is not None else [0]

    def embed(self, pixels: np.ndarray, faces) -> np.ndarray:
        self.calls[0] += len(faces)
        out = []
        for f in faces:
            crop = pixels[int(f.y0) : int(f.y1), int(f.x0) : int(f.x1)].astype(np.float32)
            v = cv2.resize(crop, (12, 12), interpolation=cv2.INTER_AREA).ravel()
            v -= v.mean()
            out.append(v / max(np.linalg.norm(v), 1e-9))
        return np.array(out, np.float32)


def face_patch(person: int, variant: int, size: int = PATCH) -> np.ndarray:
    """Person ``person``'s face: a seeded drawing, with a little seeded noise per photo (``variant``)."""
    base = np.asarray(draw_image(1000 + person, (PATCH, PATCH)).resize((size, size)), np.float32)
    noise = np.random.default_rng(variant * 7919 + person).normal(0, 6, base.shape)
    return np.clip(base + noise, 30, 255).astype(np.uint8)


def save_photo(path: Path, people: list[int], variant: int, sizes: list[int] | None = None) -> Path:
    """A black photo holding the faces of ``people`` side by side."""
    img = np.zeros((120, 200, 3), np.uint8)
    for slot, person in enumerate(people):
        size = (sizes or [PATCH] * len(people))[slot]
        x, y = 10 + slot * 90, 20 + variant % 3
        img[y : y + size, x : x + size] = face_patch(person, variant, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)
    return path


def open_gallery(
    home: Path, det_calls: list[int] | None = None, emb_calls: list[int] | None = None, db_url: str | None = None
) -> FaceGallery:
    return FaceGallery(
        home,
        db_url=db_url,
        runtime=FAST_RUNTIME,
        detector_factory=lambda name: BlobDetector(det_calls),
        face_embedder_factory=lambda settings, runtime: ThumbEmbedder(emb_calls),
    )


ALICE, BOB, CAROL = 1, 2, 3


@pytest.fixture
def enrolled(tmp_path: Path, db_url: str | None) -> tuple[FaceGallery, Path]:
    """A gallery with alice (3 photos) and bob (2) enrolled; on SQLite and on PostgreSQL (``db_url``)."""
    g = open_gallery(tmp_path / "home", db_url=db_url)
    photos = tmp_path / "photos"
    a = g.enroll("alice", [save_photo(photos / f"alice{v}.png", [ALICE], v) for v in range(3)])
    b = g.enroll("bob", [save_photo(photos / f"bob{v}.png", [BOB], v) for v in range(2)])
    assert (len(a.enrolled), a.total_faces, len(b.enrolled)) == (3, 3, 2)
    return g, photos


def test_verify_accepts_the_enrolled_person_and_rejects_another(enrolled):
    g, photos = enrolled
    probe = save_photo(photos / "probe.png", [ALICE], 9)
    yes = g.verify(probe, "alice")
    no = g.verify(probe, "bob")
    assert yes.same and yes.score > 0.9 and yes.box is not None
    assert not no.same and no.score < yes.threshold
    assert not yes.calibrated and "lookalike faces calibrate" in yes.note
    mean = g.verify(probe, "alice", aggregate="mean")
    assert mean.score <= yes.score
    pair = g.verify_pair(probe, photos / "alice0.png")
    assert pair.same and pair.other_box is not None
    assert not g.verify_pair(probe, photos / "bob0.png").same
    with pytest.raises(LookalikeError, match="no identity named 'dave'"):
        g.verify(probe, "dave")


def test_identify_names_each_face_and_calls_a_stranger_unknown(enrolled):
    g, photos = enrolled
    group = save_photo(photos / "group.png", [CAROL, BOB], 5, sizes=[56, 44])
    matches = g.identify(group, k=2)
    assert [m.identity for m in matches] == [UNKNOWN, "bob"]  # largest face first
    assert [c.name for c in matches[1].candidates][0] == "bob"
    assert len(matches[1].candidates) == 2 and matches[1].candidates[0].score > matches[1].candidates[1].score


def test_a_photo_without_a_face_is_a_result_not_an_error(enrolled, tmp_path):
    g, photos = enrolled
    empty = photos / "wall.png"
    Image.new("RGB", (100, 80)).save(empty)
    rep = g.enroll("alice", [empty, save_photo(photos / "alice7.png", [ALICE], 7)])
    assert rep.no_face == [str(empty.resolve())] and len(rep.enrolled) == 1 and rep.total_faces == 4
    d = g.verify(empty, "alice")
    assert not d.same and d.score is None and "no face" in d.reason
    assert g.identify(empty) == [] and g.search_faces(empty) == []
    nobody = g.enroll("ghost", [empty])
    assert nobody.total_faces == 0 and "ghost" not in [p.name for p in g.identities()]


def test_enrolling_a_group_photo_takes_the_largest_face_and_repeats_are_skipped(enrolled):
    g, photos = enrolled
    group = save_photo(photos / "carol_and_bob.png", [CAROL, BOB], 1, sizes=[60, 40])
    rep = g.enroll("carol", [group, group])
    assert rep.several_faces == [(str(group.resolve()), 2)] and len(rep.enrolled) == 1
    assert rep.duplicates == [str(group.resolve())]
    assert g.identify(save_photo(photos / "carol9.png", [CAROL], 9))[0].identity == "carol"


def test_calibrate_stores_a_threshold_that_meets_the_far_and_eval_uses_the_lfw_protocol(tmp_path, db_url):
    g = open_gallery(tmp_path / "home", db_url=db_url)
    root = tmp_path / "lfw"
    names = ["Ann", "Ben", "Cat", "Dan"]
    for p, name in enumerate(names):
        for v in range(1, 4):
            save_photo(root / name / f"{name}_{v:04d}.jpg", [10 + p], v)
    # 2 folds x (2 same + 2 different pairs)
    (tmp_path / "pairs.txt").write_text(
        "2 2\nAnn 1 2\nBen 1 3\nAnn 1 Ben 2\nCat 1 Dan 1\nCat 2 3\nDan 1 2\nAnn 3 Cat 3\nBen 2 Dan 3\n"
    )
    rep = g.calibrate(tmp_path / "pairs.txt", root, far=0.25)
    st = g.settings
    assert st.calibrated and st.calibration.far <= 0.25 and st.calibration.tar == 1.0
    assert st.threshold == pytest.approx(st.calibration.threshold) and rep.pairs == 8
    assert rep.warning is None
    assert FaceGallery(tmp_path / "home", db_url=db_url).settings == st  # stored in the database
    g.enroll("ann", [root / "Ann" / "Ann_0001.jpg"])
    d = g.verify(root / "Ann" / "Ann_0002.jpg", "ann")
    assert d.same and d.calibrated and "calibrated on" in d.note
    ev = g.evaluate(tmp_path / "pairs.txt", root)
    assert ev.pairs == 8 and ev.metrics["accuracy"] == 1.0 and ev.metrics["auc"] == 1.0


def test_index_folder_finds_every_face_skips_corrupt_files_and_a_rerun_embeds_nothing(tmp_path, db_url):
    det, emb = [0], [0]
    g = open_gallery(tmp_path / "home", det, emb, db_url=db_url)
    photos = tmp_path / "photos"
    save_photo(photos / "a.png", [ALICE], 0)
    save_photo(photos / "ab.png", [ALICE, BOB], 1)
    save_photo(photos / "sub" / "c.jpg", [CAROL], 2)
    Image.new("RGB", (64, 64)).save(photos / "empty.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    rep = g.index_folder(photos)
    assert (rep.scanned, rep.embedded, rep.faces, rep.without_faces, rep.total_indexed) == (5, 4, 4, 1, 4)
    assert [Path(p).name for p, _ in rep.skipped] == ["broken.jpg"]
    assert (det[0], emb[0]) == (4, 4)
    again = g.index_folder(photos)
    assert (again.embedded, again.faces, again.unchanged, again.total_indexed) == (0, 0, 5, 4)
    assert again.earlier_errors == 1 and again.skipped == []
    assert (det[0], emb[0]) == (4, 4)  # nothing read, detected or embedded again
    save_photo(photos / "a.png", [BOB], 3)  # changed content
    (photos / "sub" / "c.jpg").unlink()
    third = g.index_folder(photos)
    assert (third.changed, third.removed, third.faces, third.total_indexed) == (1, 1, 1, 3)
    [q] = g.search_faces(save_photo(tmp_path / "q.png", [BOB], 8), k=2)
    assert sorted(Path(h.path).name for h in q.hits) == ["a.png", "ab.png"] and min(h.score for h in q.hits) > 0.9


def test_several_faces_per_photo_are_all_searchable(tmp_path, db_url):
    g = open_gallery(tmp_path / "home", db_url=db_url)
    photos = tmp_path / "photos"
    save_photo(photos / "ab.png", [ALICE, BOB], 1)
    save_photo(photos / "c.png", [CAROL], 2)
    g.index_folder(photos)
    found = g.search_faces(save_photo(tmp_path / "q.png", [BOB, CAROL], 4), k=1)
    assert [(Path(q.hits[0].path).name, round(q.hits[0].box[0])) for q in found] == [("ab.png", 100), ("c.png", 10)]


def test_a_backend_change_is_refused_unless_reembedding(enrolled):
    g, photos = enrolled
    with pytest.raises(ModelMismatchError, match="--reembed"):
        g.configure(model=ModelConfig(image_size=64, pooling="mac"))
    with pytest.raises(ModelMismatchError):
        g.configure(backend="dlib")
    assert g.settings == FaceSettings()
    lost = g.configure(model=ModelConfig(image_size=64, pooling="mac"), reembed=True)
    assert lost == [] and g.settings.crop_size == 64 and g.settings.model.pooling == "mac"
    assert not g.settings.calibrated
    assert g.verify(save_photo(photos / "probe.png", [ALICE], 4), "alice").same
    g.configure(detector="haar", reembed=True)  # the fake factories ignore the name; the setting is kept
    assert g.settings.detector == "haar"
    with pytest.raises(LookalikeError, match="unknown face detector"):
        g.configure(detector="nope")


def test_the_face_index_is_rebuilt_after_its_file_is_deleted(enrolled):
    g, photos = enrolled
    for f in ("faces_enrolled.faiss", "faces_enrolled.json"):
        (g.home / f).unlink()
    fresh = open_gallery(g.home, db_url=g.db_url)
    assert fresh.identify(save_photo(photos / "probe.png", [BOB], 6))[0].identity == "bob"
    assert (g.home / "faces_enrolled.faiss").exists()


def test_forget_removes_the_person_and_their_faces(enrolled):
    g, photos = enrolled
    assert [(p.name, p.faces) for p in g.identities()] == [("alice", 3), ("bob", 2)]
    assert g.forget("alice") == 3
    assert [p.name for p in g.identities()] == ["bob"]
    assert g.identify(save_photo(photos / "probe.png", [ALICE], 4))[0].identity == UNKNOWN
    with pytest.raises(LookalikeError, match="no identity named"):
        g.forget("alice")


def test_the_real_network_on_aligned_crops_ranks_the_right_person_first(tmp_path, one_thread):
    settings_seen = []

    def factory(settings, runtime):
        settings_seen.append(settings)
        return default_face_embedder(settings, runtime)

    g = FaceGallery(
        tmp_path / "home",
        runtime=FAST_RUNTIME,
        detector_factory=lambda name: BlobDetector(),
        face_embedder_factory=factory,
    )
    g.configure(model=ModelConfig(image_size=64))
    photos = tmp_path / "photos"
    for person, name in ((ALICE, "alice"), (BOB, "bob")):
        g.enroll(name, [save_photo(photos / f"{name}{v}.png", [person], v) for v in range(2)])
    probe = save_photo(photos / "probe.png", [BOB], 5)
    [match] = g.identify(probe, k=2)
    assert [c.name for c in match.candidates] == ["bob", "alice"]
    assert g.verify(probe, "bob").score > g.verify(probe, "alice").score
    assert settings_seen[0].crop_size == 64 and settings_seen[0].model.image_size == 64


class PickyDetector(BlobDetector):
    """Fails on photos wider than 150 px, as a real detector may on a photo it cannot take."""

    def detect(self, pixels: np.ndarray) -> list[Face]:
        if pixels.shape[1] > 150:
            raise cv2.error("simulated detector failure")
        return super().detect(pixels)


def test_a_photo_the_detector_cannot_take_is_reported_not_a_crash(tmp_path):
    g = FaceGallery(
        tmp_path / "home",
        runtime=FAST_RUNTIME,
        detector_factory=lambda name: PickyDetector(),
        face_embedder_factory=lambda settings, runtime: ThumbEmbedder(),
    )
    photos = tmp_path / "photos"
    save_photo(photos / "wide.png", [ALICE], 0)  # 200 px wide: the detector fails
    small = photos / "small.png"
    Image.fromarray(face_patch(BOB, 0, 40)).resize((120, 120)).save(small)
    rep = g.index_folder(photos)
    assert [(Path(p).name, why.startswith("face detection failed")) for p, why in rep.skipped] == [("wide.png", True)]
    assert rep.embedded == 1
    enrollment = g.enroll("alice", [photos / "wide.png", small])
    assert [Path(p).name for p, _ in enrollment.skipped] == ["wide.png"] and len(enrollment.enrolled) == 1
    with pytest.raises(LookalikeError, match="wide.png.*face detection failed"):
        g.verify(photos / "wide.png", "alice")
    with pytest.raises(LookalikeError, match="aggregate"):
        g.verify(small, "alice", aggregate="median")


def test_eval_scores_each_photo_of_a_pairs_file_by_the_face_nearest_its_centre(tmp_path):
    """A larger stranger beside every photo's person: scored by the largest face every pair would look alike."""
    g = open_gallery(tmp_path / "home")
    root = tmp_path / "lfw"
    for p, name in enumerate(["Ann", "Ben", "Cat", "Dan"]):
        for v in range(1, 4):  # the stranger in slot 0 (x 10-66), the person nearer the centre (x 100-144)
            save_photo(root / name / f"{name}_{v:04d}.jpg", [CAROL, 10 + p], v, sizes=[56, 44])
    (tmp_path / "pairs.txt").write_text(
        "2 2\nAnn 1 2\nBen 1 3\nAnn 1 Ben 2\nCat 1 Dan 1\nCat 2 3\nDan 1 2\nAnn 3 Cat 3\nBen 2 Dan 3\n"
    )
    ev = g.evaluate(tmp_path / "pairs.txt", root)
    assert ev.pairs == 8 and ev.metrics["accuracy"] == 1.0 and ev.metrics["auc"] == 1.0
