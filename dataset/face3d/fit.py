"""Fitting detected face meshes into identity, expression and pose, transferring expressions, and storage.

HeadGAN (Doukas et al. 2021, Sec. 3.1) fits a 3D morphable model to every frame: the identity is averaged
over the video, expression and camera are per frame. With a dense landmark mesh (``backends.py``) instead of a
morphable model the same split is done geometrically:

    pixel vertices of frame t  =  scale[t] * (identity + expression[t]) @ rotation[t].T + translation[t]

* Pose: every frame's mesh is aligned to the mean face (``mesh.mean_face``) by a similarity transform
  (Umeyama 1991: least-squares rotation, isotropic scale and translation) estimated on the stable vertices only
  (``mesh.stable_vertices``: nose, upper cheeks, between the eyes), so that talking, blinking and brow raises
  do not tilt the estimated head. A second pass aligns every frame to the video's identity instead of the mean
  face, with Cauchy weights (scale: twice the frame's median residual) that discount the stable vertices that
  moved anyway (a sneer, a detector error).
* Canonical shape of a frame: its mesh brought back by the inverse transform. The identity is the mean canonical
  shape over the frames with a face; a frame's expression is its canonical shape minus the identity. Both are in
  the canonical frame of the mean face (x right, y down, z away, unit RMS radius), so expressions of different
  people are comparable and can be exchanged.
* Frames without a face (NaN rows) keep zero expression and the pose of the nearest frame with one (the
  earlier on a tie), so every frame renders, and ``valid`` says which were measured.

Without a morphable model's prior, the part of a person's shape that looks like a small rotation or scaling of
the mean face on the stable vertices is absorbed into the pose, consistently in every frame of the video; the
identity is then expressed in that slightly rotated frame. Expressions are unaffected, because the same
identity is subtracted in every frame.

Cross-person driving (``transfer``): the person's identity with the driver's expression, moved by the driver's
motion relative to the driver's first frame on top of the person's pose in a frame of their own (relative
motion, as in FOMM's relative mode): the person's face stays where it is in the person's image and turns, nods,
moves and scales as the driver does. Rotations compose in camera space (a driver turning 10 degrees to the
left turns the person 10 degrees to the left from wherever the person faces), translations are scaled by the
ratio of the two faces' sizes, scales multiply.

Storage: ``face3d.npz`` in a store's video folder (``dataset/store.py``), written by
``python -m dataset.face3d.extract_mesh STORE``: the identity as float32, the expressions as float16 (2.8 KB a
frame for 468 vertices; float16 keeps offsets of up to 0.25 of a unit-radius face to 1.2e-4, under 0.01 pixel
for a face 100 pixels across), scale, rotation and translation as float32, ``valid``, and the topology and
backend names: 3.0 KB a frame for the 48-frame demo videos.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from dataset import store
from dataset.face3d import mesh
from utils.atomic import atomic_file

FACE3D_FILE = "face3d.npz"
FACE3D_FORMAT = "face3d"
FACE3D_VERSION = 1
EXTRACT_COMMAND = "python -m dataset.face3d.extract_mesh STORE"


@dataclasses.dataclass
class FaceFit:
    """A video's fitted faces: one identity, per-frame expression and pose. N frames, V vertices."""

    identity: np.ndarray        # float32 (V, 3), canonical frame (x right, y down, z away; unit RMS radius)
    expression: np.ndarray      # float32 (N, V, 3), per-frame canonical offsets from the identity
    scale: np.ndarray           # float32 (N,), pixels per canonical unit
    rotation: np.ndarray        # float32 (N, 3, 3), canonical -> pixel axes (proper rotations)
    translation: np.ndarray     # float32 (N, 3), pixel position of the canonical origin (z: depth offset)
    valid: np.ndarray           # bool (N,), whether a mesh was detected in the frame (else pose copied)

    def __post_init__(self) -> None:
        self.identity = np.asarray(self.identity, np.float32)
        self.expression = np.asarray(self.expression, np.float32)
        self.scale = np.asarray(self.scale, np.float32)
        self.rotation = np.asarray(self.rotation, np.float32)
        self.translation = np.asarray(self.translation, np.float32)
        self.valid = np.asarray(self.valid, bool)
        count, vertices = len(self.expression), len(self.identity)
        expected = {"identity": (vertices, 3), "expression": (count, vertices, 3), "scale": (count,),
                    "rotation": (count, 3, 3), "translation": (count, 3), "valid": (count,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"FaceFit.{name} has shape {getattr(self, name).shape}, expected {shape} "
                                 f"for {count} frames of {vertices} vertices")

    @property
    def num_frames(self) -> int:
        return len(self.expression)

    def canonical(self, indices=None) -> np.ndarray:
        """float32 (n, V, 3) canonical shapes (identity + expression) of frames ``indices`` (default: all)."""
        indices = self._indices(indices)
        return self.identity[None] + self.expression[indices]

    def vertices(self, indices=None) -> np.ndarray:
        """float32 (n, V, 3) pixel coordinates of frames ``indices`` (default: all):
        ``scale * (identity + expression) @ rotation.T + translation``."""
        indices = self._indices(indices)
        return _pose(self.canonical(indices), self.scale[indices], self.rotation[indices],
                     self.translation[indices])

    def resized(self, factor: float) -> "FaceFit":
        """The same faces in the image resized by ``factor`` (pixel centres map as ``(p + 0.5) * factor - 0.5``
        in x and y, as ``cv2.resize`` and ``store.resize_sample`` map them; depth scales by ``factor``)."""
        if not factor > 0:
            raise ValueError(f"resize factor must be positive, got {factor}")
        shift = np.array([0.5 * factor - 0.5, 0.5 * factor - 0.5, 0.0], np.float32)
        return dataclasses.replace(self, scale=self.scale * np.float32(factor),
                                   translation=self.translation * np.float32(factor) + shift)

    def _indices(self, indices) -> np.ndarray:
        indices = np.arange(self.num_frames) if indices is None else np.atleast_1d(np.asarray(indices))
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"frame indices must be integers, got {indices.dtype}")
        if indices.size and (indices.min() < -self.num_frames or indices.max() >= self.num_frames):
            raise IndexError(f"frame indices {indices.min()}..{indices.max()} out of range for "
                             f"{self.num_frames} frames")
        return indices


