"""The 68-point landmark layer: flip permutation, landmark images, crops and both detector backends."""
import pickle
import urllib.error
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from skimage import data

from dataset.landmarks import (
    BACKENDS,
    FLIP_PERMUTATION,
    PARTS,
    DetectorLoadError,
    DlibDetector,
    FaceAlignmentDetector,
    LandmarkDetector,
    crop_and_resize,
    crop_box,
    draw_landmarks,
    face_alignment_weight_files,
    flip_landmarks,
    make_detector,
)

PART = {part.name: part for part in PARTS}
# Mirroring a face swaps the subject's sides, so these parts trade colours between a mirrored landmark image
# and the image drawn from the relabelled points.
PAIRED_PARTS = [("right_eyebrow", "left_eyebrow"), ("right_eye", "left_eye")]


def photo(name):
    if name == "astronaut":
        return data.astronaut()
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def dlib_detector():
    return DlibDetector()


@pytest.fixture(scope="module")
def astronaut_points(dlib_detector):
    return dlib_detector.detect([photo("astronaut")])[0][0].points


@pytest.fixture(scope="module")
def crop_points(astronaut_points):
    """The astronaut's landmarks in a 256x256 face crop: a realistic landmark image layout."""
    return crop_and_resize(photo("astronaut"), astronaut_points, 256)[1]


def swap_paired_colours(image):
    out = image.copy()
    for right, left in PAIRED_PARTS:
        right_mask = np.all(image == PART[right].color, axis=-1)
        left_mask = np.all(image == PART[left].color, axis=-1)
        out[right_mask], out[left_mask] = PART[left].color, PART[right].color
    return out


# ------------------------------------------------------------------------------------------------------------
# Flip permutation
# ------------------------------------------------------------------------------------------------------------


def test_flip_permutation_is_an_involution_over_all_points():
    assert sorted(FLIP_PERMUTATION.tolist()) == list(range(68))
    np.testing.assert_array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(68))


def test_flip_permutation_swaps_sides_and_keeps_the_midline():
    perm = FLIP_PERMUTATION
    np.testing.assert_array_equal(perm[0:17], np.arange(16, -1, -1))
    np.testing.assert_array_equal(perm[17:22], [26, 25, 24, 23, 22])
    np.testing.assert_array_equal(perm[27:31], [27, 28, 29, 30])
    np.testing.assert_array_equal(perm[31:36], [35, 34, 33, 32, 31])
    # Right eye (outer corner, upper lid, inner corner, lower lid) onto the left eye's matching points.
    np.testing.assert_array_equal(perm[36:42], [45, 44, 43, 42, 47, 46])
    np.testing.assert_array_equal(perm[48:60], [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55])
    np.testing.assert_array_equal(perm[60:68], [64, 63, 62, 61, 60, 67, 66, 65])
    for part in PARTS:
        mapped = set(perm[part.start:part.stop].tolist())
        partner = {"right_eyebrow": "left_eyebrow", "left_eyebrow": "right_eyebrow",
                   "right_eye": "left_eye", "left_eye": "right_eye"}.get(part.name, part.name)
        assert mapped == set(range(PART[partner].start, PART[partner].stop))


