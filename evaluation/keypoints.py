"""Keypoint metrics in the units published work uses: AKD, motion-transfer error and jitter at 256x256.

AKD follows first-order-model's pose-evaluation (``extract.py`` + ``cmp_kp.py``): a landmark network (2D FAN of
``face_alignment`` there; dlib's 68-point predictor is the offline stand-in here) on the real and the generated
frame, each resized to 256x256, the *first* face it returns (the best-scoring one: no tracking), and the mean
absolute difference of the 68 x and y coordinates in pixels of that 256x256 frame.  Frames where either side has
no detection are skipped, and counted.  Note the formula: a shift of (dx, dy) pixels gives (|dx| + |dy|) / 2,
not the Euclidean length.

The same units serve the cross-reenactment metrics, where there is no real frame of the result:

* motion-transfer error: driving points (the adapted landmarks, or the mesh the generator was given) against
  the points detected on the generated frame;
* jitter: per step t -> t+1, the detected points' motion minus the driving points' motion, in the same mean
  absolute coordinate form.  Following the driver exactly, however it moves, gives 0; a still driver and a
  generated face that trembles gives the tremble.

Points of an S x S frame map to the 256 frame with the pixel-centre convention of ``cv2.resize``.
"""
from __future__ import annotations

import cv2
import numpy as np

from dataset.landmarks import LandmarkDetector

PROTOCOL_SIZE = 256


def to_protocol_frame(points: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates in an ``size`` x ``size`` frame -> the same points in the 256x256 frame (float64)."""
    factor = PROTOCOL_SIZE / size
    return (np.asarray(points, np.float64) + 0.5) * factor - 0.5


def resize_to_protocol(images: list[np.ndarray]) -> list[np.ndarray]:
    """RGB uint8 frames resized to 256x256 (bicubic up, area down), as a face detector is given them."""
    out = []
    for image in images:
        interpolation = cv2.INTER_CUBIC if image.shape[0] < PROTOCOL_SIZE else cv2.INTER_AREA
        out.append(cv2.resize(np.ascontiguousarray(image), (PROTOCOL_SIZE, PROTOCOL_SIZE),
                              interpolation=interpolation))
    return out


def detect_first_faces(images: list[np.ndarray], detector: LandmarkDetector) -> np.ndarray:
    """(N, 68, 2) points of the first (best-scoring) face per frame at 256x256; NaN rows where none is found."""
    if not images:
        return np.zeros((0, 68, 2))
    faces = detector.detect(resize_to_protocol(images))
    return np.stack([found[0].points.astype(np.float64) if found else np.full((68, 2), np.nan)
                     for found in faces])


def keypoint_error(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(N,) mean absolute coordinate difference of two (N, K, 2) point arrays; NaN where either side is NaN."""
    points_a, points_b = np.asarray(points_a, np.float64), np.asarray(points_b, np.float64)
    if points_a.shape != points_b.shape or points_a.ndim != 3 or points_a.shape[2] != 2:
        raise ValueError(f"expected two (N, K, 2) point arrays of the same shape, got {points_a.shape} "
                         f"and {points_b.shape}")
    return np.abs(points_a - points_b).mean(axis=(1, 2))


def akd(points_a: np.ndarray, points_b: np.ndarray) -> tuple[float, int]:
    """(AKD in pixels over the frames where both sides have points, number of frames skipped)."""
    errors = keypoint_error(points_a, points_b)
    valid = np.isfinite(errors)
    return (float(errors[valid].mean()) if valid.any() else float("nan")), int((~valid).sum())


def jitter(detected: np.ndarray, driving: np.ndarray) -> tuple[float, int]:
    """(Mean over steps t -> t+1 of the detected points' motion minus the driving points' motion, steps skipped
    because a frame of the pair has no detection).  (N, K, 2) arrays in the same frame; N >= 2."""
    detected, driving = np.asarray(detected, np.float64), np.asarray(driving, np.float64)
    if detected.shape != driving.shape or len(detected) < 2:
        raise ValueError(f"jitter needs two (N >= 2, K, 2) arrays of the same shape, got {detected.shape} and "
                         f"{driving.shape}")
    return akd(np.diff(detected, axis=0), np.diff(driving, axis=0))
