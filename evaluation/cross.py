"""Cross-reenactment: a test person driven by another test identity's video, and what to measure there.

Without a ground-truth frame, a result is judged by four properties (all per person-driver pair):

* identity preservation ``identity_<net>``: mean cosine similarity of the embeddings of every generated frame
  and every real held-out frame of the person (higher is better);
* identity leakage ``leakage_<net>``: mean cosine similarity of generated frame t and the driver's frame t
  (lower is better: a model that copies the driver's face shape scores high).  ``pair_similarity_<net>``, the
  same between the two real people, is the level at which leakage means nothing;
* motion transfer ``motion_<detector>``: the driving points (adapted landmarks, or the transferred 3D mesh)
  against the points detected on the generated frames (``evaluation.keypoints``); for HeadGAN also the head
  rotation (``pose_<detector>_deg``, geodesic angle) and expression (``expression_<detector>``, RMS in percent
  of the face radius) of 3D fits of the two;
* temporal stability: ``jitter_<detector>`` (``keypoints.jitter``) and ``flicker`` (``evaluation.temporal``),
  next to ``flicker_driver``, the flicker of the driver's real video.
"""
from __future__ import annotations

import numpy as np

from dataset.pipeline.videos import evenly_spaced
from evaluation.metrics import cosine


def cross_pairs(videos: list[dict], persons: int, drivers: int) -> list[tuple[dict, dict]]:
    """(person video, driver video) pairs: ``persons`` person videos spread over the list, each with ``drivers``
    videos of *other* identities, spread over those and shifted per person so that drivers vary.

    ``ValueError`` when the videos show fewer than two identities."""
    if len({v["identity"] for v in videos}) < 2:
        raise ValueError("cross-reenactment needs test videos of at least two identities; this store's test split "
                         f"has only {sorted({v['identity'] for v in videos})} (rebuild it with more "
                         "--test-identities)")
    pairs = []
    for rank, index in enumerate(evenly_spaced(len(videos), persons)):
        person = videos[index]
        others = [v for v in videos if v["identity"] != person["identity"]]
        offset = rank % len(others)
        rotated = others[offset:] + others[:offset]
        pairs += [(person, rotated[i]) for i in evenly_spaced(len(rotated), drivers)]
    return pairs


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def identity_similarity(generated: np.ndarray, person: np.ndarray) -> float:
    """Mean cosine similarity over all (generated frame, real person frame) embedding pairs."""
    return float((_unit(generated) @ _unit(person).T).mean())


def leakage(generated: np.ndarray, driver: np.ndarray) -> float:
    """Mean cosine similarity of generated frame t and driver frame t (same count of frames)."""
    if len(generated) != len(driver):
        raise ValueError(f"{len(generated)} generated frames but {len(driver)} driver frames")
    return float(cosine(generated, driver).mean())


def rotation_angles_deg(rotations_a: np.ndarray, rotations_b: np.ndarray) -> np.ndarray:
    """(N,) geodesic angles in degrees between two (N, 3, 3) rotation arrays."""
    relative = np.asarray(rotations_a, np.float64) @ np.swapaxes(np.asarray(rotations_b, np.float64), 1, 2)
    cos = (np.trace(relative, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def fit_errors(detected_meshes: np.ndarray, driving_meshes: np.ndarray) -> dict:
    """Head pose and expression errors between 3D fits of the meshes detected on the generated frames (NaN rows
    where none) and of the driving meshes: {"pose_deg", "expression", "skipped"} (NaN values when no frame has
    a detected mesh)."""
    from dataset.face3d.fit import fit_video

    valid = np.isfinite(detected_meshes).all(axis=(1, 2))
    if not valid.any():
        return {"pose_deg": float("nan"), "expression": float("nan"), "skipped": int(len(valid))}
    generated, driving = fit_video(detected_meshes), fit_video(driving_meshes)
    angles = rotation_angles_deg(generated.rotation[valid], driving.rotation[valid])
    # Expressions live in the mean face's canonical frame (unit RMS radius), so percent of the face's radius.
    difference = generated.expression[valid] - driving.expression[valid]
    expression = 100 * np.sqrt((difference ** 2).sum(axis=2).mean(axis=1))
    return {"pose_deg": float(angles.mean()), "expression": float(expression.mean()),
            "skipped": int((~valid).sum())}
