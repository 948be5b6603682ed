"""Built-in demo data: short talking-head clips animated from real face photos that installed packages ship.

    python -m dataset.demo --out data/demo                       # 8 identities x 3 clips x 48 frames, 256x256
    python -m dataset.demo --out data/demo --identities 12 --frames 96 --size 128 --seed 1

The layout follows VoxCeleb2, ``OUT/idNNNNN/VIDEO_ID/NNNNN.mp4`` (one utterance clip per video folder, video
ids unique over the whole set), MPEG-4 Part 2 (``mp4v``) at 25 fps, so the real preprocessing reads it
unchanged. ``OUT/demo_manifest.json`` lists every identity with its source photo, recipe and clips.

Sources: ``skimage.data.astronaut()`` (Eileen Collins) and matplotlib's ``sample_data/grace_hopper.jpg``.
Their 68 landmarks are detected once with ``DlibDetector``. Identities 1 and 2 are the photos themselves;
the others are derived by ``RECIPES`` (mirroring, face-shape warps, skin tone, hair / headwear colour,
background colour); beyond ``len(RECIPES)`` identities, recipes are drawn at random from the seed.

Animation (per frame): the landmarks are moved by a smooth random head pose (rotation, translation, scale and
a pseudo-yaw that slides the inner face sideways), speech-like mouth opening (lower lips and chin follow a
3-5 Hz syllable rhythm under a talk/pause envelope), blinks and eyebrow raises; the photo is then warped so
that the face follows them (piecewise-affine warp over a Delaunay mesh of the landmarks, a head ring that
moves rigidly with the pose, and the fixed image border), and the opened mouth is filled with a dark interior.
Everything is deterministic given ``--seed``.

Soundtrack: every clip carries a speech-like AAC track (16 kHz mono) made from its own mouth signal, so that the
audio holds real information about the mouth (HeadGAN's audio conditioning learns from it). A voiced source, a
harmonic series at the identity's pitch (100-220 Hz, drawn per identity) with a slow intonation, is shaped by
three formant resonances: the first rises from 300 to 800 Hz as the mouth opens, the second drifts like changing
vowels. Its loudness follows the opening (silence when closed, frame i's opening held at (i + 0.5) / 25 s as in
``dataset/audio.py``), with breath noise while the mouth is open and a faint noise floor.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dataset.landmarks import DlibDetector, crop_and_resize, flip_landmarks

FPS = 25
MANIFEST_NAME = "demo_manifest.json"
# Frames are framed a little wider than the preprocessing crop (1.8) so that a later crop around the moving
# head still finds image content on every side.
FRAME_SCALE = 2.2
# Independent random streams under one --seed: identity recipes, clip motions and voices never share numbers.
RECIPE_STREAM, MOTION_STREAM, VOICE_STREAM = 1, 2, 3
# The soundtrack's sample rate: the rate dataset/audio.py decodes at, so reading it back needs no resampling.
AUDIO_RATE = 16000
# The widest mouth opening sample_motion draws, as a fraction of the face height: the soundtrack's full volume.
MOUTH_OPEN_MAX = 0.11

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE_BRIDGE = np.arange(27, 31)
LOWER_NOSE = np.arange(31, 36)
RIGHT_EYE = np.arange(36, 42)
LEFT_EYE = np.arange(42, 48)
OUTER_LIPS = np.arange(48, 60)
INNER_LIPS = np.arange(60, 68)


# --------------------------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one identity is made from a source photo. Lengths are fractions of the face height (brow to chin)."""

    source: str                              # "astronaut" or "grace_hopper"
    description: str
    mirror: bool = False                     # mirror the photo (landmarks relabelled by flip_landmarks)
    jaw_width: float = 1.0                   # jaw line scaled sideways about the face's vertical axis
    chin_length: float = 0.0                 # chin (and a little of the mouth) moved down
    nose_length: float = 0.0                 # nose tip and nostrils moved down
    eye_scale: float = 1.0                   # eyes scaled about their centres
    skin: tuple[float, float, float] = (0.0, 1.0, 1.0)   # face and neck: hue shift (deg), saturation, value factor
    hair: tuple[float, float, float] | None = None       # above the forehead: new hue (deg), saturation, value
    background: tuple[int, int, int] | None = None       # RGB colour washed over everything outside the head