def test_flip_landmarks_agrees_with_mirroring_the_image():
    rng = np.random.default_rng(0)
    width = 97
    flat = rng.choice(width * width, 68, replace=False)
    points = np.stack([flat % width, flat // width], axis=1).astype(np.float32)
    labels = np.zeros((width, width), np.int32)
    labels[flat // width, flat % width] = np.arange(68)
    flipped = flip_landmarks(points, width)
    # Point k of the flipped set sits where the mirrored image shows the original point FLIP_PERMUTATION[k].
    seen = labels[:, ::-1][flipped[:, 1].astype(int), flipped[:, 0].astype(int)]
    np.testing.assert_array_equal(seen, FLIP_PERMUTATION)
    np.testing.assert_allclose(flip_landmarks(flipped, width), points)


def test_flip_landmarks_works_on_batches():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 64, (2, 3, 68, 2))
    flipped = flip_landmarks(points, 64)
    assert flipped.shape == points.shape
    np.testing.assert_allclose(flipped[1, 2], flip_landmarks(points[1, 2], 64))
    with pytest.raises(ValueError, match="68"):
        flip_landmarks(points[..., :5, :], 64)


def test_drawing_flipped_points_equals_mirrored_drawing_with_sides_swapped(crop_points):
    # Integer points: OpenCV's raster is then exactly mirror-symmetric.
    points = np.round(crop_points)
    mirrored = draw_landmarks(points, 256)[:, ::-1]
    redrawn = draw_landmarks(flip_landmarks(points, 256), 256)
    np.testing.assert_array_equal(redrawn, swap_paired_colours(mirrored))
    # Sub-pixel points: the same lines up to a few raster pixels.
    mirrored = swap_paired_colours(draw_landmarks(crop_points, 256)[:, ::-1])
    redrawn = draw_landmarks(flip_landmarks(crop_points, 256), 256)
    agree = np.all(mirrored == redrawn, axis=-1) & (redrawn.any(axis=-1))
    drawn = redrawn.any(axis=-1) | mirrored.any(axis=-1)
    assert agree.sum() / drawn.sum() > 0.85


def test_flip_of_detected_landmarks_matches_detection_on_the_mirrored_photo(dlib_detector, astronaut_points):
    image = photo("astronaut")
    mirrored_faces = dlib_detector.detect([np.ascontiguousarray(image[:, ::-1])])[0]
    assert len(mirrored_faces) == 1
    flipped = flip_landmarks(mirrored_faces[0].points, image.shape[1])
    error = np.linalg.norm(flipped - astronaut_points, axis=1)
    assert error.mean() < 1.5 and error.max() < 5.0


# ------------------------------------------------------------------------------------------------------------
# Landmark images
# ------------------------------------------------------------------------------------------------------------


def test_draw_landmarks_puts_each_part_colour_on_its_points(crop_points):
    image = draw_landmarks(crop_points, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert len({part.color for part in PARTS}) == len(PARTS)
    for part in PARTS:
        for x, y in np.round(crop_points[part.start:part.stop]).astype(int):
            window = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
            assert (window == part.color).all(axis=1).any(), (part.name, x, y)


def distance_to_polylines(points, size):
    """Distance of every pixel centre to the nearest segment of the parts' polylines (closing ones included)."""
    segments = []
    for part in PARTS:
        chain = points[part.start:part.stop]
        segments += list(zip(chain[:-1], chain[1:]))
        if part.closed:
            segments.append((chain[-1], chain[0]))
    a, b = (np.array(ends, np.float64)[:, None] for ends in zip(*segments))   # S x 1 x 2
    pixels = np.stack(np.mgrid[0:size, 0:size][::-1], axis=-1).reshape(1, -1, 2).astype(np.float64)
    along = np.clip(np.sum((pixels - a) * (b - a), -1) / np.sum((b - a) ** 2, -1).clip(1e-9), 0, 1)
    nearest = a + along[..., None] * (b - a)
    return np.linalg.norm(pixels - nearest, axis=-1).min(axis=0).reshape(size, size)


def test_draw_landmarks_draws_only_the_part_polylines_in_exact_colours(crop_points):
    image = draw_landmarks(crop_points, 256, thickness=2)
    drawn = image.any(axis=-1)
    colours = {tuple(c) for c in image[drawn].tolist()}
    assert colours <= {part.color for part in PARTS}
    distance = distance_to_polylines(crop_points, 256)
    # Nothing beyond the line half-width (plus raster slack): no stray segments joining different parts.
    assert not drawn[distance > 2.0].any()
    assert drawn[distance < 0.5].all()


def test_draw_landmarks_closes_only_the_closed_parts(crop_points):
    image = draw_landmarks(crop_points, 256)
    for part in PARTS:
        first, last = crop_points[part.start], crop_points[part.stop - 1]
        chord = [np.round(first + t * (last - first)).astype(int) for t in np.linspace(0.3, 0.7, 5)]
        coloured = [(image[y, x] == part.color).all() for x, y in chord]
        if part.closed:
            assert all(coloured), part.name
        elif part.name == "jaw":
            assert not any(coloured)


def test_draw_landmarks_tolerates_points_off_the_canvas(crop_points):
    assert not draw_landmarks(crop_points + 1000, 256).any()
    half_out = crop_points - [128, 0]
    image = draw_landmarks(half_out, 256)
    assert image[:, :64].any() and not image[:, 200:].any()
    assert draw_landmarks(crop_points * 1e9, 256).shape == (256, 256, 3)


# ------------------------------------------------------------------------------------------------------------
# Crops
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 384])
def test_crop_and_resize_moves_points_with_the_pixels(astronaut_points, size):
    # Dots drawn on the photo at some landmarks, then cropped and resized, are centred on the moved landmarks.
    # On a 1024x1024 canvas the face crop is about 335 px: shrunk 2.6x for 128, enlarged 1.15x for 384.
    points = np.round(astronaut_points * 2)
    marked = [0, 8, 16, 30, 36, 45, 48, 54]
    canvas = np.zeros((1024, 1024, 3), np.uint8)
    for x, y in points[marked].astype(int):
        cv2.circle(canvas, (x, y), 6, (255, 255, 255), -1)
    crop, moved = crop_and_resize(canvas, points, size)
    assert crop.shape == (size, size, 3) and moved.dtype == np.float32
    side = crop_box(points, canvas.shape)[2] - crop_box(points, canvas.shape)[0]
    radius = int(np.ceil(6 * size / side)) + 3
    weight = crop[..., 0].astype(np.float64)
    for index in marked:
        x, y = np.round(moved[index]).astype(int)
        window = weight[y - radius:y + radius + 1, x - radius:x + radius + 1]
        ys, xs = np.mgrid[y - radius:y + radius + 1, x - radius:x + radius + 1]
        centre = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()
        assert np.linalg.norm(centre - moved[index]) < 0.1, index
    # The landmark image drawn on the crop lines up with the one drawn on the photo and cropped.
    big = draw_landmarks(points, 1024, thickness=6)
    cropped = crop_and_resize(big, points, size)[0].any(axis=-1)
    redrawn = draw_landmarks(moved, size).any(axis=-1)
    assert (cropped & redrawn).sum() / redrawn.sum() > 0.9


def test_crop_box_is_square_around_the_face_and_shifted_inside(astronaut_points):
    x0, y0, x1, y1 = crop_box(astronaut_points, (512, 512, 3))
    assert x1 - x0 == y1 - y0
    low, high = astronaut_points.min(axis=0), astronaut_points.max(axis=0)
    assert x0 < low[0] and y0 < low[1] and x1 > high[0] and y1 > high[1]
    assert (y0 + y1) / 2 < (low[1] + high[1]) / 2          # raised for the forehead
    # A face at the image's corner: the box stays square and its size, shifted inside the image.
    corner = astronaut_points - low + 2
    box = crop_box(corner, (512, 512, 3))
    assert box[:2] == (0, 0) and box[2] - box[0] == x1 - x0
    # A box larger than the image extends past it and the crop is padded with black.
    tight = crop_box(astronaut_points, (120, 600, 3))
    assert tight[1] < 0 or tight[3] > 120
    crop, _ = crop_and_resize(photo("astronaut")[:120], astronaut_points, 64)
    assert crop.shape == (64, 64, 3) and (crop[-2:] == 0).all()


# ------------------------------------------------------------------------------------------------------------
# dlib backend
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_dlib_finds_one_plausible_face_on_each_real_photo(dlib_detector, name):
    image = photo(name)
    faces = dlib_detector.detect([image])[0]
    assert len(faces) == 1
    face = faces[0]
    points = face.points
    assert points.shape == (68, 2) and points.dtype == np.float32 and face.score > 0.5
    height, width = image.shape[:2]
    assert (points >= 0).all() and (points[:, 0] < width).all() and (points[:, 1] < height).all()
    eyes_y = points[36:48, 1].mean()
    assert points[17:27, 1].mean() < eyes_y < points[30, 1] < points[48:68, 1].mean() < points[8, 1]
    assert points[36:42, 0].mean() < points[30, 0] < points[42:48, 0].mean()
    x0, y0, x1, y1 = face.box
    inside = (points[:, 0] >= x0 - 10) & (points[:, 0] <= x1 + 10) & (points[:, 1] >= y0 - 10) & (
        points[:, 1] <= y1 + 10)
    assert inside.mean() > 0.9


def test_dlib_returns_no_face_for_blank_and_noise_images(dlib_detector):
    rng = np.random.default_rng(0)
    blank = np.zeros((200, 300, 3), np.uint8)
    noise = rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)
    assert dlib_detector.detect([blank, noise]) == [[], []]
    assert dlib_detector.detect([]) == []


