"""The 68-point landmark layer: detectors, landmark images, horizontal flips and face crops.

Zakharov et al. 2019 (Sec. 3.1) condition every network on a landmark image: the 68 iBUG points of a frame
drawn as coloured polylines on a black canvas, one colour per face part (see ../shared/SPEC.md). This module
holds that convention and the two detectors that produce the points:

* ``DlibDetector``: dlib's HOG face detector and 68-point shape predictor, shipped inside the
  ``dlib-bin`` and ``face-recognition-models`` wheels, so it works offline on a CPU.
* ``FaceAlignmentDetector``: the paper's choice, the ``face-alignment`` library (SFD detector + FAN),
  batched on a GPU; it downloads its weights on first use.

    detector = make_detector("dlib")
    faces = detector.detect([frame])[0]          # list[Face], best score first
    y = draw_landmarks(faces[0].points, 256)     # 256x256x3 uint8 landmark image

Points are pixel coordinates (x, y) with pixel centres at integers, as OpenCV and both detectors use them.
Nothing is loaded at import time; detectors load their models on the first ``detect`` call.
"""
from __future__ import annotations

import abc
import importlib.util
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

NUM_POINTS = 68


class Part(NamedTuple):
    """One iBUG face part: points ``start`` .. ``stop - 1`` joined by a polyline of one RGB colour."""

    name: str
    start: int
    stop: int
    closed: bool
    color: tuple[int, int, int]


# iBUG 300-W 68-point layout; "right"/"left" are the subject's sides (the right eye appears on the image's left).
# Every part has its own saturated colour, so a network can tell the subject's left from right and a landmark
# image can be decoded back into parts by colour.
PARTS: tuple[Part, ...] = (
    Part("jaw", 0, 17, False, (0, 255, 0)),
    Part("right_eyebrow", 17, 22, False, (255, 128, 0)),
    Part("left_eyebrow", 22, 27, False, (255, 255, 0)),
    Part("nose_bridge", 27, 31, False, (0, 0, 255)),
    Part("lower_nose", 31, 36, False, (0, 255, 255)),
    Part("right_eye", 36, 42, True, (255, 0, 0)),
    Part("left_eye", 42, 48, True, (255, 0, 255)),
    Part("outer_lips", 48, 60, True, (128, 0, 255)),
    Part("inner_lips", 60, 68, True, (255, 128, 192)),
)


