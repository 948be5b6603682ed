"""ONNX export of both families: onnxruntime's frames against PyTorch's, the exported file's metadata, the
export command, reenact.py --runtime onnx, and damaged or foreign .onnx files.

Tolerance: float32 onnxruntime against float32 PyTorch on CPU, images in [-1, 1]: at most 1e-4 absolute per
pixel (measured: about 5e-6; the two sum convolutions in different orders, nothing else differs). Random-weight
networks of the demo presets at 32x32 keep it fast; HeadGAN's flow head gets random weights too, so the flow is
not the zero of initialisation and the warp is exercised.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reenact as reenact_command
from bench.inference import posed_mean_faces, random_headgan_generator, random_person
from config import load_config, to_dict
from dataset.face3d.fit import fit_single
from dataset.face3d.render import render_nmfc
from inference import export
from inference.headgan import HeadGANPerson, to_tensor
from training.person import save_person
from test_reenact import clip, damaged_files, one_line_error, read_video

SIZE = 32
TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tests check numbers, not speed; on a CI machine shared by several jobs one thread per op is faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def talking_head():
    cfg = load_config("demo", [f"model.image_size={SIZE}"])
    return random_person(cfg, torch.device("cpu"), seed=3)


@pytest.fixture(scope="module")
def headgan():
    cfg = load_config("headgan_demo", [f"model.image_size={SIZE}"])
    generator = random_headgan_generator(cfg, torch.device("cpu"), seed=3)
    with torch.no_grad():
        generator.flow.flow_head.weight.normal_(0, 0.05)
        generator.flow.flow_head.bias.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    fit = fit_single(posed_mean_faces(1, SIZE)[0])
    render = to_tensor([render_nmfc(fit.vertices()[0], SIZE)])
    reference = torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1
    return HeadGANPerson(generator, cfg, reference, render, fit, identity="random")


@pytest.fixture(scope="module")
def exported(talking_head, headgan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {"talking_head": export.export_onnx(talking_head, folder / "th.onnx"),
            "headgan": export.export_onnx(headgan, folder / "hg.onnx")}


def driving_renders(count: int) -> torch.Tensor:
    return to_tensor([render_nmfc(v, SIZE) for v in posed_mean_faces(count + 1, SIZE, seed=5)[1:]])


def test_talking_head_onnx_matches_pytorch(talking_head, exported):
    summary = exported["talking_head"]
    assert summary["family"] == "talking_head" and summary["inputs"] == ["driving"]
    assert summary["max_abs_diff"] < TOLERANCE
    person = export.load_onnx_person(summary["out"])
    assert isinstance(person, export.OnnxPerson) and person.image_size == SIZE and person.identity == "random"
    np.testing.assert_allclose(person.reference_points, talking_head.reference_points, atol=1e-5)
    assert person.landmark_thickness == talking_head.landmark_thickness
    # The batch axis is dynamic: 5 frames in chunks of 3 and 2, drawn from moved landmarks.
    points = talking_head.reference_points[None] + np.random.default_rng(0).normal(0, 1.0, (5, 68, 2))
    landmarks = person.draw(points)
    torch.testing.assert_close(landmarks, talking_head.draw(points))
    got, want = person.generate(landmarks, batch_size=3), talking_head.generate(landmarks)
    assert got.shape == (5, 3, SIZE, SIZE)
    assert float((got - want).abs().max()) < TOLERANCE


def test_headgan_frame_model_with_precomputed_reference_features_is_exact(headgan):
    model = export.frame_model(headgan)
    renders = driving_renders(3)
    h = headgan.cfg.model.headgan
    audio = torch.randn(3, h.audio_mels, h.audio_window, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([True, False, True])
    with torch.no_grad():
        references = (headgan.reference.expand(3, -1, -1, -1), headgan.reference_render.expand(3, -1, -1, -1))
        want = headgan.generator(*references, renders, audio, mask)["image"]
        got = model(renders, audio, mask)
        silent = model(renders)
    # Same operations on the same numbers, spectral norm evaluated once instead of per call.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(silent[1], got[1], rtol=0, atol=1e-6)     # no audio = the masked-out item
    assert float((silent[0] - got[0]).abs().max()) > 1e-4                   # audio does reach the image


def test_headgan_onnx_matches_pytorch_with_and_without_audio(headgan, exported):
    summary = exported["headgan"]
    assert summary["inputs"] == ["driving", "audio", "has_audio"] and summary["max_abs_diff"] < TOLERANCE
    person = export.load_onnx_person(summary["out"])
    assert isinstance(person, export.OnnxHeadGANPerson) and person.image_size == SIZE
    np.testing.assert_allclose(person.fit.identity, headgan.fit.identity, atol=1e-6)
    renders = driving_renders(2)
    h = headgan.cfg.model.headgan
    audio = torch.randn(2, h.audio_mels, h.audio_window, generator=torch.Generator().manual_seed(2))
    for window in (audio, None):
        got = person.generate(renders, window)["image"]
        want = headgan.generate(renders, window)["image"]
        assert got.shape == (2, 3, SIZE, SIZE)
        assert float((got - want).abs().max()) < TOLERANCE


def test_export_command_and_reenact_with_the_onnx_runtime(demo_clips, talking_head, tmp_path, capsys):
    cfg = load_config("demo", [f"model.image_size={SIZE}"])
    person_file = save_person(tmp_path / "person.pt", talking_head, to_dict(cfg)["model"],
                              cfg.data.landmark_thickness)
    onnx_file = tmp_path / "person.onnx"
    assert export.main(["--person", str(person_file), "--out", str(onnx_file)]) == 0
    printed = capsys.readouterr().out
    assert "talking_head person" in printed and "max abs diff" in printed
    meta = json.loads(export.OnnxFrameModel(onnx_file).session.get_modelmeta().custom_metadata_map["talkinghead"])
    assert meta["family"] == "talking_head" and meta["format"] == export.FORMAT

    driver = str(clip(demo_clips, "id00001"))
    out = tmp_path / "onnx.mp4"
    assert reenact_command.main(["--person", str(onnx_file), "--runtime", "onnx", "--driver", driver,
                                 "--out", str(out), "--batch-size", "5"]) == 0
    assert "16 frames at 25.00 fps" in capsys.readouterr().out
    _, onnx_frames = read_video(out)
    assert reenact_command.main(["--person", str(person_file), "--driver", driver, "--out",
                                 str(tmp_path / "torch.mp4")]) == 0
    _, torch_frames = read_video(tmp_path / "torch.mp4")
    assert len(onnx_frames) == len(torch_frames) == 16
    # The same frames through H.264: differences of 1e-5 in [-1, 1] vanish in the 8-bit video.
    assert np.abs(np.stack(onnx_frames).astype(int) - np.stack(torch_frames)).mean() < 0.5


def test_export_refuses_bad_arguments_before_any_work(talking_head, tmp_path, capsys):
    person = tmp_path / "person.pt"
    person.write_bytes(b"")  # never read: each case fails first
    cases = [
        (["--out", str(person)], "must end in .onnx"),
        (["--out", str(tmp_path)], "is a directory"),
        (["--out", str(tmp_path / "p.onnx"), "--opset", "12"], "--opset must be 16..20"),
        (["--out", str(tmp_path / "p.onnx"), "--person-frames", "0"], "--person-frames must be at least 1"),
    ]
    for args, message in cases:
        assert export.main(["--person", str(person), *args]) == 1
        assert message in one_line_error(capsys)
    linked = tmp_path / "same.onnx"
    assert export.main(["--person", str(linked), "--out", str(linked)]) == 1
    assert "is also the --person" in one_line_error(capsys)
    assert export.main(["--person", str(person), "--out", str(tmp_path / "p.onnx")]) == 1
    assert "is empty (0 bytes)" in one_line_error(capsys)
    assert not (tmp_path / "p.onnx").exists()


def test_damaged_and_foreign_onnx_files_are_one_line_errors(demo_clips, tmp_path, capsys):
    plain = tmp_path / "plain.onnx"  # a valid ONNX file, but not an exported person
    torch.onnx.export(torch.nn.Conv2d(3, 3, 1), (torch.zeros(1, 3, 4, 4),), str(plain), dynamo=False,
                      input_names=["driving"], output_names=["image"])
    files = {"empty": tmp_path / "empty.onnx", "garbage": tmp_path / "garbage.onnx"}
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(b"\x08\x07not an onnx model" * 10)
    expected = {files["empty"]: "is empty (0 bytes)", files["garbage"]: "cannot be loaded by onnxruntime",
                plain: "not a person exported by python -m inference.export"}
    driver = str(clip(demo_clips, "id00001"))
    for path, message in expected.items():
        assert reenact_command.main(["--person", str(path), "--driver", driver,
                                     "--out", str(tmp_path / "out.mp4")]) == 1
        assert message in one_line_error(capsys), path
    # A torch-only file given with --runtime onnx, and an exported one with --runtime torch.
    pt = damaged_files(tmp_path)["truncated"]
    assert reenact_command.main(["--person", str(pt), "--runtime", "onnx", "--driver", driver,
                                 "--out", str(tmp_path / "out.mp4")]) == 1
    assert "python -m inference.export" in one_line_error(capsys)
    assert reenact_command.main(["--person", str(plain), "--runtime", "torch", "--driver", driver,
                                 "--out", str(tmp_path / "out.mp4")]) == 1
    assert "runs with --runtime onnx" in one_line_error(capsys)
    assert not (tmp_path / "out.mp4").exists()