def _pose(shapes: np.ndarray, scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(n, V, 3) shapes placed by per-frame similarity transforms -> float32 pixel coordinates."""
    rotation_t = np.asarray(rotation, np.float64).transpose(0, 2, 1)
    placed = (np.asarray(scale, np.float64)[:, None, None] * np.asarray(shapes, np.float64) @ rotation_t
              + np.asarray(translation, np.float64)[:, None, :])
    return placed.astype(np.float32)


def similarity_transforms(source: np.ndarray, target: np.ndarray,
                          weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame least-squares similarity ``target ~ s * source @ R.T + t`` (Umeyama 1991), batched.

    ``source``: (K, 3) or (N, K, 3); ``target``: (N, K, 3); ``weights``: (N, K) non-negative or None.
    Returns scale (N,), proper rotation (N, 3, 3) and translation (N, 3), in float64.
    """
    target = np.asarray(target, np.float64)
    source = np.broadcast_to(np.asarray(source, np.float64), target.shape)
    weights = np.ones(target.shape[:2]) if weights is None else np.asarray(weights, np.float64)
    weights = weights / weights.sum(axis=1, keepdims=True)
    source_mean = np.einsum("nk,nkc->nc", weights, source)
    target_mean = np.einsum("nk,nkc->nc", weights, target)
    source_centred = source - source_mean[:, None]
    target_centred = target - target_mean[:, None]
    covariance = np.einsum("nk,nki,nkj->nij", weights, target_centred, source_centred)   # N x 3 x 3
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(u @ vt))
    sign[sign == 0] = 1.0
    correction = np.ones((len(target), 3))
    correction[:, 2] = sign                                   # a reflection is never the answer
    rotation = (u * correction[:, None, :]) @ vt
    variance = np.einsum("nk,nkc,nkc->n", weights, source_centred, source_centred)
    scale = (singular * correction).sum(axis=1) / variance
    translation = target_mean - scale[:, None] * np.einsum("nij,nj->ni", rotation, source_mean)
    return scale, rotation, translation


