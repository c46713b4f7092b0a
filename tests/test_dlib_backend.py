"""The optional dlib backend: clear errors without dlib; detectors and the 128-d descriptor with it.

Tests that need dlib skip when it is not installed (``pip install -e ".[dlib]"``); tests that need a real
photo use scikit-image's ``astronaut`` or an LFW photo from the shared datasets, and skip without either.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.faces import Face, build_detector, dlib_backend, nearest_to
from retrieval.faces.dlib_backend import (
    DLIB_RAW_THRESHOLD,
    INSTALL_HINT,
    DlibUnavailableError,
    import_dlib,
    model_path,
    models_dir,
    shape_to_landmarks,
)
from tests.test_face_detection import draw_face


def real_face() -> np.ndarray | None:
    """A real photo with one clear frontal face, or ``None`` when none is available offline."""
    try:
        from skimage import data  # type: ignore[import-not-found]

        return np.asarray(data.astronaut())
    except ImportError:
        pass
    shared = Path(os.environ.get("LOOKALIKE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    photo = shared / "lfw" / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    if photo.is_file():
        from PIL import Image

        with Image.open(photo) as im:
            return np.asarray(im.convert("RGB"))
    return None


# --- without dlib ---------------------------------------------------------------------------------


def test_missing_dlib_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes "import dlib" raise ImportError
    with pytest.raises(DlibUnavailableError, match=r'pip install -e "\.\[dlib\]"'):
        import_dlib()
    for name in ("dlib-hog", "dlib-cnn"):
        with pytest.raises(DlibUnavailableError, match="dlib is not installed"):
            build_detector(name)
    with pytest.raises(DlibUnavailableError):
        dlib_backend.DlibFaceEncoder()
    assert not dlib_backend.dlib_available()


def test_missing_model_files_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_DLIB_MODELS", str(tmp_path))
    assert models_dir() == tmp_path
    with pytest.raises(DlibUnavailableError, match=INSTALL_HINT.replace("[", r"\[").replace(".", r"\.")):
        model_path(dlib_backend.RESNET)


def test_shape_to_landmarks_orders_eyes_image_left_first():
    class P:
        def __init__(self, x, y):
            self.x, self.y = x, y

    class Shape:  # dlib's 5 points: image-right eye corners, image-left eye corners, nose base
        def parts(self):
            return [P(150, 100), P(130, 102), P(70, 100), P(90, 102), P(110, 140)]

    marks = shape_to_landmarks(Shape())
    np.testing.assert_allclose(marks, [[80, 101], [140, 101], [110, 140]])
    assert marks.dtype == np.float32


def test_dlib_raw_threshold_is_dlibs_documented_value():
    assert DLIB_RAW_THRESHOLD == 0.6


# --- with dlib ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib():
    mod = pytest.importorskip("dlib")
    if not dlib_backend.dlib_available():
        pytest.skip("dlib model files (face-recognition-models) are not installed")
    return mod


@pytest.fixture(scope="module")
def encoder(dlib):
    return dlib_backend.DlibFaceEncoder()


@pytest.mark.parametrize("name", ["dlib-hog", "dlib-cnn"])
@pytest.mark.parametrize("shape", [(120, 160, 3), (1, 1, 3), (6, 900, 3), (0, 4, 3)])
def test_dlib_detectors_find_nothing_in_blank_or_odd_images(dlib, name, shape):
    det = build_detector(name, upsample=0)
    assert det.detect(np.full(shape, 128, np.uint8)) == []


def test_encoder_gives_one_unit_vector_per_face(encoder):
    img = np.asarray(draw_face(200))
    faces = [Face(40, 40, 160, 170), Face(20, 20, 180, 190)]
    vecs = encoder.embed(img, faces)
    assert vecs.shape == (2, 128) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vecs, encoder.embed(img, faces))  # deterministic without jitter
    assert encoder.embed(img, []).shape == (0, 128)


def test_raw_vectors_point_the_same_way_as_normalised_ones(encoder):
    img = np.asarray(draw_face(200))
    faces = [Face(40, 40, 160, 170)]
    raw = dlib_backend.DlibFaceEncoder(normalize=False).embed(img, faces)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3  # dlib's vectors are not unit length
    np.testing.assert_allclose(raw / np.linalg.norm(raw), encoder.embed(img, faces), atol=1e-5)


def test_encoder_accepts_grey_images(encoder):
    grey = np.asarray(draw_face(160).convert("L"))
    assert encoder.embed(grey, [Face(30, 30, 130, 140)]).shape == (1, 128)


@pytest.fixture(scope="module")
def photo():
    img = real_face()
    if img is None:
        pytest.skip("no real face photo available offline (scikit-image or the shared LFW data)")
    return img


def test_hog_detector_finds_the_face_with_five_point_landmarks(dlib, photo):
    h, w = photo.shape[:2]
    faces = build_detector("dlib-hog", upsample=1).detect(photo)
    assert faces
    f = nearest_to(faces, w / 2, h / 2) if photo.shape[:2] == (250, 250) else faces[0]
    assert f.landmarks.shape == (3, 2) and not f.landmarks_estimated
    (lx, ly), (rx, ry), (nx, ny) = f.landmarks
    assert f.x0 < lx < nx < rx < f.x1  # eyes either side of the nose, all inside the box
    assert max(ly, ry) < ny < f.y1
    # The same face on a 2x larger copy, detected on a downscaled working copy, maps back to 2x the box.
    big = np.repeat(np.repeat(photo, 2, axis=0), 2, axis=1)
    g = nearest_to(
        build_detector("dlib-hog", upsample=1, max_side=max(h, w)).detect(big), 2 * f.centre[0], 2 * f.centre[1]
    )
    np.testing.assert_allclose(np.array(g.box) / 2, f.box, atol=3)


def test_same_face_is_closer_than_a_different_one(encoder, photo):
    """The same photo slightly changed (brighter, shifted) stays within dlib's 0.6 radius; a drawn
    cartoon face does not."""
    det = build_detector("dlib-hog", upsample=1)
    h, w = photo.shape[:2]
    face = nearest_to(det.detect(photo), w / 2, h / 2)
    shifted = np.clip(np.roll(photo, (4, -3), axis=(0, 1)).astype(int) + 20, 0, 255).astype(np.uint8)
    face2 = nearest_to(det.detect(shifted), w / 2, h / 2)
    raw = dlib_backend.DlibFaceEncoder(normalize=False)
    a, b = raw.embed(photo, [face])[0], raw.embed(shifted, [face2])[0]
    cartoon = raw.embed(np.asarray(draw_face(200)), [Face(40, 40, 160, 170)])[0]
    assert np.linalg.norm(a - b) < 0.3 < DLIB_RAW_THRESHOLD < np.linalg.norm(a - cartoon)
    assert float(encoder.embed(photo, [face])[0] @ encoder.embed(shifted, [face2])[0]) > 0.95
