"""Landmark adaptation for cross-person reenactment: the driver's expression and head motion on the person's face.

Driving person B with person A's raw landmarks makes B's generated face take A's shape (jaw width, eye distance,
nose length), because G renders whatever face the landmark image outlines. Zakharov et al. 2019 drive with the
raw landmarks of another person and note this identity leak as a limitation (Sec. 5); here the driver's motion
is moved onto the person's own landmarks instead:

1. A reference shape of the driver: by default its *mean* face (every frame brought into a common pose by a
   similarity on the stable points, then averaged), or its first frame (``reference="first"``).
   The person's ``reference_points`` are the mean of the person's frames, so mean-to-mean puts the driver's
   average expression onto the person's average expression; the first frame would instead turn a driver who
   starts mid-word or mid-blink into a person whose lips or lids cross when the driver's close.
2. The similarity S (rotation, uniform scale, translation; Umeyama 1991) from the driver's reference to the
   person's points, fitted on stable points (eye corners and nose) that expressions barely move.
3. Per frame t, the driver's head motion H_t: the similarity from the reference to frame t on the same points,
   and the expression: frame t brought back into the reference pose, minus the reference.
4. The person's points are moved into the driver's reference frame (S^-1), the expression is added, the head
   motion H_t applied, and the result mapped back with S:  out_t = S(H_t(S^-1(person) + expression_t)).

So a driver frame with the reference expression gives exactly the person's face, moved as the driver's head
moved; expressions arrive scaled and rotated by S; and a driver adapted onto its own reference returns its own
points unchanged. Out-of-plane head rotation (yaw, pitch) is not a similarity: it reaches the person as
displacements of the inner face, like an expression.

5. Displacements add to a face whose lids and lips may be more closed than the driver's reference (a person
   whose frames mostly keep the mouth shut, driven by a talker): the driver closing its mouth would then push
   the person's lower lip above the upper one. Lids and inner lips that would cross are moved apart instead,
   both by half, until they meet (or overlap as far as the driver's own do in that frame, which keeps a driver
   adapted onto itself unchanged).
"""
from __future__ import annotations

import numpy as np

from dataset.landmarks import NUM_POINTS

# Nose bridge and base, and the four eye corners: rigid with the skull, so they measure head pose and face size.
# Lids, brows, lips and jaw move with expressions and are left out.
STABLE_POINTS = np.array([27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45])
REFERENCES = ("mean", "first")
# (upper, lower) lid and inner-lip points that face each other across an eye or the mouth.
CLOSING_PAIRS = np.array([(37, 41), (38, 40), (43, 47), (44, 46), (61, 67), (62, 66), (63, 65)])


