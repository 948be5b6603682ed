"""Built-in demo data: real-photo talking-head clips that decode, move like talking faces and are resumable."""
import json
import re

import cv2
import numpy as np
import pytest

from dataset import demo
from dataset.landmarks import DlibDetector

IDENTITIES, FRAMES, SIZE = 8, 48, 128


def read_clip(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo.build_demo_dataset(out, identities=IDENTITIES, clips_per_identity=1, frames=FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def manifest(demo_dir):
    return json.loads((demo_dir / demo.MANIFEST_NAME).read_text())


def clip_paths(demo_dir):
    return sorted(demo_dir.glob("id*/*/*.mp4"))


def test_layout_is_voxceleb2_style_with_a_manifest(demo_dir, manifest):
    paths = [path.relative_to(demo_dir).as_posix() for path in clip_paths(demo_dir)]
    assert len(paths) == IDENTITIES
    assert all(re.fullmatch(r"id\d{5}/demo\d{4}/\d{5}\.mp4", path) for path in paths)
    assert paths[0] == "id00001/demo0001/00001.mp4"
    assert manifest["fps"] == 25 and manifest["frames_per_clip"] == FRAMES and manifest["size"] == SIZE
    listed = [clip["path"] for person in manifest["identities"] for clip in person["clips"]]
    assert sorted(listed) == paths
    for person in manifest["identities"]:
        assert person["recipe"]["description"] and person["source"]
        assert person["recipe"]["source"] in ("astronaut", "grace_hopper")
    assert len({person["identity"] for person in manifest["identities"]}) == IDENTITIES


def test_clips_decode_with_the_right_frame_count_size_and_rate(demo_dir):
    for path in clip_paths(demo_dir):
        capture = cv2.VideoCapture(str(path))
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
        capture.release()
        frames = read_clip(path)
        assert len(frames) == FRAMES
        assert all(frame.shape == (SIZE, SIZE, 3) for frame in frames)
        # Not a frozen picture: consecutive frames differ.
        assert np.abs(frames[0].astype(int) - frames[FRAMES // 2]).mean() > 0.5


@pytest.mark.parametrize("identity", ["id00001", "id00002", "id00004"])
def test_detected_landmarks_move_like_a_talking_head(demo_dir, identity):
    frames = read_clip(next((demo_dir / identity).glob("*/*.mp4")))
    faces = DlibDetector().detect(frames)
    found = [found[0].points for found in faces if found]
    assert len(found) >= 0.9 * FRAMES
    points = np.stack(found)
    mouth_opening = points[:, 66, 1] - points[:, 62, 1]
    assert np.ptp(mouth_opening) >= 2.0                     # the mouth opens and closes
    nose = points[:, 30]
    assert np.ptp(nose, axis=0).max() >= 2.0                 # the head moves
    assert np.ptp(points[:, 8, 1] - points[:, 27, 1]) >= 2.0  # the jaw drops with the mouth


def test_mouth_interior_is_dark_when_open():
    image, points = demo.framed_sources(SIZE)["grace_hopper"]
    height = demo._face_height(points)
    closed = demo.expression(points, 0.0, 0.0, 0.0, 0.0)
    opened = demo.expression(points, 0.12 * height, 0.0, 0.0, 0.0)
    warp = demo.MeshWarp(demo.control_points(points, SIZE), SIZE)
    frame = demo._dark_mouth(warp.warp(image, demo.control_points(points, SIZE, opened)), opened,
                             0.12 * height, height)
    centre = np.round(opened[[62, 66]].mean(axis=0)).astype(int)
    assert frame[centre[1], centre[0]].max() < 90
    still = warp.warp(image, demo.control_points(points, SIZE, closed))
    assert np.abs(still.astype(int) - image).mean() < 1.0         # the identity warp leaves the photo alone


def signed_areas(corners):
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def test_animation_never_folds_the_warp_mesh():
    # Every triangle keeps its orientation (or collapses) in every frame: the face stretches, it never flips.
    for person, recipe in enumerate(demo.RECIPES):
        image, points = demo.make_identity(*demo.framed_sources(SIZE)[recipe.source], recipe)
        warp = demo.face_warp(points, SIZE)
        orientation = np.sign(signed_areas(warp.layout[warp.triangles]))
        for clip in range(3):
            motion = demo.sample_motion(np.random.default_rng([0, person, clip]), 48, SIZE,
                                        demo._face_height(points))
            for t in range(48):
                moved = demo.expression(points, motion.mouth[t], motion.blink[t], motion.brows[t], motion.yaw[t])
                pose = demo.head_pose(points, motion.rotation[t], motion.shift[t], motion.scale[t])
                target = demo.control_points(points, SIZE, moved @ pose[:, :2].T + pose[:, 2], pose)
                assert (signed_areas(target[warp.triangles]) * orientation).min() > -1e-6, (person, clip, t)


def test_identities_look_different(demo_dir):
    firsts = [read_clip(next((demo_dir / f"id{n:05d}").glob("*/*.mp4")))[0].astype(np.float64)
              for n in range(1, IDENTITIES + 1)]
    for a in range(IDENTITIES):
        for b in range(a + 1, IDENTITIES):
            assert np.abs(firsts[a] - firsts[b]).mean() > 20.0, (a + 1, b + 1)


def test_every_recipe_changes_its_source_photo():
    sources = demo.framed_sources(SIZE)
    for recipe in demo.RECIPES[2:]:
        image, points = sources[recipe.source]
        changed, moved = demo.make_identity(image, points, recipe)
        colour_change = np.abs(changed.astype(np.float64) - (image[:, ::-1] if recipe.mirror else image)).mean()
        shape_change = np.abs(moved - (demo.flip_landmarks(points, SIZE) if recipe.mirror else points)).max()
        assert colour_change > 10.0 or shape_change > 3.0, recipe.description
        assert changed.shape == image.shape and changed.dtype == np.uint8


def test_identities_beyond_the_table_are_random_but_seeded():
    recipes = demo.identity_recipes(11, seed=3)
    assert recipes[:8] == list(demo.RECIPES)
    assert recipes[8:] == demo.identity_recipes(11, seed=3)[8:]
    assert recipes[8:] != demo.identity_recipes(11, seed=4)[8:]
    assert [r.source for r in recipes[8:]] == ["astronaut", "grace_hopper", "astronaut"]


def test_rerun_keeps_existing_clips_and_rebuilds_missing_ones_identically(demo_dir):
    paths = clip_paths(demo_dir)
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    original = paths[3].read_bytes()
    paths[3].unlink()
    leftover = paths[0].with_name(".00001.partial.mp4")
    leftover.write_bytes(b"half a clip")
    demo.build_demo_dataset(demo_dir, identities=IDENTITIES, clips_per_identity=1, frames=FRAMES, size=SIZE)
    assert not leftover.exists()
    for path in paths:
        if path != paths[3]:
            assert path.stat().st_mtime_ns == stamps[path]
    assert paths[3].read_bytes() == original                 # deterministic given the seed


def test_seed_changes_the_motion(tmp_path):
    build = dict(identities=1, clips_per_identity=1, frames=6, size=64)
    first = read_clip(demo.build_demo_dataset(tmp_path / "a", seed=0, **build) / "id00001/demo0001/00001.mp4")
    again = read_clip(demo.build_demo_dataset(tmp_path / "b", seed=0, **build) / "id00001/demo0001/00001.mp4")
    other = read_clip(demo.build_demo_dataset(tmp_path / "c", seed=1, **build) / "id00001/demo0001/00001.mp4")
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert np.abs(np.stack(first).astype(int) - np.stack(other)).mean() > 1.0


def test_interrupted_write_leaves_no_clip(tmp_path):
    path = tmp_path / "00001.mp4"
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(cv2.error):
        demo.write_clip(path, [frame, None])
    assert list(tmp_path.iterdir()) == []


def test_command_line_builds_and_summarises(tmp_path, capsys):
    out = demo.main(["--out", str(tmp_path), "--identities", "2", "--clips-per-identity", "2", "--frames", "3",
                     "--size", "64", "--seed", "5"])
    assert out == tmp_path
    assert len(clip_paths(tmp_path)) == 4
    assert (tmp_path / "id00002" / "demo0004" / "00001.mp4").exists()
    summary = capsys.readouterr().out
    assert "2 identities, 4 clips, 12 frames" in summary and str(tmp_path) in summary


def test_every_clip_has_a_soundtrack_as_long_as_its_video(demo_dir, manifest):
    from dataset.audio import decode_audio

    rate = manifest["audio"]["sample_rate"]
    for path in clip_paths(demo_dir):
        samples = decode_audio(path)
        assert samples is not None and len(samples) == FRAMES * rate // manifest["fps"]
        assert np.abs(samples).max() > 0.05                      # audible speech, not just the noise floor
