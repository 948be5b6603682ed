"""HeadGAN's 3D face layer: the rasteriser, the mesh asset, fitting and transfer, storage, MediaPipe, extraction."""
from __future__ import annotations

import itertools
import json
import sys

import cv2
import numpy as np
import pytest

from dataset import store
from dataset.face3d import mesh
from dataset.face3d.fit import (FACE3D_FILE, FaceFit, fit_single, fit_video, read_face3d, read_face3d_meta,
                                similarity_transforms, transfer, write_face3d)
from dataset.face3d.render import rasterize, render_nmfc


# ----------------------------------------------------------------------------------------------------------------
# Rasteriser
# ----------------------------------------------------------------------------------------------------------------


def _two_triangles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red triangle at depth 5 and a green one at depth 2 (nearer) that overlap where 18 <= x + y <= 21."""
    vertices = np.array([[1, 1, 5], [20, 1, 5], [1, 20, 5],          # red, far, clipped by the image
                         [14, 14, 2], [4, 14, 2], [14, 4, 2]], float)  # green, near
    triangles = np.array([[0, 1, 2], [3, 4, 5]])
    colours = np.array([[1, 0, 0]] * 3 + [[0, 1, 0]] * 3, float)
    return vertices, triangles, colours


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_rasterize_colours_background_and_depth_order(order):
    vertices, triangles, colours = _two_triangles()
    image, depth = rasterize(vertices, triangles[order], colours, 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.float32 and depth.dtype == np.float32
    np.testing.assert_allclose(image[2, 2], [1, 0, 0])              # only the red triangle
    assert depth[2, 2] == 5
    np.testing.assert_allclose(image[13, 13], [0, 1, 0])            # only the green one
    assert depth[13, 13] == 2
    np.testing.assert_allclose(image[10, 9], [0, 1, 0])             # both: the nearer (green) wins
    assert depth[10, 9] == 2
    np.testing.assert_array_equal(image[0, 15], 0)                  # background
    assert np.isinf(depth[0, 15]) and np.isinf(depth[15, 0])
    assert ((image.sum(axis=2) > 0) == np.isfinite(depth)).all()


def test_rasterize_interpolates_barycentrically():
    vertices = np.array([[0, 0, 1], [8, 0, 3], [0, 8, 5]], float)
    attributes = np.array([[0.0, 10.0], [8.0, 20.0], [16.0, 40.0]])
    image, depth = rasterize(vertices, np.array([[0, 1, 2]]), attributes, 10)
    # Pixel (x=2, y=4): weights 1 - 2/8 - 4/8, 2/8, 4/8 for the three corners.
    weights = np.array([0.25, 0.25, 0.5])
    np.testing.assert_allclose(image[4, 2], weights @ attributes, rtol=1e-6)
    np.testing.assert_allclose(depth[4, 2], weights @ vertices[:, 2], rtol=1e-6)
    # The corners and the hypotenuse's pixel centres are covered; the pixel beyond it is not.
    assert np.isfinite(depth[0, 0]) and np.isfinite(depth[0, 8]) and np.isfinite(depth[4, 4])
    assert np.isinf(depth[4, 5])


def _reference_rasterize(vertices, triangles, attributes, size):
    """Per-pixel, per-triangle loops: slow and obviously right."""
    image = np.zeros((size, size, attributes.shape[1]))
    depth = np.full((size, size), np.inf)
    for py, px in itertools.product(range(size), range(size)):
        for triangle in triangles:
            (x0, y0, _), (x1, y1, _), (x2, y2, _) = vertices[triangle]
            area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
            w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
            weights = np.array([w0, w1, 1 - w0 - w1])
            z = weights @ vertices[triangle, 2]
            if weights.min() >= -1e-9 and z < depth[py, px]:
                depth[py, px] = z
                image[py, px] = weights @ attributes[triangle]
    return image, depth


def test_rasterize_matches_a_per_pixel_reference():
    rng = np.random.default_rng(3)
    vertices = np.concatenate([rng.uniform(-4, 24, (30, 2)), rng.uniform(0, 10, (30, 1))], axis=1)
    triangles = rng.permutation(30).reshape(10, 3)
    attributes = rng.uniform(0, 1, (30, 4))
    image, depth = rasterize(vertices, triangles, attributes, 20)
    expected_image, expected_depth = _reference_rasterize(vertices, triangles, attributes, 20)
    np.testing.assert_array_equal(np.isfinite(depth), np.isfinite(expected_depth))
    covered = np.isfinite(depth)
    assert covered.sum() > 100
    np.testing.assert_allclose(depth[covered], expected_depth[covered], rtol=1e-5)
    np.testing.assert_allclose(image[covered], expected_image[covered], atol=1e-5)


def test_rasterize_rejects_bad_input():
    vertices, triangles, colours = _two_triangles()
    with pytest.raises(ValueError, match="NaN"):
        rasterize(np.where(np.arange(6)[:, None] == 0, np.nan, vertices), triangles, colours, 16)
    with pytest.raises(ValueError, match="index vertices"):
        rasterize(vertices, triangles + 1, colours, 16)
    with pytest.raises(ValueError, match="attributes"):
        rasterize(vertices, triangles, colours[:5], 16)
    with pytest.raises(ValueError, match="468"):
        render_nmfc(vertices, 16)


# ----------------------------------------------------------------------------------------------------------------
# The mesh asset
# ----------------------------------------------------------------------------------------------------------------


def test_mesh_asset_topology():
    faces = mesh.triangles()
    assert faces.dtype == np.int64 and faces.shape == (852, 3)
    assert faces.min() == 0 and faces.max() == mesh.NUM_VERTICES - 1
    assert mesh.ASSET_PATH.stat().st_size < 100_000
    # A manifold, consistently oriented: every directed edge once (neighbours run a shared edge both ways).
    directed = [(a, b) for face in faces.tolist() for a, b in ((face[0], face[1]), (face[1], face[2]),
                                                               (face[2], face[0]))]
    assert len(set(directed)) == len(directed)
    # Euler characteristic of a disc with three holes (eyes, mouth): V - E + F = -2.
    edges = {tuple(sorted(edge)) for edge in directed}
    assert mesh.NUM_VERTICES - len(edges) + len(faces) == -2
    assert [len(mesh.region(name)) for name in mesh.REGIONS] == [36, 16, 16, 20]
    # Normals (p1 - p0) x (p2 - p0) point to the camera (-z) on the front of the mean face.
    corners = mesh.mean_face()[faces].astype(np.float64)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (normals[:, 2] < 0).mean() > 0.9


def test_mean_face_is_canonical_and_nmfc_spans_unit_cube():
    assert mesh.mean_face().dtype == np.float32 and not mesh.mean_face().flags.writeable
    face = mesh.mean_face().astype(np.float64)
    assert face.shape == (468, 3)
    np.testing.assert_allclose(face.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((face ** 2).sum(axis=1).mean()), 1, rtol=1e-5)
    mirror = mesh.mirror_permutation()
    np.testing.assert_array_equal(mirror[mirror], np.arange(468))
    np.testing.assert_allclose(face[mirror] * [-1, 1, 1], face, atol=1e-5)
    # Axes: the mouth is below the eyes (y down), the subject's right eye on the image's left, the nose tip
    # (most negative z) nearer than the contour.
    assert face[mesh.region("mouth"), 1].mean() > face[mesh.region("right_eye"), 1].mean()
    assert face[mesh.region("right_eye"), 0].mean() < 0 < face[mesh.region("left_eye"), 0].mean()
    assert face[:, 2].argmin() not in mesh.region("contour")
    assert face[mesh.region("contour"), 2].mean() > face[:, 2].mean()
    colours = mesh.nmfc_colours()
    assert colours.dtype == np.float32 and colours.shape == (468, 3)
    np.testing.assert_allclose(colours.min(axis=0), 0)
    np.testing.assert_allclose(colours.max(axis=0), 1)
    stable = mesh.stable_vertices()
    assert 60 < len(stable) < 250
    assert not set(stable) & set(np.concatenate([mesh.region(n) for n in mesh.REGIONS]))


def test_asset_triangles_and_mean_face_are_rebuilt_from_mediapipe(tmp_path):
    edges = mesh.tessellation_edges()
    assert len(edges) == 2556
    expected = np.array(sorted(map(tuple, np.sort(mesh.triangles(), axis=1).tolist())))
    np.testing.assert_array_equal(mesh.triangles_from_edges(edges), expected)
    # The documented rebuild reproduces the committed asset (same wheel, same photos).
    out = tmp_path / "face_mesh.npz"
    mesh.main(["--rebuild", "--out", str(out)])
    with np.load(out) as rebuilt:
        np.testing.assert_array_equal(rebuilt["triangles"], mesh.triangles())
        np.testing.assert_allclose(rebuilt["mean_face"], mesh.mean_face(), atol=1e-4)
        np.testing.assert_array_equal(rebuilt["stable"], mesh.stable_vertices())


def test_render_nmfc_of_the_mean_face():
    vertices = mesh.mean_face() * 35 + np.array([64.0, 64.0, 0.0])
    image = render_nmfc(vertices, 128)
    assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
    covered = image.sum(axis=2) > 0
    assert 0.3 < covered.mean() < 0.8
    assert not covered[:, :10].any() and not covered[:3].any()      # background around the face is black
    # Red grows to the image's right (x), green downwards (y); the eye openings show background.
    assert image[70, 40, 0] < image[70, 88, 0] and image[45, 64, 1] < image[100, 64, 1]
    eye = mesh.mean_face()[mesh.region("right_eye")].mean(axis=0) * 35 + [64, 64, 0]
    assert image[int(round(eye[1])), int(round(eye[0]))].sum() == 0


# ----------------------------------------------------------------------------------------------------------------
# Fitting and transfer on synthetic faces
# ----------------------------------------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    return cv2.Rodrigues(np.radians([pitch, 0.0, 0.0]))[0] @ cv2.Rodrigues(np.radians([0.0, yaw, 0.0]))[0] \
        @ cv2.Rodrigues(np.radians([0.0, 0.0, roll]))[0]


def _identity(kind: int) -> np.ndarray:
    """The mean face with a smooth shape change (wider jaw, longer nose, ...), aligned to the mean face on the
    stable vertices so that its pose is unambiguous."""
    face = mesh.mean_face().astype(np.float64)
    x, y, z = face.T
    if kind == 0:
        offset = np.stack([0.08 * x * np.clip(y, 0, None), 0.05 * np.sin(2 * x), -0.06 * np.exp(-4 * x ** 2)], 1)
    else:
        offset = np.stack([-0.06 * x * np.clip(-y, 0, None), 0.07 * y ** 2, 0.05 * np.cos(3 * y)], 1)
    shaped = face + offset
    stable = mesh.stable_vertices()
    # fit_video aligns the mean face to a mesh, so the shape is brought back through that same alignment.
    s, r, t = similarity_transforms(face[stable], shaped[stable][None])
    return (shaped - t[0]) @ r[0] / s[0]


def _mouth_open(amount: float) -> np.ndarray:
    """Canonical offsets opening the mouth: everything below the mouth's centre line drops, the chin most."""
    face = mesh.mean_face().astype(np.float64)
    centre = face[mesh.region("mouth"), 1].mean()
    offsets = np.zeros_like(face)
    offsets[:, 1] = amount * np.clip((face[:, 1] - centre) / 0.4, 0, 1) * (face[:, 1] > centre)
    return offsets