def fit_similarity(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``target ~ source @ A.T + t`` (Umeyama 1991), batched over leading axes.

    ``source`` and ``target`` are (..., K, 2) point sets (broadcast against each other); returns ``A`` (..., 2, 2),
    rotation times uniform scale (never a reflection), and ``t`` (..., 2).
    """
    source, target = np.broadcast_arrays(np.asarray(source, np.float64), np.asarray(target, np.float64))
    source_mean, target_mean = source.mean(axis=-2), target.mean(axis=-2)
    source_c, target_c = source - source_mean[..., None, :], target - target_mean[..., None, :]
    covariance = np.swapaxes(target_c, -1, -2) @ source_c / source.shape[-2]   # (..., 2, 2)
    u, singular, vt = np.linalg.svd(covariance)
    # Flip the weakest axis where the best orthogonal map would be a mirror image.
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign = np.where(sign == 0, 1.0, sign)
    flip = np.stack([np.ones_like(sign), sign], axis=-1)                          # (..., 2)
    rotation = (u * flip[..., None, :]) @ vt
    variance = (source_c ** 2).sum(axis=(-1, -2)) / source.shape[-2]
    if np.any(variance <= 1e-12):
        raise ValueError("cannot fit a similarity: the stable landmarks of a face coincide")
    scale = (singular * flip).sum(axis=-1) / variance
    linear = scale[..., None, None] * rotation
    translation = target_mean - (linear @ source_mean[..., None])[..., 0]
    return linear, translation


def apply_similarity(points: np.ndarray, linear: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``points @ linear.T + translation`` for (..., P, 2) points and (..., 2, 2), (..., 2) similarities."""
    return points @ np.swapaxes(linear, -1, -2) + translation[..., None, :]


def invert_similarity(linear: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inverse = np.linalg.inv(linear)
    return inverse, -(inverse @ translation[..., None])[..., 0]


def reference_shape(points: np.ndarray, reference: str = "mean") -> np.ndarray:
    """The driver's reference face (68, 2): its first frame, or its pose-normalised mean (see module docstring).

    The mean is one step of generalised Procrustes: every frame is mapped by a similarity onto the plain mean of
    all frames (on the stable points) and the mapped frames are averaged, so head motion does not blur it and
    it sits in the driver's average pose.
    """
    points = _check_sequence(points)
    if reference == "first":
        return points[0].copy()
    if reference != "mean":
        raise ValueError(f"unknown reference {reference!r}; valid references: {', '.join(REFERENCES)}")
    plain_mean = points.mean(axis=0)
    linear, translation = fit_similarity(points[:, STABLE_POINTS], plain_mean[STABLE_POINTS])
    return apply_similarity(points, linear, translation).mean(axis=0)


def adapt_landmarks(driver_points: np.ndarray, person_points: np.ndarray,
                    reference: str | np.ndarray = "mean") -> np.ndarray:
    """The driver's expression and head motion on the person's face: (N, 68, 2), (68, 2) -> (N, 68, 2).

    Coordinates are crop pixels; driver and person crops should be cut the same way (``read_face_crops``) but
    need not be of the same size. ``reference`` names how the driver's reference face is taken from
    ``driver_points`` ("mean", "first"), or is that face itself, (68, 2): a live camera adapts frame by frame
    against a reference fixed from its first frames (``inference.live``). See the module docstring.
    """
    driver = _check_sequence(driver_points)
    person = _check_face(person_points, "person_points")
    ref = _check_face(reference, "reference") if isinstance(reference, np.ndarray) else \
        reference_shape(driver, reference)
    # H_t: reference -> frame t, and the expression left once the head motion is undone.
    motion = fit_similarity(ref[STABLE_POINTS], driver[:, STABLE_POINTS])
    expression = apply_similarity(driver, *invert_similarity(*motion)) - ref
    # S: driver reference -> person; the person's face is animated in the driver's reference frame.
    to_person = fit_similarity(ref[STABLE_POINTS], person[STABLE_POINTS])
    person_in_driver = apply_similarity(person, *invert_similarity(*to_person))
    animated = apply_similarity(person_in_driver + expression, *motion)
    adapted = apply_similarity(animated, *to_person)
    return uncross_lids_and_lips(adapted, np.minimum(closing_gaps(driver), 0.0)).astype(np.float32)


def closing_gaps(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, len(CLOSING_PAIRS)): how far each lower lid or lip point lies below its upper partner,
    along the face's downward axis (perpendicular to the line through the outer eye corners); negative if above.
    """
    return ((points[:, CLOSING_PAIRS[:, 1]] - points[:, CLOSING_PAIRS[:, 0]]) * _face_down(points)).sum(axis=-1)


def uncross_lids_and_lips(points: np.ndarray, lowest: np.ndarray) -> np.ndarray:
    """Moves every CLOSING_PAIRS pair whose gap is below ``lowest`` (N, pairs) apart along the face's downward
    axis, both points by half, until the gap is ``lowest``."""
    points = points.copy()
    shortfall = np.minimum(closing_gaps(points) - lowest, 0.0)[..., None] * _face_down(points)  # (N, pairs, 2)
    points[:, CLOSING_PAIRS[:, 0]] += shortfall / 2
    points[:, CLOSING_PAIRS[:, 1]] -= shortfall / 2
    return points


def _face_down(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, 1, 2): unit vectors from the brows towards the chin, square to the outer eye corners."""
    across = points[:, 45] - points[:, 36]
    across = across / np.maximum(np.linalg.norm(across, axis=-1, keepdims=True), 1e-9)
    # A quarter turn in image coordinates (y pointing down): left-to-right across the eyes becomes top-to-bottom.
    return np.stack([-across[:, 1], across[:, 0]], axis=-1)[:, None, :]


def _check_face(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.shape != (NUM_POINTS, 2):
        raise ValueError(f"{name} must be ({NUM_POINTS}, 2), got {points.shape}")
    return points


def _check_sequence(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != (NUM_POINTS, 2) or len(points) == 0:
        raise ValueError(f"expected driver landmarks shaped (N, {NUM_POINTS}, 2) with N >= 1, got {points.shape}")
    return points