def test_dlib_rejects_non_rgb_input(dlib_detector):
    with pytest.raises(ValueError, match="RGB uint8"):
        dlib_detector.detect([np.zeros((64, 64), np.uint8)])


def test_dlib_detector_loads_lazily_and_pickles_without_its_models(dlib_detector):
    fresh = DlibDetector(upsample=0)
    assert fresh._predictor is None
    copy = pickle.loads(pickle.dumps(dlib_detector))
    assert copy._predictor is None and copy.upsample == dlib_detector.upsample


# ------------------------------------------------------------------------------------------------------------
# face-alignment backend (offline: its weights cannot be downloaded here)
# ------------------------------------------------------------------------------------------------------------


def test_face_alignment_without_weights_gives_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("face_alignment")
    import face_alignment.utils
    import torch.hub

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    # An empty hub cache, and downloads that fail at once instead of reaching the network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", offline)
    detector = FaceAlignmentDetector(device="cpu", batch_size=4)
    with pytest.raises(DetectorLoadError) as error:
        detector.detect([np.zeros((64, 64, 3), np.uint8)])
    message = str(error.value)
    assert "face-alignment could not load its model weights" in message
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in message and str(tmp_path) in message
    assert "--backend dlib" in message
    assert "adrianbulat.com" in message
    # The exact files and where each goes, so they can be copied onto an offline GPU box.
    for url, path in face_alignment_weight_files().items():
        assert f"{path} (from {url})" in message and path.parent == Path(torch.hub.get_dir()) / "checkpoints"