RECIPES: tuple[Recipe, ...] = (
    Recipe("astronaut", "the photo itself"),
    Recipe("grace_hopper", "the photo itself"),
    Recipe("astronaut", "mirrored, wider jaw, darker warm skin, dark brown hair", mirror=True, jaw_width=1.1,
           skin=(-6.0, 1.1, 0.72), hair=(20.0, 0.5, 0.3)),
    Recipe("grace_hopper", "mirrored, narrower face, longer nose, teal background", mirror=True, jaw_width=0.88,
           nose_length=0.06, background=(0, 150, 140)),
    Recipe("astronaut", "big eyes, red hair, purple background", eye_scale=1.3, hair=(5.0, 1.8, 0.9),
           background=(120, 40, 160)),
    Recipe("grace_hopper", "wider jaw, longer chin, dark skin, maroon cap", jaw_width=1.12, chin_length=0.06,
           skin=(-4.0, 1.2, 0.5), hair=(345.0, 2.2, 1.8)),
    Recipe("astronaut", "long narrow face, longer nose, pale skin, blond hair, green background",
           jaw_width=0.9, chin_length=0.08, nose_length=0.04, skin=(4.0, 0.6, 1.12), hair=(45.0, 0.9, 1.5),
           background=(40, 140, 60)),
    Recipe("grace_hopper", "mirrored, big eyes, olive skin, orange background", mirror=True, eye_scale=1.2,
           skin=(12.0, 1.35, 0.78), background=(230, 120, 20)),
)


def random_recipe(rng: np.random.Generator, index: int) -> Recipe:
    """A recipe for identities beyond ``RECIPES``: every change drawn at random, all applied."""
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    return Recipe(
        source=("astronaut", "grace_hopper")[index % 2],
        description="random recipe",
        mirror=bool(rng.integers(0, 2)),
        jaw_width=float(rng.uniform(0.88, 1.15)),
        chin_length=float(rng.uniform(-0.02, 0.08)),
        nose_length=float(rng.uniform(0.0, 0.06)),
        eye_scale=float(rng.uniform(0.9, 1.3)),
        skin=(float(rng.uniform(-10, 15)), float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.5, 1.15))),
        hair=(float(rng.uniform(0, 360)), float(rng.uniform(0.5, 1.8)), float(rng.uniform(0.4, 1.4))),
        background=background,
    )


def identity_recipes(identities: int, seed: int) -> list[Recipe]:
    """The first ``identities`` recipes: the fixed table, then random ones drawn from ``seed``."""
    recipes = list(RECIPES[:identities])
    for index in range(len(RECIPES), identities):
        recipes.append(random_recipe(np.random.default_rng([seed, RECIPE_STREAM, index]), index))
    return recipes


def load_source_photos() -> dict[str, np.ndarray]:
    """The two real face photos, RGB uint8: skimage's astronaut and matplotlib's Grace Hopper sample."""
    import matplotlib
    from skimage import data

    grace_path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    grace = cv2.imread(str(grace_path), cv2.IMREAD_COLOR)
    if grace is None:
        raise FileNotFoundError(f"matplotlib's sample photo is missing: {grace_path}")
    return {"astronaut": data.astronaut(), "grace_hopper": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB)}


@functools.lru_cache(maxsize=1)
def source_faces() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each source photo with its 68 landmarks, detected with dlib once per process (arrays are read-only)."""
    photos = load_source_photos()
    detections = DlibDetector().detect(list(photos.values()))
    faces = {}
    for (name, photo), found in zip(photos.items(), detections):
        if not found:
            raise RuntimeError(f"dlib found no face on the {name} photo")
        points = found[0].points
        photo.setflags(write=False)
        points.setflags(write=False)
        faces[name] = (photo, points)
    return faces


def framed_sources(size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each source photo cut around its face to ``size x size``, with the landmarks in frame coordinates."""
    return {name: crop_and_resize(photo, points, size, scale=FRAME_SCALE)
            for name, (photo, points) in source_faces().items()}


