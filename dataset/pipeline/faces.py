"""Following a video's main face through its frames, and cutting the training crops around it.

VoxCeleb videos are face tracks of one speaker, but a frame may also show someone else (an interviewer, a face
on a poster) or nobody. Per frame we keep the face that continues the video's main face:

1. a face overlapping the last kept face (box IoU >= ``iou_threshold``): the best-overlapping one;
2. otherwise (first frame, a jump between clips, a face that moved) the most prominent face, scored by its box
   side minus the distance of its centre from the image centre: VoxCeleb's tracks are centred on the speaker,
   so the largest, most central face is the speaker's.

Frames without any face keep nothing; the caller drops and counts them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from dataset.landmarks import Face, LandmarkDetector, crop_and_resize
from dataset.pipeline.videos import (IMAGE_SUFFIXES, clip_frame_count, evenly_spaced, natural_key, read_clip_frames,
                                     read_image)


# Longest side of the copy of a frame that the detector sees. Detection cost and memory grow with the pixel count
# (dlib took 98 s and 7.2 GB on one 12000x12000 frame); a face needs far fewer pixels to be found, and the crop is
# still cut from the full-resolution frame. VoxCeleb's frames (224 to 1080 lines) are below it and unchanged.
DETECT_MAX_SIDE = 1280


def detect_faces(detector: LandmarkDetector, images: Sequence[np.ndarray],
                 max_side: int = DETECT_MAX_SIDE) -> list[list[Face]]:
    """``detector.detect`` on copies of ``images`` shrunk to at most ``max_side`` pixels a side; the faces come
    back in the pixel coordinates of the full images."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    small, factors = [], []
    for image in images:
        height, width = image.shape[:2]
        factor = min(1.0, max_side / max(height, width))
        if factor < 1.0:
            size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
            small.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            factors.append((width / size[0], height / size[1]))
        else:
            small.append(image)
            factors.append(None)
    found = detector.detect(small)
    del small
    return [faces if factor is None else [_enlarged(face, *factor) for face in faces]
            for faces, factor in zip(found, factors)]


def _enlarged(face: Face, sx: float, sy: float) -> Face:
    # Box edges scale directly; points are pixel centres and map as in cv2.resize.
    x0, y0, x1, y1 = face.box
    points = ((face.points + 0.5) * np.array([sx, sy], np.float32) - 0.5).astype(np.float32)
    return Face(box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), points=points, score=face.score)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def prominence(face: Face, image_shape: tuple[int, ...]) -> float:
    """Box side minus distance of the box centre from the image centre, in pixels: large and central wins."""
    x0, y0, x1, y1 = face.box
    height, width = image_shape[:2]
    side = np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))
    offset = np.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2)
    return float(side - offset)


def choose_main_faces(faces_per_frame: Sequence[Sequence[Face]], shapes: Sequence[tuple[int, ...]],
                      iou_threshold: float = 0.3) -> list[Face | None]:
    """The main face of every frame (None where the frame has no face); see the module docstring."""
    chosen: list[Face | None] = []
    previous: Face | None = None
    for faces, shape in zip(faces_per_frame, shapes):
        face = None
        if faces and previous is not None:
            overlap = max(faces, key=lambda f: box_iou(f.box, previous.box))
            if box_iou(overlap.box, previous.box) >= iou_threshold:
                face = overlap
        if face is None and faces:
            face = max(faces, key=lambda f: prominence(f, shape))
        chosen.append(face)
        previous = face or previous
    return chosen


def crop_faces(images: Sequence[np.ndarray], faces: Sequence[Face], size: int,
               scale: float = 1.8) -> tuple[list[np.ndarray], np.ndarray]:
    """Square ``size`` crops around each face and its 68 points in crop pixels ((N, 68, 2) float32)."""
    crops, points = [], []
    for image, face in zip(images, faces):
        crop, moved = crop_and_resize(image, face.points, size, scale)
        crops.append(crop)
        points.append(moved.astype(np.float32))
    return crops, np.stack(points) if points else np.zeros((0, 68, 2), np.float32)


def read_frames(path: str | Path, max_frames: int | None = None) -> list[np.ndarray]:
    """RGB uint8 frames of a video file, of a folder of images (natural order) or of one image file;
    ``max_frames`` evenly spaced."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [read_image(path)]
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [read_image(files[i]) for i in evenly_spaced(len(files), max_frames or 0)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file or folder of images")
    if max_frames:
        wanted = evenly_spaced(clip_frame_count(path), max_frames)
        frames = read_clip_frames(path, wanted)
        frames = [frames[i] for i in wanted if i in frames]
    else:
        frames = [image for _, image in sorted(_all_clip_frames(path).items())]
    if not frames:
        raise ValueError(f"{path}: cannot decode any frame (is it a video?)")
    return frames


def _all_clip_frames(path: Path) -> dict[int, np.ndarray]:
    # Read to the end rather than trusting the container's frame count, which is often off by a few.
    capture = cv2.VideoCapture(str(path))
    frames: dict[int, np.ndarray] = {}
    try:
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            frames[len(frames)] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return frames


def read_face_crops(path: str | Path, detector: LandmarkDetector, size: int, max_frames: int | None = None,
                    scale: float = 1.8) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The main face of every frame of a video or image folder, cut as the training data is.

    Returns (crops RGB uint8 ``size`` x ``size``, points (N, 68, 2) float32 in crop pixels, number of frames
    dropped because no face was found). Used by fine-tuning and reenactment so that a new person's frames are
    preprocessed exactly like the training store (same detector interface, tracking and crop).
    """
    return main_face_crops(read_frames(path, max_frames), detector, size, scale, str(path))


def main_face_crops(frames: list[np.ndarray], detector: LandmarkDetector, size: int, scale: float = 1.8,
                    name: str = "frames") -> tuple[list[np.ndarray], np.ndarray, int]:
    """``read_face_crops`` on frames already in memory (``name`` is what an error calls them)."""
    faces = choose_main_faces(detect_faces(detector, frames), [f.shape for f in frames])
    kept = [(frame, face) for frame, face in zip(frames, faces) if face is not None]
    if not kept:
        raise ValueError(f"{name}: no face found in any of its {len(frames)} frames")
    crops, points = crop_faces([f for f, _ in kept], [face for _, face in kept], size, scale)
    return crops, points, len(frames) - len(kept)
