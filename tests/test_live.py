"""Live reenactment through the camera path, fed a video file: OpenCV capture, the same face tracking as offline
reenactment, causal adaptation (reference fixed from the first frames), both families, the reenact.py --webcam
command without a window, and capture errors.
"""
from __future__ import annotations

import numpy as np
import pytest

import reenact as reenact_command
from bench.inference import posed_mean_faces, random_headgan_generator
from config import load_config, to_dict
from dataset.face3d.backends import make_mesh_detector
from dataset.face3d.fit import fit_video
from inference import live
from inference.adapt import reference_shape
from inference.headgan import headgan_person
from inference.video import track_driver
from reenact import reenact
from test_export import one_torch_thread  # noqa: F401  (autouse: one torch thread here too)
from test_reenact import SIZE, clip, one_line_error, random_person, read_clip, read_video, write_clip
from training.person import save_person


@pytest.fixture(scope="module")
def detector():
    from dataset.landmarks import make_detector

    return make_detector("dlib")


@pytest.fixture(scope="module")
def person(demo_clips, detector):
    points = track_driver(clip(demo_clips, "id00006"), detector, SIZE).points
    return random_person(points.mean(axis=0), "id00006")


def test_capture_reads_a_video_file_through_the_camera_path(demo_clips, tmp_path):
    path = clip(demo_clips, "id00001")
    assert live.capture_target("0") == 0 and live.capture_target(2) == 2
    assert live.capture_target("rtsp://host/stream") == "rtsp://host/stream"
    capture = live.Capture(str(path))
    frames = []
    while (frame := capture.read()) is not None:
        frames.append(frame)
    capture.release()
    assert capture.fps == pytest.approx(25.0) and len(frames) == 16
    np.testing.assert_array_equal(frames[3], read_clip(path)[3])
    with pytest.raises(FileNotFoundError, match="capture source not found"):
        live.Capture(str(tmp_path / "missing.mp4"))
    (tmp_path / "garbage.mp4").write_bytes(b"no video here")
    with pytest.raises(live.LiveError, match="cannot open stream or video"):
        live.Capture(str(tmp_path / "garbage.mp4"))


def test_live_frames_match_offline_reenactment(demo_clips, detector, person, tmp_path):
    driver = clip(demo_clips, "id00001")
    summary = live.run_live(person, str(driver), detector, out=tmp_path / "live.mp4", window=False, adapt=False)
    reenact(person, driver, tmp_path / "offline.mp4", detector, adapt=False, progress=False)
    _, live_frames = read_video(tmp_path / "live.mp4")
    _, offline_frames = read_video(tmp_path / "offline.mp4")
    assert summary["frames"] == summary["frames_with_face"] == len(live_frames) == len(offline_frames) == 16
    # Same tracking, crops, landmark images and generator: the same panels, through the same encoder.
    assert np.abs(np.stack(live_frames).astype(int) - np.stack(offline_frames)).max() <= 2
    timing = summary["timing"]
    assert {"capture", "detect", "crop", "draw", "generate", "compose", "encode"} <= set(timing["stage_ms"])
    assert timing["fps"] > 0 and summary["fps"] > 0 and not summary["window"]


def test_live_adaptation_fixes_the_reference_after_calibration(person):
    driving = live.TalkingHeadDriving(person, adapt=True, calibration=3)
    rng = np.random.default_rng(0)
    frames = [person.reference_points + rng.normal(0, 0.5, (68, 2)).astype(np.float32) for _ in range(5)]
    crop = np.zeros((SIZE, SIZE, 3), np.uint8)
    clock = live.StageClock()
    references = []
    for points in frames:
        clock.start_frame()
        landmarks, drawn = driving.driving(crop, points, True, clock)
        references.append(driving.reference.copy())
        assert landmarks.shape == (1, 3, SIZE, SIZE) and drawn.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(references[0], frames[0], atol=1e-4)
    np.testing.assert_allclose(references[2], reference_shape(np.stack(frames[:3]), "mean"))
    np.testing.assert_array_equal(references[3], references[2])
    np.testing.assert_array_equal(references[4], references[2])
    assert {"adapt", "draw"} <= set(clock.summary()["stage_ms"])


