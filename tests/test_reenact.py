"""Reenactment: landmark adaptation, driver tracking, the H.264 writer and the reenact command end to end.

Persons here have random weights (the demo preset at 32x32): the tests check the plumbing, frame counts and
video format, not the look of the generated frames.
"""
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import torch

import reenact as reenact_command
from config import load_config, to_dict
from dataset.landmarks import make_detector
from dataset.pipeline.faces import read_face_crops
from dataset.store import scaled_thickness
from inference.adapt import adapt_landmarks, closing_gaps, fit_similarity, reference_shape
from inference.video import H264Writer, NoFaceError, track_driver
from model import build_networks
from reenact import reenact
from training.checkpoint import save_checkpoint
from training.person import Person, save_person

SIZE = 32


def clip(root: Path, identity: str) -> Path:
    return next((root / identity).glob("*/00001.mp4"))


def read_video(path: Path) -> tuple[dict, list[np.ndarray]]:
    """ffmpeg's metadata of a video and its decoded RGB frames."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return meta, [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]


def read_clip(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """An mp4v clip written by OpenCV, independent of the writer under test."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def small_config():
    return load_config("demo", [f"model.image_size={SIZE}"])


def random_person(reference_points: np.ndarray, identity: str = "random") -> Person:
    torch.manual_seed(0)
    cfg = small_config()
    generator = build_networks(cfg.model)["generator"].eval()
    return Person(generator, torch.zeros(generator.num_adain_params), reference_points, SIZE,
                  scaled_thickness(2, SIZE), identity)


def meta_checkpoint(path: Path) -> Path:
    """A meta-training checkpoint of the demo preset with random weights, as meta_train.py would write it."""
    cfg = small_config()
    networks = {name: net.state_dict() for name, net in build_networks(cfg.model).items()}
    return save_checkpoint(path, {"kind": "meta_train", "config": to_dict(cfg), "step": 0, "networks": networks})


class WhitePerson(Person):
    """Renders every frame white, so the output's panels can be told apart."""

    def generate(self, landmarks, batch_size=16):
        return torch.ones(landmarks.shape[0], 3, SIZE, SIZE)


class FailingPerson(Person):
    """A generator that fails on its second batch, halfway through a video."""

    calls = 0

    def generate(self, landmarks, batch_size=16):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("generator failed")
        return super().generate(landmarks, batch_size)


@pytest.fixture(scope="module")
def detector():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def person_points(demo_clips, detector):
    """Landmarks of id00006 (wide jaw, long chin) at SIZE, one (68, 2) array per frame."""
    return read_face_crops(clip(demo_clips, "id00006"), detector, SIZE)[1]


# ----------------------------------------------------------------------------------------------------------------
# Landmark adaptation
# ----------------------------------------------------------------------------------------------------------------


def jaw_width(points):
    return np.linalg.norm(points[..., 0, :] - points[..., 16, :], axis=-1)


def eye_distance(points):
    return np.linalg.norm(points[..., 36, :] - points[..., 45, :], axis=-1)


def mouth_opening(points):
    return np.linalg.norm(points[..., 62, :] - points[..., 66, :], axis=-1)


def rotation(degrees):
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def synthetic_driver(face: np.ndarray, frames: int = 24, seed: int = 0):
    """A driver that speaks (lower lip and chin move down) while its head turns, moves and scales."""
    rng = np.random.default_rng(seed)
    opening = 4 * np.abs(np.sin(np.linspace(0, 3 * np.pi, frames)))
    angles, scales = rng.uniform(-6, 6, frames), rng.uniform(0.95, 1.05, frames)
    shifts = rng.uniform(-3, 3, (frames, 2))
    centre = face.mean(axis=0)
    driver = []
    for t in range(frames):
        moved = face.copy()
        moved[[56, 57, 58, 65, 66, 67], 1] += opening[t]
        moved[6:11, 1] += 0.5 * opening[t]
        driver.append((moved - centre) @ (scales[t] * rotation(angles[t])).T + centre + shifts[t])
    return np.stack(driver), opening, scales