def _flip_permutation() -> np.ndarray:
    """Index map from a mirrored face's points to correctly labelled ones (an involution).

    Mirroring turns the subject's right side into the image position of their left side, so every point takes
    the label of its mirror partner in the iBUG layout.
    """
    perm = np.arange(NUM_POINTS)
    perm[0:17] = np.arange(16, -1, -1)                      # jaw runs from the other ear
    perm[17:27] = np.arange(26, 16, -1)                     # eyebrows swap, each read outside-in
    perm[31:36] = np.arange(35, 30, -1)                     # lower nose reversed, 33 (tip) stays; 27-30 stay
    # Eyes: outer corner 36 <-> 45, upper lid 37,38 <-> 44,43, inner corner 39 <-> 42, lower lid 40,41 <-> 47,46.
    eye_pairs = [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    # Lips: corners 48 <-> 54 and 60 <-> 64; upper and lower lips reverse about their midpoints 51, 57, 62, 66.
    lip_pairs = [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    for a, b in eye_pairs + lip_pairs:
        perm[a], perm[b] = b, a
    return perm


FLIP_PERMUTATION: np.ndarray = _flip_permutation()

# Fixed-point bits for cv2 drawing: landmarks keep 1/16 pixel precision instead of being rounded to pixels.
_DRAW_SHIFT = 4


def flip_landmarks(points: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image ``image[:, ::-1]`` of width ``width``, relabelled.

    Works on (68, 2) or (..., 68, 2) arrays of pixel coordinates: x becomes ``width - 1 - x`` (pixel centres
    mirror onto pixel centres) and the points are reordered by ``FLIP_PERMUTATION``.
    """
    points = _check_points(points)
    flipped = points[..., FLIP_PERMUTATION, :].copy()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def draw_landmarks(points: np.ndarray, size: int, thickness: int = 2) -> np.ndarray:
    """The paper's landmark image: the 68 points as coloured polylines on a black ``size x size`` RGB canvas.

    Lines are drawn with ``cv2.LINE_8`` rather than ``LINE_AA``: every drawn pixel then carries exactly its
    part's colour (anti-aliasing would blend parts with black and with each other where they meet, so the image
    could no longer be read back by colour), and it is the cheaper raster. Sub-pixel positions are kept through
    OpenCV's fixed-point ``shift``. Points outside the canvas are clipped by OpenCV.
    """
    points = _check_points(points)
    if points.ndim != 2:
        raise ValueError(f"draw_landmarks takes one face's (68, 2) points, got shape {points.shape}")
    canvas = np.zeros((size, size, 3), np.uint8)
    # Far-away points are pulled in to a few canvas sizes so that the fixed-point values stay inside int32.
    limit = 4 * size
    fixed = np.round(np.clip(points, -limit, limit) * (1 << _DRAW_SHIFT)).astype(np.int32)
    for part in PARTS:
        cv2.polylines(canvas, [fixed[part.start:part.stop]], part.closed, part.color, thickness, cv2.LINE_8,
                      _DRAW_SHIFT)
    return canvas


def crop_box(points: np.ndarray, image_shape: tuple[int, ...], scale: float = 1.8) -> tuple[int, int, int, int]:
    """A square crop (x0, y0, x1, y1) around a face, ``x1`` and ``y1`` exclusive, for cutting training frames.

    Side = ``scale`` x the longer side of the landmarks' bounding box; centre = that box's centre moved up by
    10% of the side, because the 68 points stop at the eyebrows and the forehead and hair must fit too.
    The box keeps its size and squareness: when it fits inside the image it is shifted inside (so no padding
    is ever needed for faces near an edge); when it is larger than the image it extends beyond the image and
    ``crop_and_resize`` pads the outside with black.
    """
    points = _check_points(points)
    if points.ndim != 2:
        raise ValueError(f"crop_box takes one face's (68, 2) points, got shape {points.shape}")
    if not scale > 0:
        raise ValueError(f"crop scale must be positive, got {scale}")
    low, high = points.min(axis=0), points.max(axis=0)
    side = max(1, int(round(scale * float(np.max(high - low)))))
    centre_x = (low[0] + high[0]) / 2
    centre_y = (low[1] + high[1]) / 2 - 0.1 * side
    x0 = int(round(centre_x - side / 2))
    y0 = int(round(centre_y - side / 2))
    height, width = image_shape[:2]
    if side <= width:
        x0 = min(max(x0, 0), width - side)
    if side <= height:
        y0 = min(max(y0, 0), height - side)
    return x0, y0, x0 + side, y0 + side


def crop_and_resize(image: np.ndarray, points: np.ndarray, size: int, scale: float = 1.8,
                    box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``crop_box`` (or a given square ``box``, e.g. one shared by a whole clip) and resize it to ``size``.

    Returns the ``size x size`` crop (black where the box leaves the image) and the points in the crop's pixel
    coordinates. Points follow the same pixel-centre mapping as ``cv2.resize``:
    ``x' = (x - x0 + 0.5) * size / side - 0.5``. Shrinking uses area averaging, enlarging bilinear sampling.
    """
    points = _check_points(points)
    x0, y0, x1, y1 = crop_box(points, image.shape, scale) if box is None else box
    if x1 - x0 != y1 - y0:
        raise ValueError(f"crop box must be square, got {(x0, y0, x1, y1)}")
    side = x1 - x0
    crop = _padded_crop(image, x0, y0, side)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (size, size), interpolation=interpolation)
    factor = size / side
    moved = (points.astype(np.float32) - np.array([x0, y0], np.float32) + 0.5) * factor - 0.5
    return crop, moved


def _padded_crop(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """``image[y0:y0+side, x0:x0+side]`` with black where the window leaves the image."""
    height, width = image.shape[:2]
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + side, width), min(y0 + side, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - y0:src_y1 - y0, src_x0 - x0:src_x1 - x0] = image[src_y0:src_y1, src_x0:src_x1]
    return out


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"expected landmarks shaped (..., {NUM_POINTS}, 2), got {points.shape}")
    return points