class FakeFaceAlignment:
    """Stands in for face_alignment.FaceAlignment: two faces on frames whose first pixel is odd, else none."""

    def __init__(self):
        self.batches = []
        self.face_detector = self

    def detect_from_batch(self, batch):
        self.batches.append(tuple(batch.shape))
        boxes = []
        for frame in batch:
            if int(frame[0, 0, 0]) % 2:
                value = float(frame[0, 0, 0])
                boxes.append([np.array([0, 0, 10, 10, 0.6]), np.array([1, 1, value, value, 0.9])])
            else:
                boxes.append([])
        return boxes

    def get_landmarks_from_batch(self, batch, detected_faces=None):
        assert batch.dtype.is_floating_point and batch.shape[1] == 3
        return [np.concatenate([np.full((68, 2), box[2]) for box in faces]) if faces else []
                for faces in detected_faces]


def test_face_alignment_stacks_same_sized_frames_into_batches():
    detector = FaceAlignmentDetector(batch_size=2)
    fake = FakeFaceAlignment()
    detector._model = fake
    images = [np.full((32, 48, 3), value, np.uint8) for value in (3, 4, 5)]
    images.insert(1, np.full((40, 40, 3), 7, np.uint8))
    results = detector.detect(images)
    assert sorted(fake.batches) == sorted([(2, 3, 32, 48), (1, 3, 32, 48), (1, 3, 40, 40)])
    assert [len(faces) for faces in results] == [2, 2, 0, 2]
    for faces, value in zip(results, (3, 7, None, 5)):
        if value is None:
            continue
        assert [face.score for face in faces] == [0.9, 0.6]            # best first
        assert faces[0].box == (1.0, 1.0, float(value), float(value))
        assert faces[0].points.shape == (68, 2) and faces[0].points.dtype == np.float32
        assert (faces[0].points == value).all() and (faces[1].points == 10).all()


def test_make_detector_builds_each_backend_lazily():
    assert isinstance(make_detector("dlib"), DlibDetector)
    fan = make_detector("face_alignment", device="cuda", batch_size=8)
    assert isinstance(fan, FaceAlignmentDetector) and isinstance(fan, LandmarkDetector)
    assert (fan.device, fan.batch_size, fan._model) == ("cuda", 8, None)
    with pytest.raises(ValueError, match="dlib, face_alignment"):
        make_detector("mediapipe")
    assert BACKENDS == ("dlib", "face_alignment")