def reshaped(face: np.ndarray) -> np.ndarray:
    """Another person: a jaw 30% wider, eyes 15% further apart."""
    other = face.copy()
    centre_x = face[27:31, 0].mean()
    other[0:17, 0] = centre_x + 1.3 * (face[0:17, 0] - centre_x)
    other[36:48, 0] = centre_x + 1.15 * (face[36:48, 0] - centre_x)
    return other


def test_fit_similarity_recovers_rotation_scale_and_translation():
    source = np.random.default_rng(0).normal(size=(3, 11, 2))
    linear = 1.3 * rotation(25)
    target = source @ linear.T + np.array([2.0, -1.0])
    fitted, translation = fit_similarity(source, target)
    np.testing.assert_allclose(fitted, np.broadcast_to(linear, (3, 2, 2)), atol=1e-9)
    np.testing.assert_allclose(translation, np.broadcast_to([2.0, -1.0], (3, 2)), atol=1e-9)


def test_adapting_a_driver_onto_itself_returns_its_points(person_points):
    driver = person_points
    np.testing.assert_allclose(adapt_landmarks(driver, driver[0], reference="first"), driver, atol=1e-3)
    np.testing.assert_allclose(adapt_landmarks(driver, reference_shape(driver, "mean")), driver, atol=1e-3)


@pytest.mark.parametrize("reference", ["mean", "first"])
def test_adaptation_keeps_the_persons_face_shape_and_carries_mouth_and_head_motion(person_points, reference):
    driver, opening, scales = synthetic_driver(person_points.mean(axis=0).astype(np.float64))
    # The person's typical face shows the expression of the driver's reference, in another shape.
    person = reshaped(reference_shape(driver, reference))
    adapted = adapt_landmarks(driver, person, reference=reference)

    # Face shape: the person's jaw and eye distance (moved with the driver's head scale), not the driver's.
    reference_scale = scales[0] if reference == "first" else 1.0
    for measure in (jaw_width, eye_distance):
        np.testing.assert_allclose(measure(adapted), measure(person) * scales / reference_scale, rtol=0.03)
        assert np.all(np.abs(measure(adapted) / measure(driver) - 1) > 0.1)
    # Expression: the mouth opens and closes with the driver's.
    assert np.corrcoef(mouth_opening(adapted), opening)[0, 1] > 0.99
    # Head motion: the adapted face turns with the driver (the eye line's angle follows).
    def eye_angle(points):
        delta = points[..., 45, :] - points[..., 36, :]
        return np.degrees(np.arctan2(delta[..., 1], delta[..., 0]))
    np.testing.assert_allclose(eye_angle(adapted) - eye_angle(adapted[0]), eye_angle(driver) - eye_angle(driver[0]),
                               atol=0.5)


def test_lips_of_a_person_more_closed_than_the_driver_meet_instead_of_crossing(person_points):
    face = person_points.mean(axis=0).astype(np.float64)
    driver, opening, _ = synthetic_driver(face)
    # The driver's mean face opens the mouth about 2.5 px more than the person's does.
    adapted = adapt_landmarks(driver, reshaped(face), reference="mean")
    assert closing_gaps(adapted).min() > -1e-4           # float32 rounding
    lips = closing_gaps(adapted)[:, -2]                 # inner lips, points 62 and 66
    assert lips[opening < 1].max() < 0.05               # closed when the driver's is closed
    assert lips[opening > 3.5].min() > 1.0              # and still opening with it
    assert np.corrcoef(lips, opening)[0, 1] > 0.8


def test_adaptation_between_demo_identities_keeps_the_persons_proportions(demo_clips, detector, person_points):
    driver = read_face_crops(clip(demo_clips, "id00004"), detector, SIZE)[1]   # narrow face, long nose
    person = person_points.mean(axis=0)
    adapted = adapt_landmarks(driver, person)

    def proportion(points):
        return jaw_width(points) / eye_distance(points)
    # Yaw makes both vary from frame to frame; on average they are the person's, not the driver's.
    assert abs(proportion(driver).mean() / proportion(person) - 1) > 0.05
    assert proportion(adapted).mean() == pytest.approx(proportion(person), rel=0.02)
    assert np.corrcoef(mouth_opening(adapted), mouth_opening(driver))[0, 1] > 0.9