def make_identity(image: np.ndarray, points: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``recipe`` to a framed photo: mirror, then reshape the face, then recolour. Returns image, points."""
    size = image.shape[0]
    if recipe.mirror:
        image, points = np.ascontiguousarray(image[:, ::-1]), flip_landmarks(points, size)
    reshaped = reshape_face(points, recipe)
    if not np.allclose(reshaped, points):
        image = face_warp(points, size).warp(image, control_points(points, size, reshaped))
        points = reshaped
    if recipe.skin != (0.0, 1.0, 1.0):
        image = _recolour(image, skin_mask(points, size), *recipe.skin, absolute_hue=False)
    if recipe.hair is not None:
        image = _recolour(image, hair_mask(image, points), *recipe.hair, absolute_hue=True)
    if recipe.background is not None:
        image = _colour_wash(image, 1.0 - head_mask(points, size), recipe.background)
    return image, points.astype(np.float32)


def reshape_face(points: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The recipe's face-shape changes as moved landmarks (jaw width, chin and nose length, eye size)."""
    out = points.astype(np.float64).copy()
    centre_x = points[:, 0].mean()
    height = _face_height(points)
    # Ears (jaw ends) stay put; the change ramps up over three points towards the chin.
    ramp = np.minimum(1.0, np.minimum(JAW, 16 - JAW) / 3.0)
    out[JAW, 0] = centre_x + (points[JAW, 0] - centre_x) * (1 + (recipe.jaw_width - 1) * ramp)
    out[JAW, 1] += recipe.chin_length * height * _chin_weights()
    out[OUTER_LIPS, 1] += 0.3 * recipe.chin_length * height
    out[INNER_LIPS, 1] += 0.3 * recipe.chin_length * height
    out[LOWER_NOSE, 1] += recipe.nose_length * height
    out[NOSE_BRIDGE, 1] += recipe.nose_length * height * np.array([0.0, 0.25, 0.5, 0.8])
    for eye in (RIGHT_EYE, LEFT_EYE):
        centre = points[eye].mean(axis=0)
        out[eye] = centre + (points[eye] - centre) * recipe.eye_scale
    return out


# --------------------------------------------------------------------------------------------------------------
# Region masks and colour changes
# --------------------------------------------------------------------------------------------------------------


def _face_height(points: np.ndarray) -> float:
    return float(np.ptp(points[:, 1]))


def _chin_weights() -> np.ndarray:
    """How much each jaw point follows the chin: 1 at the chin, 0 at the ears (the jaw pivots near them)."""
    return np.cos((JAW - 8) / 8 * np.pi / 2) ** 2


def _soft_polygon(polygons: list[np.ndarray], size: int, feather: float) -> np.ndarray:
    """Float mask in [0, 1] of filled convex polygons, blurred by ``feather`` x size."""
    mask = np.zeros((size, size), np.float32)
    for polygon in polygons:
        cv2.fillConvexPoly(mask, np.round(polygon).astype(np.int32), 1.0)
    sigma = max(feather * size, 0.5)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)


def skin_mask(points: np.ndarray, size: int) -> np.ndarray:
    """Face, forehead and neck; the eyes keep their colour and the lips change half as much as the skin."""
    height = _face_height(points)
    forehead = points[BROWS] - [0, 0.3 * height]
    neck = points[JAW[3:14]] + [0, 0.6 * height]
    face = _soft_polygon([_hull(np.concatenate([points[JAW], forehead, neck]))], size, 0.03)
    eyes = _soft_polygon([_hull(points[RIGHT_EYE]), _hull(points[LEFT_EYE])], size, 0.01)
    lips = _soft_polygon([_hull(points[OUTER_LIPS])], size, 0.01)
    return np.clip(face - 2.0 * eyes - 0.5 * lips, 0.0, 1.0)


def head_mask(points: np.ndarray, size: int) -> np.ndarray:
    """Soft ellipse around the whole head (face, hair or headwear, ears) and the neck below it."""
    mask = _head_ellipse_mask(points, size)
    neck = points[JAW[4:13]]
    neck_down = np.concatenate([neck, neck + [0, size]])
    cv2.fillConvexPoly(mask, np.round(_hull(neck_down)).astype(np.int32), 1.0)
    return cv2.GaussianBlur(mask, (0, 0), 0.03 * size)