def _brows_up(amount: float) -> np.ndarray:
    face = mesh.mean_face().astype(np.float64)
    top = face[np.concatenate([mesh.region("right_eye"), mesh.region("left_eye")]), 1].min()
    offsets = np.zeros_like(face)
    above = top - face[:, 1]                                         # height above the eye openings
    offsets[:, 1] = -amount * np.clip(above / 0.3, 0, 1) * np.clip(1 - (above - 0.3) / 0.6, 0, 1)
    return offsets


def _mouth_opening(vertices: np.ndarray) -> np.ndarray:
    """Vertical extent of the mouth opening per frame (pixels), from its boundary loop."""
    loop = vertices[..., mesh.region("mouth"), 1]
    return loop.max(axis=-1) - loop.min(axis=-1)


def _video(identity: np.ndarray, expressions: np.ndarray, rng: np.random.Generator):
    count = len(expressions)
    rotations = np.stack([_rotation(*rng.uniform(-25, 25, 3)) for _ in range(count)])
    scales = rng.uniform(40, 70, count)
    translations = np.concatenate([rng.uniform(100, 150, (count, 2)), rng.uniform(-30, 30, (count, 1))], axis=1)
    meshes = scales[:, None, None] * (identity + expressions) @ rotations.transpose(0, 2, 1) + translations[:, None]
    return meshes, scales, rotations, translations


