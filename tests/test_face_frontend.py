"""The face front end and package: detect -> pick -> align in one call, the embedding stage, the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from retrieval.faces import (
    DETECTORS,
    AlignedFaceEmbedder,
    Face,
    FaceCrops,
    HaarDetector,
    align_face,
    align_faces,
    centre_face,
    face_crops,
    largest_face,
    pick_faces,
    sort_faces,
    unit_vectors,
)
from tests.test_face_detection import draw_face


class FixedDetector:
    """Returns the same faces for any image (largest first, as every detector does)."""

    name = "fixed"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = sort_faces(faces)

    def detect(self, pixels: np.ndarray) -> list[Face]:
        return list(self.faces)


def textured(h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


EYES_SMALL = np.array([[20.0, 30.0], [40.0, 30.0]])
EYES_BIG = np.array([[110.0, 50.0], [160.0, 52.0]])
SMALL = Face(5, 10, 55, 70, score=9.0, landmarks=EYES_SMALL)
BIG = Face(90, 20, 180, 110, score=1.0, landmarks=EYES_BIG)


# --- picking --------------------------------------------------------------------------------------


def test_largest_face_is_the_biggest_box_then_the_highest_score():
    low, high = Face(0, 0, 50, 50, 1.0), Face(5, 5, 55, 55, 2.0)
    assert largest_face([SMALL, BIG]) is BIG
    assert largest_face([low, high]) is high
    assert largest_face([]) is None
    faces = [SMALL, low, high, BIG]
    assert largest_face(faces) is sort_faces(faces)[0]


def test_centre_face_is_the_box_nearest_the_image_centre():
    mid = Face(90, 50, 110, 70)
    assert centre_face([BIG, mid, SMALL], 200, 120) is mid
    assert centre_face([SMALL, BIG], 200, 120) is BIG
    assert centre_face([], 200, 120) is None


def test_pick_faces_keeps_one_face_or_all_of_them():
    assert pick_faces([BIG, SMALL], 200, 120) == [BIG]
    assert pick_faces([BIG, SMALL], 200, 120, pick=None) == [BIG, SMALL]
    assert pick_faces([], 200, 120) == []
    assert pick_faces([BIG, SMALL], 200, 120, pick=lambda faces, w, h: None) == []


# --- detect -> pick -> align ----------------------------------------------------------------------


def test_face_crops_aligns_the_largest_face_by_default():
    img = textured()
    found = face_crops(img, FixedDetector([SMALL, BIG]), size=64)
    assert isinstance(found, FaceCrops)
    assert found.faces == [BIG] and found.face is BIG and found.detected == 2
    assert found.crops.shape == (1, 64, 64, 3) and found.crops.dtype == np.uint8
    np.testing.assert_array_equal(found.crops[0], align_face(img, BIG, 64))


def test_face_crops_with_every_face_and_with_a_custom_pick_and_margin():
    img = textured(seed=1)
    every = face_crops(img, FixedDetector([SMALL, BIG]), size=48, pick=None)
    assert every.faces == [BIG, SMALL] and every.detected == 2
    np.testing.assert_array_equal(every.crops, np.stack([align_face(img, f, 48) for f in (BIG, SMALL)]))
    smallest = face_crops(
        img, FixedDetector([SMALL, BIG]), size=48, margin=0.5, pick=lambda faces, w, h: min(faces, key=lambda f: f.area)
    )
    assert smallest.faces == [SMALL]
    np.testing.assert_array_equal(smallest.crops[0], align_face(img, SMALL, 48, margin=0.5))


def test_an_image_without_a_face_gives_no_crops():
    found = face_crops(textured(), FixedDetector([]), size=32)
    assert found.faces == [] and found.face is None and found.detected == 0
    assert found.crops.shape == (0, 32, 32, 3) and found.crops.dtype == np.uint8


def test_face_crops_on_drawn_faces_with_the_haar_detector_by_name_and_by_instance():
    img = Image.new("RGB", (520, 260), (90, 90, 90))
    img.paste(draw_face(240), (10, 10))
    img.paste(draw_face(150), (330, 60))
    canvas = np.asarray(img)
    by_name = face_crops(canvas, "haar")
    by_instance = face_crops(canvas, HaarDetector())
    assert by_name.detected == by_instance.detected == 2
    assert by_name.faces == by_instance.faces
    face = by_name.face
    assert face is not None and face.centre[0] < 260  # the 240 px face, not the 150 px one
    assert by_name.crops.shape == (1, 160, 160, 3)
    np.testing.assert_array_equal(by_name.crops, by_instance.crops)


# --- embedding stage ------------------------------------------------------------------------------


def test_align_faces_stacks_one_crop_per_face():
    img = textured(seed=2)
    crops = align_faces(img, [BIG, SMALL], 40)
    assert crops.shape == (2, 40, 40, 3)
    np.testing.assert_array_equal(crops[1], align_face(img, SMALL, 40))
    assert align_faces(img, [], 40).shape == (0, 40, 40, 3)


def test_unit_vectors_scales_rows_to_length_one_and_keeps_zero_rows():
    v = unit_vectors(np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]]))
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


class MeanColour:
    """A stand-in network: the mean colour of each crop (dim 3)."""

    dim = 3

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def embed_batch(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(crops)
        return crops.reshape(len(crops), -1, 3).mean(axis=1)


def test_aligned_face_embedder_embeds_the_aligned_crops_of_a_photo_in_one_batch():
    img = textured(seed=3)
    net = MeanColour()
    emb = AlignedFaceEmbedder(net, crop_size=32)
    vecs = emb.embed(img, [BIG, SMALL])
    assert vecs.shape == (2, 3) and emb.dim == 3
    assert len(net.batches) == 1
    np.testing.assert_array_equal(net.batches[0], align_faces(img, [BIG, SMALL], 32))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-6)
    assert emb.embed(img, []).shape == (0, 3)


# --- package --------------------------------------------------------------------------------------


def test_importing_the_package_registers_every_detector_without_importing_dlib():
    code = "import sys, retrieval.faces as f; print(','.join(f.DETECTORS.names())); print('dlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["dlib-cnn,dlib-hog,haar,yunet", "False"]
    assert DETECTORS.names() == ["dlib-cnn", "dlib-hog", "haar", "yunet"]