# --------------------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1) in pixels, 68 landmarks (68, 2) float32 (x, y), detector score."""

    box: tuple[float, float, float, float]
    points: np.ndarray
    score: float


class DetectorLoadError(RuntimeError):
    """A landmark backend cannot load its models; the message says what to install or download."""


class LandmarkDetector(abc.ABC):
    """Finds faces and their 68 iBUG landmarks in RGB uint8 HxWx3 images (one subclass per backend)."""

    @abc.abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Per image, every face found (best score first), or an empty list."""


class DlibDetector(LandmarkDetector):
    """dlib's HOG frontal face detector + the iBUG 68-point ``shape_predictor_68_face_landmarks.dat``.

    The predictor file ships in the ``face-recognition-models`` wheel. ``upsample`` doubles the image that many
    times before detection (finds faces down to about 40 px at 1, 80 px at 0). ``min_score`` is the HOG
    detector's decision threshold: dlib's default of 0 accepts weak hits such as the round mission patch on
    ``skimage.data.astronaut()`` (score 0.12) while real faces score about 1.
    """

    def __init__(self, upsample: int = 1, min_score: float = 0.3):
        self.upsample = upsample
        self.min_score = min_score
        self._detector = None
        self._predictor = None

    def __getstate__(self) -> dict:
        # Worker processes receive the settings only and load their own models on first use.
        return {**self.__dict__, "_detector": None, "_predictor": None}

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        self._load()
        return [self._detect_one(_check_image(image)) for image in images]

    def _load(self) -> None:
        if self._predictor is not None:
            return
        try:
            import dlib
        except ImportError as error:
            raise DetectorLoadError("the dlib landmark backend needs dlib: pip install dlib-bin") from error
        model = face_recognition_model_path("shape_predictor_68_face_landmarks.dat")
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model))

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(image, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            # dlib rectangles are inclusive; store exclusive corners like the SFD boxes.
            box = (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))
            faces.append(Face(box=box, points=points, score=float(score)))
        return sorted(faces, key=lambda face: -face.score)


def face_recognition_model_path(name: str) -> Path:
    """Path of a model file shipped in the ``face-recognition-models`` wheel, found without importing it.

    Importing the package runs ``import pkg_resources``, which recent setuptools no longer provides, so the
    package folder is located through its import spec instead.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise DetectorLoadError(f"{name} ships in the face-recognition-models package: "
                                "pip install face-recognition-models")
    folder = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    path = folder / "models" / name
    if not path.is_file():
        raise DetectorLoadError(f"{path} is missing; reinstall it: pip install --force-reinstall "
                                "face-recognition-models")
    return path


