"""AKD, motion and jitter (evaluation/keypoints.py), flicker (evaluation/temporal.py) and the identity measures
and pairing of cross-reenactment (evaluation/cross.py), against hand-computed cases and real detections."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from evaluation.cross import cross_pairs, identity_similarity, leakage, rotation_angles_deg
from evaluation.keypoints import akd, detect_first_faces, jitter, keypoint_error, to_protocol_frame
from evaluation.temporal import flicker


@pytest.fixture(scope="module")
def face_256():
    """The astronaut's face as a 256x256 crop (the frame AKD is measured in)."""
    from dataset.landmarks import DlibDetector, crop_and_resize

    photo = skimage.data.astronaut()
    (face, *_), = DlibDetector().detect([photo])
    return crop_and_resize(photo, face.points, 256, scale=2.2)[0]


def test_akd_formula_is_first_order_models_mean_absolute_coordinate_difference():
    points = np.random.default_rng(0).uniform(0, 256, (3, 68, 2))
    moved = points + [6.0, -2.0]
    moved[2] = np.nan
    np.testing.assert_allclose(keypoint_error(points, moved), [4.0, 4.0, np.nan])
    assert akd(points, moved) == (pytest.approx(4.0), 1)
    assert akd(points[2:], moved[2:])[1] == 1 and np.isnan(akd(points[2:], moved[2:])[0])


def test_points_map_to_the_256_frame_like_cv2_resize():
    np.testing.assert_allclose(to_protocol_frame(np.array([[-0.5, 31.5]]), 32), [[-0.5, 255.5]])
    np.testing.assert_allclose(to_protocol_frame(np.array([[1.5, 0.0]]), 64), [[7.5, 1.5]])


def test_akd_of_a_frame_with_itself_is_zero_and_of_a_shifted_frame_the_shift(face_256):
    from dataset.landmarks import DlibDetector

    detector = DlibDetector()
    shift = 12
    shifted = np.zeros_like(face_256)
    shifted[shift:, shift:] = face_256[:-shift, :-shift]      # content moves right and down by 12 px
    points = detect_first_faces([face_256, face_256, shifted], detector)
    assert akd(points[:1], points[1:2]) == (0.0, 0)
    value, skipped = akd(points[:1], points[2:])
    # (|12| + |12|) / 2 = 12 for a diagonal shift; the detector itself moves by a fraction of a pixel.
    assert skipped == 0 and value == pytest.approx(shift, abs=1.0)
    np.testing.assert_allclose((points[2] - points[0]).mean(axis=0), [shift, shift], atol=1.0)


def test_a_frame_without_a_face_is_skipped_and_counted(face_256):
    from dataset.landmarks import DlibDetector

    points = detect_first_faces([face_256, np.zeros_like(face_256)], DlibDetector())
    assert np.isnan(points[1]).all() and np.isfinite(points[0]).all()
    assert akd(points, points[::-1])[1] == 2


def test_jitter():
    rng = np.random.default_rng(0)
    still = np.repeat(rng.uniform(0, 256, (1, 68, 2)), 5, axis=0)
    assert jitter(still, still) == (0.0, 0)
    # Following the driver's motion with a constant offset is no jitter; trembling on a still driver is.
    moving = still + np.arange(5)[:, None, None] * [3.0, 1.0]
    assert jitter(moving + 7.0, moving)[0] == pytest.approx(0.0, abs=1e-12)
    tremble = still + (np.arange(5) % 2)[:, None, None] * 2.0
    assert jitter(tremble, still) == (pytest.approx(2.0), 0)
    tremble[2] = np.nan
    assert jitter(tremble, still)[1] == 2
    with pytest.raises(ValueError):
        jitter(still[:1], still[:1])


def test_flicker(face_256):
    still = flicker([face_256] * 3)
    assert still["flicker"] < 1e-4 and still["raw"] == 0 and still["steps"] == 2
    # Content that only moves: motion compensation removes most of the raw frame difference.
    moving = [np.roll(face_256, (0, 3 * i), axis=(0, 1)) for i in range(3)]
    result = flicker(moving)
    assert result["flicker"] < 0.2 * result["raw"]
    # Brightness that pulses by 20 levels is flicker of 20 / 255 whatever the flow makes of it.
    pulsing = [np.clip(face_256.astype(int) + 20 * (i % 2), 0, 255).astype(np.uint8) for i in range(3)]
    assert flicker(pulsing)["flicker"] == pytest.approx(20 / 255, abs=0.01)
    with pytest.raises(ValueError):
        flicker([face_256])


def test_identity_measures():
    rng = np.random.default_rng(0)
    driver = rng.normal(size=(4, 16))
    assert leakage(driver, driver) == pytest.approx(1.0)
    assert leakage(driver, -driver) == pytest.approx(-1.0)
    person = rng.normal(size=(3, 16))
    expected = np.mean([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in person] for a in driver])
    assert identity_similarity(driver, person) == pytest.approx(expected)
    with pytest.raises(ValueError):
        leakage(driver, driver[:2])


def test_rotation_angles():
    def about_z(deg):
        r = np.radians(deg)
        return np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])

    angles = rotation_angles_deg(np.stack([about_z(10), about_z(-30)]), np.stack([about_z(0), about_z(15)]))
    np.testing.assert_allclose(angles, [10, 45], atol=1e-9)


def test_cross_pairs_drive_with_other_identities():
    videos = [{"identity": i, "video": v} for i in ("a", "b", "c") for v in ("1", "2")]
    pairs = cross_pairs(videos, persons=6, drivers=2)
    assert len(pairs) == 12 and all(p["identity"] != d["identity"] for p, d in pairs)
    assert len({d["identity"] + d["video"] for _, d in pairs}) > 2      # drivers vary between persons
    with pytest.raises(ValueError, match="at least two identities"):
        cross_pairs(videos[:2], persons=2, drivers=1)