def _expressions(rng: np.random.Generator, count: int) -> np.ndarray:
    return np.stack([_mouth_open(rng.uniform(0, 0.25)) + _brows_up(rng.uniform(0, 0.08)) for _ in range(count)])


def test_fit_video_recovers_pose_and_expression():
    rng = np.random.default_rng(0)
    identity, expressions = _identity(0), _expressions(rng, 8)
    meshes, scales, rotations, translations = _video(identity, expressions, rng)
    meshes[[3, 7]] = np.nan                                          # frames without a face
    fitted = fit_video(meshes)
    valid = np.ones(8, bool)
    valid[[3, 7]] = False
    np.testing.assert_array_equal(fitted.valid, valid)
    np.testing.assert_allclose(fitted.rotation[valid], rotations[valid], atol=1e-4)
    np.testing.assert_allclose(fitted.scale[valid], scales[valid], rtol=1e-4)
    np.testing.assert_allclose(fitted.translation[valid], translations[valid], atol=1e-2)
    # Identity = the mean canonical shape, so expressions are recovered up to their mean over the video.
    centred = expressions[valid] - expressions[valid].mean(axis=0)
    np.testing.assert_allclose(fitted.expression[valid], centred, atol=1e-4)
    np.testing.assert_allclose(fitted.identity, identity + expressions[valid].mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(fitted.vertices()[valid], meshes[valid], atol=1e-2)
    # Missing frames: no expression, the pose of the nearest frame with a face (the earlier one on a tie).
    assert not fitted.expression[[3, 7]].any()
    np.testing.assert_array_equal(fitted.rotation[3], fitted.rotation[2])
    np.testing.assert_array_equal(fitted.translation[7], fitted.translation[6])


def test_fit_ignores_the_mouth_and_brows_for_pose():
    # A wide-open mouth in one frame must not tilt that frame's pose.
    rng = np.random.default_rng(1)
    identity = _identity(1)
    expressions = np.stack([np.zeros((468, 3)), _mouth_open(0.5) + _brows_up(0.15), np.zeros((468, 3))])
    meshes, scales, rotations, translations = _video(identity, expressions, rng)
    fitted = fit_video(meshes)
    np.testing.assert_allclose(fitted.rotation, rotations, atol=1e-4)
    opening = _mouth_opening(fitted.canonical())
    assert opening[1] - opening[0] == pytest.approx(_mouth_opening(identity + expressions[1]) -
                                                    _mouth_opening(identity), rel=1e-3)


def test_fit_single_and_resized():
    rng = np.random.default_rng(2)
    meshes, *_ = _video(_identity(0), _expressions(rng, 1), rng)
    single = fit_single(meshes[0])
    assert single.num_frames == 1 and single.valid.all() and not single.expression.any()
    np.testing.assert_allclose(single.vertices()[0], meshes[0], atol=1e-2)
    resized = single.resized(0.5)
    expected = meshes[0].copy()
    expected[:, :2] = (expected[:, :2] + 0.5) * 0.5 - 0.5
    expected[:, 2] *= 0.5
    np.testing.assert_allclose(resized.vertices()[0], expected, atol=1e-2)
    with pytest.raises(ValueError, match="NaN"):
        fit_single(np.full((468, 3), np.nan))
    with pytest.raises(ValueError, match="no.*face|none of"):
        fit_video(np.full((2, 468, 3), np.nan))
    with pytest.raises(ValueError, match="468"):
        fit_video(np.zeros((2, 68, 3)))


def test_transfer_moves_expression_not_identity():
    rng = np.random.default_rng(4)
    driver_expressions = np.stack([_mouth_open(a) + _brows_up(b)
                                   for a, b in [(0.0, 0.0), (0.3, 0.0), (0.1, 0.08), (0.25, 0.04)]])
    driver = fit_video(_video(_identity(1), driver_expressions, rng)[0])
    person_a = fit_video(_video(_identity(0), _expressions(rng, 3), rng)[0])
    person_b = fit_video(_video(mesh.mean_face().astype(np.float64), _expressions(rng, 3), rng)[0])

    driven_a, driven_b = transfer(person_a, driver), transfer(person_b, driver)
    assert driven_a.shape == (4, 468, 3) and driven_a.dtype == np.float32
    for person, driven in ((person_a, driven_a), (person_b, driven_b)):
        # Driver frame 0 leaves the person where it is in its own frame 0, with the driver's expression 0.
        s, r, t = person.scale[0], person.rotation[0].astype(np.float64), person.translation[0]
        np.testing.assert_allclose(driven[0], s * (person.identity + driver.expression[0]) @ r.T + t, atol=1e-3)
        # Bringing the driven meshes back to the person's canonical frame gives the driver's expressions.
        refit = fit_video(driven)
        shift = person.identity - refit.identity
        np.testing.assert_allclose(refit.expression + shift - driver.expression, 0, atol=2e-4)
    # The same driver makes the same mouth opening on both persons, relative to their own faces.
    opening_a = _mouth_opening(fit_video(driven_a).canonical())
    opening_b = _mouth_opening(fit_video(driven_b).canonical())
    np.testing.assert_allclose(opening_a - opening_a[0], opening_b - opening_b[0], atol=1e-3)
    np.testing.assert_allclose(opening_a - opening_a[0], _mouth_opening(driver.canonical())
                               - _mouth_opening(driver.canonical())[0], atol=1e-3)
    # The driver's motion is relative: its rotation since frame 0 is the person's rotation since frame 0.
    refit = fit_video(driven_a)
    np.testing.assert_allclose(refit.rotation @ refit.rotation[0].T, driver.rotation @ driver.rotation[0].T,
                               atol=1e-3)
    # Swapping the expression changes the render; the person's identity stays.
    renders = [render_nmfc(vertices, 256) for vertices in driven_a[:2]]
    assert (renders[0] != renders[1]).any(axis=2).mean() > 0.01
    with pytest.raises(IndexError):
        transfer(person_a, driver, person_frame=5)


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


def test_face3d_storage_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    meshes, *_ = _video(_identity(0), _expressions(rng, 32), rng)
    meshes[4] = np.nan
    fitted = fit_video(meshes)
    path = write_face3d(tmp_path, fitted, {"backend": "mediapipe", "frames_without_mesh": [4]})
    assert path == tmp_path / FACE3D_FILE and sorted(p.name for p in tmp_path.iterdir()) == [FACE3D_FILE]
    assert path.stat().st_size / 32 < 3200                          # about 3 KB a frame
    loaded = read_face3d(tmp_path)
    np.testing.assert_array_equal(loaded.valid, fitted.valid)
    np.testing.assert_array_equal(loaded.rotation, fitted.rotation)
    np.testing.assert_allclose(loaded.expression, fitted.expression, atol=2e-4)
    np.testing.assert_allclose(loaded.vertices(), fitted.vertices(), atol=0.02)
    meta = read_face3d_meta(tmp_path)
    assert meta["backend"] == "mediapipe" and meta["topology"] == "mediapipe468" and meta["frames_without_mesh"] == [4]
    with pytest.raises(store.StoreError, match="extract_mesh"):
        read_face3d(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="shape"):
        FaceFit(fitted.identity, fitted.expression, fitted.scale[:3], fitted.rotation, fitted.translation,
                fitted.valid)


# ----------------------------------------------------------------------------------------------------------------
# MediaPipe and the extraction command
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from dataset.demo import load_source_photos

    return load_source_photos()


@pytest.fixture(scope="module")
def detector():
    from dataset.face3d.backends import make_mesh_detector

    return make_mesh_detector("mediapipe")


def test_mediapipe_finds_the_astronauts_face(photos, detector):
    from dataset.landmarks import DlibDetector

    astronaut = photos["astronaut"]
    found = detector.detect([astronaut, np.full((128, 128, 3), 90, np.uint8)])
    assert found[1] is None                                          # no face in a flat grey image
    vertices = found[0]
    assert vertices.shape == (468, 3) and vertices.dtype == np.float32 and np.isfinite(vertices).all()
    x0, y0, x1, y1 = DlibDetector().detect([astronaut])[0][0].box
    margin = 0.25 * (x1 - x0)                                        # the mesh reaches up the forehead
    assert (vertices[:, 0] > x0 - margin).all() and (vertices[:, 0] < x1 + margin).all()
    assert (vertices[:, 1] > y0 - margin).all() and (vertices[:, 1] < y1 + margin).all()
    assert np.ptp(vertices[:, 0]) > 0.6 * (x1 - x0)
    # Mirror symmetry of the topology on a real face: the flipped photo's mesh, relabelled, is the mesh.
    flipped = detector.detect([np.ascontiguousarray(astronaut[:, ::-1])])[0][mesh.mirror_permutation()]
    flipped[:, 0] = astronaut.shape[1] - 1 - flipped[:, 0]
    assert np.median(np.linalg.norm(flipped[:, :2] - vertices[:, :2], axis=1)) < 2.0
    with pytest.raises(ValueError, match="uint8"):
        detector.detect([astronaut.astype(np.float32)])


def test_mesh_backend_registry_and_missing_mediapipe(monkeypatch):
    from dataset.face3d.backends import MESH_BACKENDS, MediaPipeMeshDetector, make_mesh_detector
    from dataset.landmarks import DetectorLoadError

    assert isinstance(make_mesh_detector("mediapipe"), MediaPipeMeshDetector) and list(MESH_BACKENDS) == ["mediapipe"]
    with pytest.raises(ValueError, match="valid backends: mediapipe"):
        make_mesh_detector("3ddfa")
    monkeypatch.setitem(sys.modules, "mediapipe", None)                # as if the wheel were not installed
    with pytest.raises(DetectorLoadError, match="make setup"):
        MediaPipeMeshDetector().detect([np.zeros((8, 8, 3), np.uint8)])


def test_fit_recovers_an_in_plane_rotation_of_a_real_photo(photos, detector):
    astronaut = photos["astronaut"]
    matrix = cv2.getRotationMatrix2D((230.0, 130.0), 12.0, 1.1)
    rotated = cv2.warpAffine(astronaut, matrix, astronaut.shape[1::-1], flags=cv2.INTER_LINEAR)
    fitted = fit_video(np.stack(detector.detect([astronaut, rotated])))
    relative = fitted.rotation[1] @ fitted.rotation[0].T
    angle = np.degrees(np.arctan2(relative[1, 0], relative[0, 0]))
    assert angle == pytest.approx(-12.0, abs=1.5)                    # cv2's positive angle turns anticlockwise
    assert fitted.scale[1] / fitted.scale[0] == pytest.approx(1.1, rel=0.03)


def _face_crops(photo: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """Square crops around the photo's face, shifted and zoomed a little from one to the next."""
    centre = {512: (225.0, 135.0)}.get(photo.shape[0], (265.0, 235.0))
    crops = []
    for i in range(count):
        half = 110 + 6 * i
        cx, cy = centre[0] + 4 * i, centre[1] - 3 * i
        matrix = np.array([[size / (2 * half), 0, size / 2 - cx * size / (2 * half)],
                           [0, size / (2 * half), size / 2 - cy * size / (2 * half)]])
        crops.append(cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_AREA))
    return crops


def test_extract_meshes_on_a_store(tmp_path, photos):
    from dataset.face3d.extract_mesh import extract_meshes, main

    root = tmp_path / "store"
    info = store.open_store_for_writing(root, 128)
    videos = {("id00001", "astro"): _face_crops(photos["astronaut"], 128, 4),
              ("id00002", "grace"): _face_crops(photos["grace_hopper"], 128, 3) + [np.zeros((128, 128, 3), np.uint8)],
              ("id00003", "broken"): _face_crops(photos["astronaut"], 128, 2)}
    for (identity, video), frames in videos.items():
        store.write_video(root, info, identity, video, frames, np.zeros((len(frames), 68, 2)), {})
    (store.video_dir(root, "id00003", "broken") / "frames.bin").write_bytes(b"not a jpeg" * 100)
    store.build_index(root)

    summary = extract_meshes(root)
    assert summary.counts["done"] == 2 and summary.counts["failed"] == 1
    assert summary.totals["frames"] == 8 and summary.totals["frames_without_mesh"] == 1
    failures = [json.loads(line) for line in (root / "face3d_failures.jsonl").read_text().splitlines()]
    # The damaged frames file is named (its JPEG offsets do not match its size, so nothing is decoded).
    assert [f["key"] for f in failures] == ["id00003/broken"] and "frames.bin is truncated" in failures[0]["error"]
    assert not (store.video_dir(root, "id00003", "broken") / FACE3D_FILE).exists()

    astro = read_face3d(store.video_dir(root, "id00001", "astro"))
    assert astro.num_frames == 4 and astro.valid.all()
    # The crops zoom out and move: the fitted scale falls, the face stays inside the 128x128 crop.
    assert (np.diff(astro.scale) < 0).all()
    vertices = astro.vertices()
    assert (vertices[..., :2] > 0).all() and (vertices[..., :2] < 127).all()
    grace = read_face3d(store.video_dir(root, "id00002", "grace"))
    np.testing.assert_array_equal(grace.valid, [True, True, True, False])
    assert read_face3d_meta(store.video_dir(root, "id00002", "grace"))["frames_without_mesh"] == [3]
    # The NMFC render of a stored frame covers the face in the crop.
    nmfc = render_nmfc(vertices[0], 128)
    assert 0.15 < (nmfc.sum(axis=2) > 0).mean() < 0.8

    rerun = main([str(root)])
    assert rerun.counts["skipped"] == 2 and rerun.counts["failed"] == 1 and rerun.counts["done"] == 0
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "missing")])
    assert stopped.value.code == 2