def _canonical(meshes: np.ndarray, scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Inverse of the pose: pixel meshes (N, V, 3) -> canonical shapes, ``R^T (x - t) / s`` per frame."""
    return (meshes - translation[:, None, :]) @ rotation / scale[:, None, None]


def fit_video(meshes: np.ndarray) -> FaceFit:
    """Splits a video's meshes (N, V, 3) pixel coordinates, NaN rows where no face was found, into identity,
    expression and pose (see the module docstring). ``ValueError`` if no frame has a face."""
    meshes = np.asarray(meshes, np.float64)
    if meshes.ndim != 3 or meshes.shape[1:] != (mesh.NUM_VERTICES, 3):
        raise ValueError(f"fit_video takes (N, {mesh.NUM_VERTICES}, 3) {mesh.TOPOLOGY} meshes in pixel "
                         f"coordinates, got shape {meshes.shape}")
    valid = np.isfinite(meshes).all(axis=(1, 2))
    if not valid.any():
        raise ValueError(f"none of the {len(meshes)} frames has a face mesh; nothing to fit")
    found = meshes[valid]
    stable = mesh.stable_vertices()

    scale, rotation, translation = similarity_transforms(mesh.mean_face()[stable], found[:, stable])
    shapes = _canonical(found, scale, rotation, translation)
    identity = shapes.mean(axis=0)
    # Second pass: against the person's own face, discounting stable vertices that moved anyway.
    residual = np.linalg.norm(shapes[:, stable] - identity[stable], axis=2)          # n x K
    spread = 2.0 * np.median(residual, axis=1, keepdims=True) + 1e-9
    weights = 1.0 / (1.0 + (residual / spread) ** 2)
    scale, rotation, translation = similarity_transforms(identity[stable], found[:, stable], weights)
    shapes = _canonical(found, scale, rotation, translation)
    identity = shapes.mean(axis=0)

    count = len(meshes)
    expression = np.zeros((count, mesh.NUM_VERTICES, 3))
    expression[valid] = shapes - identity
    # Frames without a face take the pose of the nearest frame with one (the earlier one on a tie).
    measured = np.flatnonzero(valid)
    after = np.clip(np.searchsorted(measured, np.arange(count)), 0, len(measured) - 1)
    before = np.clip(after - 1, 0, len(measured) - 1)
    nearer_before = np.abs(measured[before] - np.arange(count)) <= np.abs(measured[after] - np.arange(count))
    source = np.where(nearer_before, before, after)
    return FaceFit(identity=identity, expression=expression, scale=scale[source], rotation=rotation[source],
                   translation=translation[source], valid=valid)


def fit_single(face_mesh: np.ndarray) -> FaceFit:
    """A one-frame fit (N = 1) of one face's mesh (V, 3): its canonical shape is the identity, no expression."""
    face_mesh = np.asarray(face_mesh, np.float64)
    if face_mesh.shape != (mesh.NUM_VERTICES, 3):
        raise ValueError(f"fit_single takes one ({mesh.NUM_VERTICES}, 3) mesh, got shape {face_mesh.shape}")
    if not np.isfinite(face_mesh).all():
        raise ValueError("fit_single: the mesh contains NaN or inf (no face was detected)")
    return fit_video(face_mesh[None])


def transfer(person: FaceFit, driver: FaceFit, person_frame: int = 0) -> np.ndarray:
    """float32 (N_driver, V, 3) pixel meshes: ``person``'s identity with ``driver``'s expression per frame,
    posed by the driver's motion since its first frame applied on top of the person's pose in
    ``person_frame`` (see the module docstring for the choices)."""
    if person.identity.shape != driver.identity.shape:
        raise ValueError(f"person and driver have different meshes: {person.identity.shape} and "
                         f"{driver.identity.shape} vertices")
    if not -person.num_frames <= person_frame < person.num_frames:
        raise IndexError(f"person_frame {person_frame} out of range for a person with {person.num_frames} frames")
    s0, r0, t0 = (np.float64(driver.scale[0]), driver.rotation[0].astype(np.float64),
                  driver.translation[0].astype(np.float64))
    sp, rp, tp = (np.float64(person.scale[person_frame]), person.rotation[person_frame].astype(np.float64),
                  person.translation[person_frame].astype(np.float64))
    relative_rotation = driver.rotation.astype(np.float64) @ r0.T                     # N x 3 x 3, camera space
    scale = sp * driver.scale.astype(np.float64) / s0
    rotation = relative_rotation @ rp
    translation = tp + (driver.translation.astype(np.float64) - t0) * (sp / s0)
    shapes = person.identity[None].astype(np.float64) + driver.expression
    return _pose(shapes, scale, rotation, translation)


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


def write_face3d(folder: Path, fit: FaceFit, meta: dict) -> Path:
    """Writes ``folder/face3d.npz`` atomically (temporary file in ``folder``, then a rename); returns its path.

    ``meta`` is stored as JSON; its ``"backend"`` and ``"topology"`` (default ``mesh.TOPOLOGY``) are also
    stored as their own fields, which ``read_face3d`` checks.
    """
    expression = fit.expression.astype(np.float16)
    if not np.isfinite(expression).all():
        raise ValueError("expression offsets overflow float16; the fit is broken (check the meshes' units)")
    topology = str(meta.get("topology", mesh.TOPOLOGY))
    path = Path(folder) / FACE3D_FILE
    with atomic_file(path, "wb") as f:
        np.savez(f, format=np.array(FACE3D_FORMAT), version=np.array(FACE3D_VERSION),
                 topology=np.array(topology), backend=np.array(str(meta.get("backend", "unknown"))),
                 meta=np.array(json.dumps(meta)), identity=fit.identity.astype(np.float32), expression=expression,
                 scale=fit.scale.astype(np.float32), rotation=fit.rotation.astype(np.float32),
                 translation=fit.translation.astype(np.float32), valid=fit.valid.astype(bool))
    return path


def read_face3d_meta(folder: Path) -> dict:
    """The ``meta`` dictionary stored with a video's fit, plus its ``topology`` and ``backend``."""
    with _open_face3d(folder) as data:
        return {**json.loads(str(data["meta"])), "topology": str(data["topology"]), "backend": str(data["backend"])}


def read_face3d(folder: Path) -> FaceFit:
    """The fit stored in ``folder/face3d.npz`` (``store.StoreError`` if missing or of another topology)."""
    with _open_face3d(folder) as data:
        return FaceFit(identity=data["identity"], expression=data["expression"].astype(np.float32),
                       scale=data["scale"], rotation=data["rotation"], translation=data["translation"],
                       valid=data["valid"])


def _open_face3d(folder: Path):
    path = Path(folder) / FACE3D_FILE
    if not path.is_file():
        raise store.StoreError(f"{folder} has no {FACE3D_FILE}; extract the 3D faces of the store first: "
                               f"{EXTRACT_COMMAND}")
    data = np.load(path, allow_pickle=False)
    if (str(data.get("format", "")) != FACE3D_FORMAT or int(data.get("version", -1)) != FACE3D_VERSION):
        data.close()
        raise store.StoreError(f"{path}: not a {FACE3D_FORMAT} file of version {FACE3D_VERSION}; "
                               f"rerun {EXTRACT_COMMAND} --overwrite")
    if str(data["topology"]) != mesh.TOPOLOGY:
        data.close()
        raise store.StoreError(f"{path} holds {data['topology']} meshes; this code reads {mesh.TOPOLOGY} "
                               f"(rerun {EXTRACT_COMMAND} --overwrite --backend mediapipe)")
    return data