def test_adapt_rejects_bad_shapes():
    with pytest.raises(ValueError, match="68, 2"):
        adapt_landmarks(np.zeros((0, 68, 2)), np.zeros((68, 2)))
    with pytest.raises(ValueError, match="person_points"):
        adapt_landmarks(np.random.rand(2, 68, 2), np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------------------------
# Video reading and writing
# ----------------------------------------------------------------------------------------------------------------


def test_writer_makes_browser_playable_h264_with_even_size(tmp_path):
    frames = [np.full((17, 33, 3), 10 * i, np.uint8) for i in range(7)]
    out = tmp_path / "odd.mp4"
    with H264Writer(out, fps=30000 / 1001) as writer:
        for frame in frames:
            writer.write(frame)
    meta, decoded = read_video(out)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == writer.video_size == (34, 18) and len(decoded) == 7
    assert meta["fps"] == pytest.approx(29.97, abs=0.01)
    # faststart: the index (moov) comes before the frame data (mdat).
    head = out.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")
    assert [p.name for p in tmp_path.iterdir()] == ["odd.mp4"]


def test_writer_refuses_a_directory_before_any_frame_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        H264Writer(tmp_path / "out.mp4", fps=25)
    later = tmp_path / "later.mp4"
    with pytest.raises(OSError):
        with H264Writer(later, fps=25) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            later.mkdir()  # the output path turns into a folder while the video is being written
            (later / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["later.mp4", "out.mp4"]


def test_driver_frames_without_a_face_keep_the_previous_landmarks(demo_clips, detector, tmp_path):
    frames = read_clip(clip(demo_clips, "id00001"))
    blank = {0, 1, 7}
    for i in blank:
        frames[i] = np.zeros_like(frames[i])
    track = track_driver(write_clip(tmp_path / "gaps.mp4", frames), detector, SIZE, chunk_size=5)
    assert len(track.crops) == len(track.points) == len(frames)
    assert track.missing == 3 and set(np.flatnonzero(~track.found)) == blank
    np.testing.assert_array_equal(track.points[0], track.points[2])
    np.testing.assert_array_equal(track.points[1], track.points[2])
    np.testing.assert_array_equal(track.points[7], track.points[6])
    assert track.fps == pytest.approx(25.0)


# ----------------------------------------------------------------------------------------------------------------
# The reenact command
# ----------------------------------------------------------------------------------------------------------------


def test_reenact_writes_one_h264_frame_per_driver_frame(demo_clips, detector, person_points, tmp_path):
    driver = clip(demo_clips, "id00001")
    out = tmp_path / "out" / "reenact.mp4"
    summary = reenact(random_person(person_points.mean(axis=0)), driver, out, detector, batch_size=5,
                      progress=False)
    meta, frames = read_video(out)
    assert len(frames) == len(read_clip(driver)) == summary["frames"] == 16
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (3 * SIZE, SIZE) and meta["size"][0] % 2 == 0 and meta["size"][1] % 2 == 0
    assert meta["fps"] == pytest.approx(25.0)
    assert summary["no_face_frames"] == 0 and summary["adapted"] and summary["out"] == str(out)
    assert summary["size"] == [3 * SIZE, SIZE]


def test_panels_are_driver_landmarks_generated(demo_clips, detector, person_points, tmp_path):
    base = random_person(person_points.mean(axis=0))
    person = WhitePerson(**vars(base))
    driver = clip(demo_clips, "id00001")
    reenact(person, driver, tmp_path / "out.mp4", detector, adapt=False, progress=False)
    _, frames = read_video(tmp_path / "out.mp4")
    crops = track_driver(driver, detector, SIZE).crops
    first, landmarks, generated = np.split(frames[3].astype(np.float32), 3, axis=1)
    assert np.abs(first - crops[3]).mean() < 8
    assert (landmarks.max(axis=2) < 40).mean() > 0.8       # coloured lines on black
    assert generated.min() > 230


def test_a_failing_generator_leaves_no_output_file(demo_clips, detector, person_points, tmp_path):
    person = FailingPerson(**vars(random_person(person_points.mean(axis=0))))
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="generator failed"):
        reenact(person, clip(demo_clips, "id00001"), out, detector, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []
    # An earlier video under the same name survives a failed run whole.
    out.write_bytes(b"earlier video")
    person.calls = 0
    with pytest.raises(RuntimeError, match="generator failed"):
        reenact(person, clip(demo_clips, "id00001"), out, detector, batch_size=4, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and out.read_bytes() == b"earlier video"


def test_driver_without_faces_is_a_clear_error(detector, person_points, tmp_path):
    black = write_clip(tmp_path / "black.mp4", [np.zeros((96, 96, 3), np.uint8)] * 6)
    with pytest.raises(NoFaceError, match="no face found in any of its 6 frames"):
        reenact(random_person(person_points.mean(axis=0)), black, tmp_path / "out.mp4", detector, progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_command_with_a_person_file_and_with_frames_and_a_checkpoint(demo_clips, person_points, tmp_path, capsys):
    cfg = small_config()
    person_file = save_person(tmp_path / "person.pt", random_person(person_points.mean(axis=0), "id00006"),
                              to_dict(cfg)["model"], cfg.data.landmark_thickness)
    driver = str(clip(demo_clips, "id00001"))
    assert reenact_command.main(["--person", str(person_file), "--driver", driver,
                                 "--out", str(tmp_path / "a.mp4"), "--batch-size", "8"]) == 0
    assert "16 frames at 25.00 fps" in capsys.readouterr().out

    checkpoint = meta_checkpoint(tmp_path / "meta.pt")
    person_frames = str(clip(demo_clips, "id00006"))
    assert reenact_command.main(["--person", person_frames, "--checkpoint", str(checkpoint), "--driver", driver,
                                 "--out", str(tmp_path / "b.mp4"), "--person-frames", "4", "--no-adapt"]) == 0
    assert len(read_video(tmp_path / "b.mp4")[1]) == 16


class PickledCode:
    """Unpickling this object would run code (here a harmless print): a file holding it must not load."""

    def __reduce__(self):
        return (print, ("this ran on loading",))


def damaged_files(folder: Path) -> dict[str, Path]:
    """A zero-byte file, a truncated checkpoint, one holding pickled code, and text that is no torch file."""
    whole = meta_checkpoint(folder / "whole.pt").read_bytes()
    files = {"empty": folder / "empty.pt", "truncated": folder / "truncated.pt", "code": folder / "code.pt",
             "text": folder / "text.pt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    torch.save({"networks": PickledCode()}, files["code"])
    files["text"].write_bytes(b"not a checkpoint")
    return files


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "weights_only=False" not in err and "Traceback" not in err
    return err


def test_command_errors(demo_clips, tmp_path, capsys):
    driver = str(clip(demo_clips, "id00001"))
    person_frames = str(clip(demo_clips, "id00006"))
    damaged = damaged_files(tmp_path)
    cases = [
        (["--person", str(tmp_path / "missing.pt")], "person not found"),
        (["--person", person_frames], "give --checkpoint"),
        (["--person", person_frames, "--checkpoint", str(tmp_path / "nowhere.pt")], "checkpoint not found"),
        (["--person", person_frames, "--checkpoint", str(damaged["empty"])], "is empty (0 bytes)"),
        (["--person", str(damaged["empty"])], "is empty (0 bytes)"),
        (["--person", str(damaged["truncated"])], "truncated"),
        (["--person", person_frames, "--checkpoint", str(damaged["code"])], "holds pickled Python objects"),
        (["--person", str(damaged["code"])], "it is not loaded"),
        (["--person", str(damaged["text"])], str(damaged["text"])),
    ]
    for args, message in cases:
        assert reenact_command.main(args + ["--driver", driver, "--out", str(tmp_path / "out.mp4")]) == 1, args
        assert message in one_line_error(capsys), args
    assert "this ran on loading" not in capsys.readouterr().out
    assert reenact_command.main(["--person", person_frames, "--driver", str(tmp_path / "no.mp4"),
                                 "--out", str(tmp_path / "out.mp4")]) == 1
    assert "driver not found" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_an_output_that_is_an_input_or_a_folder_is_refused_before_any_work(demo_clips, tmp_path, capsys):
    driver = tmp_path / "driver.mp4"
    driver.write_bytes(clip(demo_clips, "id00001").read_bytes())
    original = driver.read_bytes()
    (tmp_path / "link.mp4").symlink_to(driver)
    (tmp_path / "hard.mp4").hardlink_to(driver)
    folder = tmp_path / "videos"
    folder.mkdir()
    # The checkpoint does not exist: reading it would be the first piece of work, and its error never shows.
    work = ["--person", str(clip(demo_clips, "id00006")), "--checkpoint", str(tmp_path / "nowhere.pt")]
    cases = [
        (["--driver", str(driver), "--out", str(driver)], "is also the --driver"),
        (["--driver", str(driver), "--out", str(tmp_path / "sub" / ".." / "driver.mp4")], "is also the --driver"),
        (["--driver", str(tmp_path / "link.mp4"), "--out", str(driver)], "is also the --driver"),
        (["--driver", str(tmp_path / "hard.mp4"), "--out", str(driver)], "is also the --driver"),
        (["--webcam", str(driver), "--out", str(driver)], "is also the --webcam"),
        (["--driver", str(driver), "--out", str(folder)], "is a directory"),
        (["--driver", str(driver), "--out", str(tmp_path / "out.avi")], "must end in .mp4"),
        (["--driver", str(driver), "--out", str(driver / "out.mp4")], "is a file, not a folder"),
    ]
    for args, message in cases:
        assert reenact_command.main(work + args) == 1, args
        assert message in one_line_error(capsys), args
    person = tmp_path / "person.mp4"
    person.write_bytes(original)
    assert reenact_command.main(["--person", str(person), "--checkpoint", str(tmp_path / "nowhere.pt"),
                                 "--driver", str(driver), "--out", str(person)]) == 1
    assert "is also the --person" in one_line_error(capsys)
    assert driver.read_bytes() == original and list(folder.iterdir()) == []
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no hidden partial file anywhere


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--person-frames", "0"], "--person-frames must be at least 1"),
    (["--reference-frame", "-1"], "--reference-frame must be at least 0"),
    (["--max-frames", "0"], "--max-frames must be at least 1"),
    (["--calibration-frames", "0"], "--calibration-frames must be at least 1"),
    (["--device", "gpu0"], "is not a torch device"),
    (["--runtime", "onnx"], "export"),
    (["--webcam", "0"], "not both"),
])
def test_arguments_are_range_checked_with_one_line(demo_clips, tmp_path, capsys, args, message):
    person = tmp_path / "person.pt"
    person.write_bytes(b"")  # never read: every case fails on its argument first (or on the file's suffix)
    base = ["--person", str(person), "--driver", str(clip(demo_clips, "id00001")), "--out", str(tmp_path / "o.mp4")]
    assert reenact_command.main(base + args) == 1
    assert message in one_line_error(capsys)


def test_person_frames_without_a_face_are_a_clear_error(tmp_path, capsys):
    checkpoint = meta_checkpoint(tmp_path / "meta.pt")
    black = write_clip(tmp_path / "black.mp4", [np.zeros((96, 96, 3), np.uint8)] * 4)
    assert reenact_command.main(["--person", str(black), "--checkpoint", str(checkpoint), "--driver", str(black),
                                 "--out", str(tmp_path / "out.mp4")]) == 1
    assert "no face found" in capsys.readouterr().err