def test_live_headgan_fit_recovers_pose_and_expression_against_the_calibrated_identity():
    size = 64
    meshes = posed_mean_faces(4, size, seed=1).astype(np.float64)
    driving = live.HeadGANDriving(person=None, mesh_detector=None, calibration=3)
    for mesh in meshes[:3]:
        driving.driver_fit(mesh)
    identity = driving.identity_fit
    np.testing.assert_allclose(identity.identity, fit_video(meshes[:3]).identity, atol=1e-6)
    # A later frame: the calibrated identity with a mouth offset, posed like the fourth mesh.
    from dataset.face3d.mesh import stable_vertices
    offset = np.zeros_like(identity.identity)
    moving = np.setdiff1d(np.arange(len(offset)), stable_vertices())
    offset[moving[:40], 1] = 0.05
    posed = fit_video(meshes[3:4])
    frame = (posed.scale[0] * (identity.identity + offset) @ posed.rotation[0].T + posed.translation[0])
    fit = driving.driver_fit(frame)
    assert fit.num_frames == 2
    np.testing.assert_allclose(fit.expression[1], offset, atol=1e-4)
    np.testing.assert_allclose(fit.vertices()[1], frame, atol=1e-3)
    np.testing.assert_allclose(fit.rotation[0], identity.rotation[0])   # motion is relative to the first frame


def test_live_headgan_from_a_video_file(demo_clips, detector):
    cfg = load_config("headgan_demo", [f"model.image_size={SIZE}"])
    state = {"config": to_dict(cfg), "networks": {"generator": random_headgan_generator(cfg, "cpu").state_dict()}}
    mesh_detector = make_mesh_detector("mediapipe")
    hg = headgan_person(state, clip(demo_clips, "id00006"), detector, mesh_detector)
    summary = live.run_live(hg, str(clip(demo_clips, "id00001")), detector, mesh_detector, window=False,
                            max_frames=6, calibration=3)
    assert summary["family"] == "headgan" and summary["frames"] == 6
    assert {"fit3d", "adapt", "draw", "generate"} <= set(summary["timing"]["stage_ms"])


def test_reenact_webcam_command_on_a_video_file_without_a_display(demo_clips, person, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not live.display_available() or live.sys.platform in ("win32", "darwin")
    cfg = load_config("demo", [f"model.image_size={SIZE}"])
    person_file = save_person(tmp_path / "person.pt", person, to_dict(cfg)["model"], cfg.data.landmark_thickness)
    out = tmp_path / "live.mp4"
    assert reenact_command.main(["--person", str(person_file), "--webcam", str(clip(demo_clips, "id00001")),
                                 "--max-frames", "5", "--calibration-frames", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "live talking_head (torch): 5 frames (5 with a face)" in printed and "frames/s" in printed
    meta, frames = read_video(out)
    assert len(frames) == 5 and meta["size"] == (3 * SIZE, SIZE)


def test_live_capture_without_frames_or_faces(detector, person, tmp_path, capsys):
    # Frames without a face: the driver panel shows the frame, the others stay black, and the loop goes on.
    black = write_clip(tmp_path / "black.mp4", [np.zeros((96, 96, 3), np.uint8)] * 4)
    summary = live.run_live(person, str(black), detector, out=tmp_path / "black_out.mp4", window=False)
    assert summary["frames"] == 4 and summary["frames_with_face"] == 0
    assert np.stack(read_video(tmp_path / "black_out.mp4")[1]).max() < 20
    assert reenact_command.main(["--person", str(tmp_path / "p.pt"), "--webcam", str(tmp_path / "missing.mp4"),
                                 "--no-window"]) == 1
    assert "capture source not found" in one_line_error(capsys)