def hair_mask(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Hair (or headwear): head-ellipse pixels above the cheekbones, outside the face, coloured like the hair.

    The hair colour is sampled just above the forehead; weighting by colour similarity keeps the sky, flag or
    wall that the ellipse also covers from being recoloured.
    """
    size = image.shape[0]
    height = _face_height(points)
    mask = _head_ellipse_mask(points, size)
    # Hair also frames the face at the sides down to the cheekbones; below that it is neck and collar.
    cut = int(round(points[[0, 16], 1].mean() + 0.1 * height))
    mask[cut:] = 0.0
    forehead = points[BROWS] - [0, 0.22 * height]
    face = np.zeros_like(mask)
    cv2.fillConvexPoly(face, np.round(_hull(np.concatenate([points[JAW], forehead]))).astype(np.int32), 1.0)
    region = cv2.GaussianBlur(np.clip(mask - face, 0.0, 1.0), (0, 0), 0.015 * size)
    return region * _colour_similarity(image, _hair_sample(image, points))


def _hair_sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Median colour of a band 0.3-0.45 face heights above the eyebrows, over the middle half of the face."""
    height = _face_height(points)
    low, high = points.min(axis=0), points.max(axis=0)
    centre_x, half_width = (low[0] + high[0]) / 2, (high[0] - low[0]) / 4
    top = points[BROWS, 1].min()
    y0, y1 = (int(np.clip(top - f * height, 0, image.shape[0] - 1)) for f in (0.45, 0.3))
    x0, x1 = int(max(centre_x - half_width, 0)), int(centre_x + half_width)
    return np.median(image[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3), axis=0)


def _colour_similarity(image: np.ndarray, colour: np.ndarray, spread: float = 20.0) -> np.ndarray:
    """exp(-(d / spread)^2) of each pixel's CIELAB distance d to ``colour``; lightness counts less (shading)."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    reference = cv2.cvtColor(colour.astype(np.float32).reshape(1, 1, 3) / 255.0, cv2.COLOR_RGB2Lab)
    difference = (lab - reference) * np.array([0.7, 1.0, 1.0], np.float32)
    return np.exp(-np.sum(difference ** 2, axis=2) / spread ** 2)


def _head_ellipse_mask(points: np.ndarray, size: int) -> np.ndarray:
    centre, axes = _head_ellipse(points)
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))), (int(axes[0]), int(axes[1])), 0, 0, 360,
                1.0, -1)
    return mask


def _head_ellipse(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-axes of an ellipse holding the head: the landmarks stop at the eyebrows."""
    low, high = points.min(axis=0), points.max(axis=0)
    width, height = high - low
    centre = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2 - 0.25 * height])
    return centre, np.array([0.85 * width, 0.85 * height])


def _recolour(image: np.ndarray, mask: np.ndarray, hue: float, saturation: float, value: float,
              absolute_hue: bool) -> np.ndarray:
    """Change hue (shift, or set to ``hue`` degrees), scale saturation and value, blended in by ``mask``."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)    # H in degrees, S and V in 0..1
    hsv[..., 0] = hue if absolute_hue else (hsv[..., 0] + hue) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * value, 0.0, 1.0)
    changed = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return _blend(image, changed, mask)


def _colour_wash(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Replace the colour under ``mask`` by ``colour``, keeping the image's light and shade."""
    luminance = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] / 255.0
    washed = np.asarray(colour, np.float32) * (0.35 + 0.9 * luminance)
    return _blend(image, washed, 0.85 * mask)