class FaceAlignmentDetector(LandmarkDetector):
    """The paper's landmarks: ``face-alignment`` (Bulat & Tzimiropoulos 2017), SFD face detector + 2D FAN.

    Same-sized frames are stacked into BxCxHxW tensors of up to ``batch_size`` frames, so the SFD detector runs
    batched on ``device``; the library then runs FAN on each frame's face crops. The library downloads its
    weights into torch hub's ``checkpoints/`` folder on first use; they are loaded on the first ``detect`` call.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        import torch

        images = [_check_image(image) for image in images]
        model = self._load()
        results: list[list[Face]] = [[] for _ in images]
        for indices in _same_shape_batches(images, self.batch_size):
            stacked = np.stack([images[i] for i in indices])                    # BxHxWx3 uint8 RGB
            batch = torch.from_numpy(stacked).to(self.device).permute(0, 3, 1, 2).contiguous().float()  # BxCxHxW
            for index, faces in zip(indices, _detect_batch(model, batch)):
                results[index] = faces
        return results

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            import face_alignment
        except ImportError as error:
            raise DetectorLoadError("the face_alignment landmark backend needs the face-alignment package: "
                                    "pip install face-alignment (or use --backend dlib)") from error
        options = {}
        # face-alignment >= 1.5 wraps FAN in torch.compile by default; it recompiles for every new number of
        # faces in a frame, and if its warm-up compile fails it keeps the compiled module anyway.
        if "compile" in inspect.signature(face_alignment.FaceAlignment).parameters:
            options["compile"] = False
        try:
            self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=self.device,
                                                       face_detector="sfd", **options)
        except (OSError, RuntimeError, EOFError) as error:
            raise DetectorLoadError(_face_alignment_weights_help(error)) from error
        return self._model


def _detect_batch(model, batch) -> list[list[Face]]:
    """SFD boxes for a BxCxHxW batch, then FAN landmarks for each box, as Faces sorted by score."""
    boxes = model.face_detector.detect_from_batch(batch)
    with warnings.catch_warnings():
        # The library warns once for every frame without a face; an empty list says the same.
        warnings.filterwarnings("ignore", message="No faces were detected")
        landmarks = model.get_landmarks_from_batch(batch, detected_faces=boxes)
    results = []
    for frame_boxes, frame_points in zip(boxes, landmarks):
        # All faces of a frame come back concatenated into one (68 * n, 2) array.
        points = np.asarray(frame_points, np.float32).reshape(-1, NUM_POINTS, 2)
        faces = [Face(box=tuple(float(v) for v in box[:4]), points=face_points, score=float(box[4]))
                 for box, face_points in zip(frame_boxes, points)]
        results.append(sorted(faces, key=lambda face: -face.score))
    return results


def _same_shape_batches(images: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of ``images`` grouped by shape (only equal shapes stack) in chunks of at most ``batch_size``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return [group[start:start + batch_size] for group in groups.values()
            for start in range(0, len(group), batch_size)]


def face_alignment_weight_files() -> dict[str, Path]:
    """Where face-alignment looks for its two weight files (torch hub's ``checkpoints/``), by download URL.

    Copy the files there (same names) to use the backend on a machine without internet."""
    import torch.hub
    from face_alignment.api import models_urls as fan_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return {url: checkpoints / url.rsplit("/", 1)[-1] for url in (sfd_urls["s3fd"], fan_urls["2DFAN-4"])}


def _face_alignment_weights_help(error: BaseException) -> str:
    files = face_alignment_weight_files()
    missing = [f"{path} (from {url})" for url, path in files.items() if not path.is_file()]
    checkpoints = next(iter(files.values())).parent
    return (f"face-alignment could not load its model weights (it downloads them on first use; run once on a "
            f"machine with internet, or copy the files into {checkpoints}/, or use --backend dlib). "
            + (f"Missing: {'; '.join(missing)}. " if missing else "")
            + f"Cause: {type(error).__name__}: {error}")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


BACKENDS = ("dlib", "face_alignment")


def make_detector(backend: str, device: str = "cpu", batch_size: int = 32) -> LandmarkDetector:
    """The landmark detector for ``backend`` ("dlib": CPU, offline; "face_alignment": the paper's, GPU)."""
    if backend == "dlib":
        return DlibDetector()
    if backend == "face_alignment":
        return FaceAlignmentDetector(device=device, batch_size=batch_size)
    raise ValueError(f"unknown landmark backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