def _blend(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    alpha = mask[..., None]
    mixed = image.astype(np.float32) * (1.0 - alpha) + other * alpha
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Piecewise-affine warp
# --------------------------------------------------------------------------------------------------------------


def control_points(points: np.ndarray, size: int, moved: np.ndarray | None = None,
                   head_motion: np.ndarray | None = None) -> np.ndarray:
    """Warp control points: the 68 landmarks (``moved`` if given), a head ring, and the fixed image border.

    The ring (the upper half of an ellipse around the head, from ear to ear over the top, where the landmarks
    end) carries forehead, hair and ears along with the head: it follows ``head_motion`` (a 2x3 similarity) but
    not the expression. Below the ears the jaw line itself meets the border, so a dropping chin stretches the
    neck instead of folding the mesh against a ring point under it. Border points stay put, so only the
    background and the neck stretch.
    """
    moved = points if moved is None else moved
    centre, axes = _head_ellipse(points)
    angles = np.linspace(np.pi, 2 * np.pi, 9)                # image y points down: these run over the top
    ring = centre + axes * 1.05 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if head_motion is not None:
        ring = ring @ head_motion[:, :2].T + head_motion[:, 2]
    margin = 0.05 * size
    ring = np.clip(ring, margin, size - 1 - margin)
    edge = np.linspace(0.0, size - 1, 5)
    border = np.unique(np.concatenate([
        np.stack([edge, np.zeros(5)], 1), np.stack([edge, np.full(5, size - 1.0)], 1),
        np.stack([np.zeros(5), edge], 1), np.stack([np.full(5, size - 1.0), edge], 1),
    ]), axis=0)
    return np.concatenate([moved, ring, border]).astype(np.float64)


class MeshWarp:
    """Backward piecewise-affine warp over a Delaunay triangulation of fixed source control points.

    For a target set of control points, every output pixel is labelled with the target triangle that covers it
    (one ``cv2.fillConvexPoly`` per triangle into an index image), and sampled from the source through that
    triangle's affine map (one dense ``cv2.remap``). The triangulation is made once, on the source points, so
    a triangle keeps its corners while they move (a collapsing mouth or eyelid triangle simply shrinks).
    """

    def __init__(self, source: np.ndarray, size: int, layout: np.ndarray | None = None):
        from scipy.spatial import Delaunay

        self.source = np.asarray(source, np.float64)
        self.size = size
        # Triangulating ``layout`` (the same points in another pose) instead of ``source`` keeps points that
        # coincide in the source, such as the inner lips of a closed mouth, as separate mesh corners.
        self.layout = self.source if layout is None else np.asarray(layout, np.float64)
        self.triangles = Delaunay(self.layout).simplices                       # T x 3 corner indices
        grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
        self._grid = np.stack([grid_x, grid_y, np.ones_like(grid_x)], axis=-1)  # HxWx3 homogeneous (x, y, 1)

    def maps(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``cv2.remap`` maps (x and y, HxW float32) that take the source points to ``target``."""
        target_triangles = np.asarray(target, np.float64)[self.triangles]          # T x 3 x 2
        source_triangles = self.source[self.triangles]                             # T x 3 x 2
        homogeneous = np.concatenate([target_triangles, np.ones((len(self.triangles), 3, 1))], axis=2)
        # Affine map per triangle, target (x, y, 1) -> source (x, y); pinv tolerates collapsed triangles.
        affine = (np.linalg.pinv(homogeneous) @ source_triangles).astype(np.float32)   # T x 3 x 2
        labels = np.full((self.size, self.size), len(self.triangles), np.int32)
        # Large triangles are drawn last, so the shared edge pixels of a collapsed sliver go to a neighbour.
        area = np.abs(np.linalg.det(homogeneous))
        shift = 4
        for index in np.argsort(area):
            corners = np.round(target_triangles[index] * (1 << shift)).astype(np.int32)
            cv2.fillConvexPoly(labels, corners, int(index), cv2.LINE_8, shift)
        # Pixels outside every triangle (none while the border points are fixed) keep their position.
        identity = np.array([[[1, 0], [0, 1], [0, 0]]], np.float32)
        affine = np.concatenate([affine, identity])
        per_pixel = affine[labels]                                                  # HxWx3x2
        mapped = np.einsum("hwk,hwkc->hwc", self._grid, per_pixel)
        return np.ascontiguousarray(mapped[..., 0]), np.ascontiguousarray(mapped[..., 1])

    def warp(self, image: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``image`` (whose features sit at the source points) warped so that they sit at ``target``."""
        map_x, map_y = self.maps(target)
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# --------------------------------------------------------------------------------------------------------------
# Animation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Motion:
    """Per-frame animation signals of one clip (T frames). Lengths in pixels, angles in degrees."""

    rotation: np.ndarray        # T, in-plane head rotation
    shift: np.ndarray           # T x 2, head translation
    scale: np.ndarray           # T, head scale (1 = as photographed)
    yaw: np.ndarray             # T, sideways slide of the inner face (nose most), a cheap head turn
    mouth: np.ndarray           # T, lower-lip drop (0 = as photographed)
    blink: np.ndarray           # T, eyelid closure in [0, 1]
    brows: np.ndarray           # T, eyebrow raise


def _wave(rng: np.random.Generator, seconds: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    """Smooth random signal in [-1, 1]: three sinusoids with random frequencies, phases and weights."""
    freqs = rng.uniform(low_hz, high_hz, 3)
    phases = rng.uniform(0.0, 2 * np.pi, 3)
    weights = rng.uniform(0.5, 1.0, 3)
    waves = weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * seconds[None] + phases[:, None])
    return waves.sum(axis=0) / weights.sum()


def sample_motion(rng: np.random.Generator, frames: int, size: int, face_height: float) -> Motion:
    """Random head, mouth, eye and brow motion for one clip, like a person talking to a camera."""
    seconds = np.arange(frames) / FPS
    offset = rng.uniform(-1.0, 1.0, 3)                       # each clip starts from its own head position
    # Within a clip the head rolls by up to about +-12 degrees and turns (yaw) by up to 0.12 face heights: motion
    # on the scale of a VoxCeleb utterance, so that a clip's frames differ by more than the mouth (with +-4
    # degrees, copying the nearest of K frames was a baseline that minutes of CPU training could not reach).
    rotation = 3.0 * offset[0] + 12.0 * _wave(rng, seconds, 0.2, 0.8)
    shift = np.stack([0.02 * size * offset[1] + 0.025 * size * _wave(rng, seconds, 0.15, 0.7),
                      0.02 * size * offset[2] + 0.02 * size * _wave(rng, seconds, 0.15, 0.7)], axis=1)
    scale = 1.0 + 0.03 * _wave(rng, seconds, 0.1, 0.4)
    yaw = 0.12 * face_height * _wave(rng, seconds, 0.15, 0.6)
    # Speech: syllables at 3-5 Hz (the phase speeds up and slows down), gated by a slower talk/pause envelope.
    syllable_hz = rng.uniform(3.0, 5.0) * (1.0 + 0.3 * _wave(rng, seconds, 0.2, 0.8))
    phase = np.cumsum(2 * np.pi * syllable_hz / FPS) + rng.uniform(0.0, 2 * np.pi)
    envelope = np.clip(0.65 + 0.7 * _wave(rng, seconds, 0.2, 0.6), 0.0, 1.0)
    mouth = rng.uniform(0.07, 0.11) * face_height * envelope * (0.5 - 0.5 * np.cos(phase))
    blink = np.zeros(frames)
    profile = np.array([0.4, 0.9, 1.0, 0.7, 0.3])           # a blink lasts about 0.2 s
    for start in rng.integers(0, max(1, frames - len(profile)), size=max(1, frames // 40)):
        stop = min(frames, start + len(profile))
        blink[start:stop] = np.maximum(blink[start:stop], profile[:stop - start])
    brows = 0.03 * face_height * np.clip(_wave(rng, seconds, 0.2, 0.7), 0.0, 1.0)
    return Motion(rotation, shift, scale, yaw, mouth, blink, brows)


def expression(points: np.ndarray, mouth: float, blink: float, brows: float, yaw: float) -> np.ndarray:
    """Landmarks with the mouth opened by ``mouth`` px, eyes closed by ``blink``, brows raised, face slid."""
    out = points.astype(np.float64).copy()
    # The lower lip and the chin drop together; the corners half as much and slightly inwards (speech rounds
    # the lips); the upper lip lifts a little.
    out[[55, 56, 57, 58, 59], 1] += mouth * np.array([0.7, 0.9, 1.0, 0.9, 0.7])
    out[[65, 66, 67], 1] += mouth * np.array([0.9, 1.0, 0.9])
    out[[61, 62, 63], 1] -= 0.08 * mouth
    out[[49, 50, 51, 52, 53], 1] -= 0.05 * mouth
    mouth_centre_x = points[OUTER_LIPS, 0].mean()
    for corner in (48, 54, 60, 64):
        out[corner, 1] += 0.45 * mouth
        out[corner, 0] += 0.08 * mouth * np.sign(mouth_centre_x - points[corner, 0])
    out[JAW, 1] += 0.9 * mouth * _chin_weights()
    # Blink: the upper lid comes down most of the way, the lower lid meets it.
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        gap = points[lower] - points[upper]
        out[upper] += 0.85 * blink * gap
        out[lower] -= 0.15 * blink * gap
    out[BROWS, 1] -= brows
    # A small turn moves the nose most, the eyes, brows and mouth less, and the face outline hardly.
    out[NOSE_BRIDGE, 0] += yaw * np.array([0.6, 0.8, 0.9, 1.0])
    out[LOWER_NOSE, 0] += yaw
    out[36:48, 0] += 0.5 * yaw
    out[BROWS, 0] += 0.4 * yaw
    out[48:68, 0] += 0.6 * yaw
    out[JAW, 0] += 0.3 * yaw * np.sin(np.pi * JAW / 16)
    return out


def head_pose(points: np.ndarray, rotation: float, shift: np.ndarray, scale: float) -> np.ndarray:
    """2x3 similarity about the face centre: rotate by ``rotation`` degrees, scale, then translate."""
    centre = points.mean(axis=0)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(rotation), float(scale))
    matrix[:, 2] += shift
    return matrix


def face_warp(points: np.ndarray, size: int) -> MeshWarp:
    """The warp for a face photo with landmarks ``points``, triangulated with the mouth open.

    An open mouth has no coincident inner-lip points, and its triangles stay valid (they only flatten) as the
    mouth closes, so one mesh serves every frame.
    """
    opened = expression(points, 0.1 * _face_height(points), 0.0, 0.0, 0.0)
    return MeshWarp(control_points(points, size), size, layout=control_points(points, size, opened))


def render_clip(image: np.ndarray, points: np.ndarray, motion: Motion) -> list[np.ndarray]:
    """Frames (RGB uint8) of ``image`` animated by ``motion``."""
    size = image.shape[0]
    warp = face_warp(points, size)
    frames = []
    for t in range(len(motion.mouth)):
        moved = expression(points, motion.mouth[t], motion.blink[t], motion.brows[t], motion.yaw[t])
        pose = head_pose(points, motion.rotation[t], motion.shift[t], motion.scale[t])
        moved = moved @ pose[:, :2].T + pose[:, 2]
        frame = warp.warp(image, control_points(points, size, moved, pose))
        frames.append(_dark_mouth(frame, moved, motion.mouth[t], _face_height(points)))
    return frames


def _dark_mouth(frame: np.ndarray, points: np.ndarray, mouth: float, face_height: float) -> np.ndarray:
    """Fill the opened inner-lip polygon with a dark mouth interior, fading in as the mouth opens.

    The warp can only stretch the closed lips' pixels across the gap; a detector and a generator need to see a
    real dark opening there.
    """
    opened = np.clip(mouth / (0.04 * face_height), 0.0, 1.0)
    if opened <= 0.0:
        return frame
    size = frame.shape[0]
    mask = _soft_polygon([points[INNER_LIPS]], size, 0.004)
    interior = np.array([45.0, 15.0, 20.0], np.float32)
    return _blend(frame, interior, 0.9 * opened * mask)


# --------------------------------------------------------------------------------------------------------------
# Soundtrack
# --------------------------------------------------------------------------------------------------------------


def voice_pitch(seed: int, person: int) -> float:
    """The mean pitch (Hz) of identity ``person``'s voice, 100-220 Hz, drawn from ``seed``."""
    return float(np.random.default_rng([seed, VOICE_STREAM, person]).uniform(100.0, 220.0))


def _resonance(frequency: np.ndarray, centre: np.ndarray, bandwidth: float) -> np.ndarray:
    """Magnitude response of a resonance (peak 1 at ``centre``, half power ``bandwidth / 2`` either side)."""
    return 1.0 / np.sqrt(1.0 + ((frequency - centre) / (0.5 * bandwidth)) ** 2)


def speech_soundtrack(opening: np.ndarray, pitch_hz: float, rng: np.random.Generator, fps: float = FPS,
                      sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 mono samples in [-1, 1] for a clip whose per-frame mouth opening is ``opening`` (0 closed, 1 wide).

    Additive synthesis: harmonics k of the pitch up to 5 kHz, with a -6 dB/octave source tilt, weighted by three
    formant resonances evaluated at each harmonic's frequency, sample by sample (see the module docstring).
    """
    opening = np.clip(np.asarray(opening, np.float64), 0.0, 1.0)
    count = int(round(len(opening) * sample_rate / fps))
    seconds = np.arange(count) / sample_rate
    loudness = np.interp(seconds, (np.arange(len(opening)) + 0.5) / fps, opening)
    rates, phases = rng.uniform(0.3, 1.5, 2), rng.uniform(0.0, 2 * np.pi, 3)
    pitch = pitch_hz * (1.0 + 0.08 * np.sin(2 * np.pi * rates[0] * seconds + phases[0])
                        + 0.04 * np.sin(2 * np.pi * 2.1 * rates[0] * seconds + phases[1]))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    first = 300.0 + 500.0 * loudness
    second = 1500.0 + 400.0 * np.sin(2 * np.pi * rates[1] * seconds + phases[2])
    voiced = np.zeros(count)
    for k in range(1, int(5000.0 / (1.15 * pitch_hz)) + 1):
        frequency = k * pitch
        gain = (_resonance(frequency, first, 90.0) + 0.7 * _resonance(frequency, second, 130.0)
                + 0.3 * _resonance(frequency, 2600.0, 200.0)) / k
        voiced += gain * np.sin(k * phase)
    voiced /= max(np.abs(voiced).max(), 1e-9)
    breath = 0.04 * loudness * rng.standard_normal(count)
    floor = 0.002 * rng.standard_normal(count)
    return np.clip(0.6 * loudness * voiced + breath + floor, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------------------


def write_clip(path: Path, frames: list[np.ndarray], audio: np.ndarray | None = None,
               sample_rate: int = AUDIO_RATE) -> None:
    """Write RGB frames as an mp4v clip at 25 fps, atomically: the final name appears only when complete.

    With ``audio`` (mono samples in [-1, 1] at ``sample_rate``) the clip gets an AAC track: ffmpeg copies the
    video stream and adds the audio into a second temporary file. OpenCV picks the container from the file
    extension, so the temporary files also end in ``.mp4``; they are hidden (leading dot) and marked
    ``.partial``, and a rerun deletes leftovers of an interrupted run.
    """
    size = frames[0].shape[1], frames[0].shape[0]
    partial = path.with_name(f".{path.stem}.partial.mp4")
    muxed = path.with_name(f".{path.stem}.muxing.partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), FPS, size)
    try:
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write mp4v video to {partial}")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        if audio is None:
            os.replace(partial, path)
        else:
            from dataset.audio import add_audio_track

            add_audio_track(partial, audio, muxed, sample_rate)
            os.replace(muxed, path)
    finally:
        writer.release()
        partial.unlink(missing_ok=True)
        muxed.unlink(missing_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


def build_demo_dataset(out_dir: str | Path, identities: int = 8, clips_per_identity: int = 3, frames: int = 48,
                       size: int = 256, seed: int = 0) -> Path:
    """Build (or complete) the demo dataset in ``out_dir`` and return its path. Existing clips are kept."""
    from tqdm import tqdm

    if min(identities, clips_per_identity, frames, size) < 1:
        raise ValueError("identities, clips_per_identity, frames and size must all be positive")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob("id*/*/.*.partial.mp4"):
        leftover.unlink()
    recipes = identity_recipes(identities, seed)
    total = identities * clips_per_identity
    manifest, written = [], 0
    with tqdm(total=total, desc="demo clips", unit="clip") as progress:
        for person, recipe in enumerate(recipes):
            identity = f"id{person + 1:05d}"
            base = None                          # the identity's image and landmarks, made if a clip is missing
            clips = []
            for clip in range(clips_per_identity):
                path = out_dir / identity / f"demo{person * clips_per_identity + clip + 1:04d}" / "00001.mp4"
                if not path.exists():
                    if base is None:
                        base = make_identity(*framed_sources(size)[recipe.source], recipe)
                    rng = np.random.default_rng([seed, MOTION_STREAM, person, clip])
                    face_height = _face_height(base[1])
                    motion = sample_motion(rng, frames, size, face_height)
                    audio = speech_soundtrack(motion.mouth / (MOUTH_OPEN_MAX * face_height),
                                              voice_pitch(seed, person),
                                              np.random.default_rng([seed, VOICE_STREAM, person, clip]))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_clip(path, render_clip(*base, motion), audio)
                    written += 1
                clips.append({"path": path.relative_to(out_dir).as_posix(), "frames": frames})
                progress.update()
            manifest.append({
                "identity": identity,
                "source": _SOURCE_NAMES[recipe.source],
                "recipe": dataclasses.asdict(recipe),
                "voice_pitch_hz": round(voice_pitch(seed, person), 2),
                "clips": clips,
            })
    _write_json(out_dir / MANIFEST_NAME, {
        "fps": FPS, "size": size, "frames_per_clip": frames, "seed": seed,
        "audio": {"codec": "aac", "sample_rate": AUDIO_RATE, "channels": 1}, "identities": manifest,
    })
    seconds = time.perf_counter() - started
    print(f"demo data: {identities} identities, {total} clips, {total * frames} frames at {size}x{size} "
          f"({written} written, {total - written} kept) -> {out_dir} ({seconds:.1f} s)")
    return out_dir


_SOURCE_NAMES = {
    "astronaut": "skimage.data.astronaut() (Eileen Collins, NASA)",
    "grace_hopper": "matplotlib mpl-data/sample_data/grace_hopper.jpg (Grace Hopper)",
}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; existing clips kept)")
    parser.add_argument("--identities", type=int, default=8, help="number of people")
    parser.add_argument("--clips-per-identity", type=int, default=3, help="clips (videos) per person")
    parser.add_argument("--frames", type=int, default=48, help="frames per clip (25 fps)")
    parser.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random recipes and motions")
    args = parser.parse_args(argv)
    return build_demo_dataset(args.out, args.identities, args.clips_per_identity, args.frames, args.size,
                              args.seed)


if __name__ == "__main__":
    main()
