"""The benchmark scripts run on tiny CPU settings and print the JSON they promise (numbers are never judged)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import inference, landmarks, train
from config import load_config, to_dict
from dataset.landmarks import DetectorLoadError
from training.person import save_person


def _printed(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_train_bench_reports_throughput_phases_and_flops(capsys):
    result = train.main(["--config", "demo", "--set", "model.image_size=32", "--batch-size", "2",
                         "--steps", "2", "--warmup", "1"])
    assert _printed(capsys) == result
    assert result["data"].startswith("synthetic")
    assert result["peak_tflops"] is None
    assert set(result["gflops_per_image"]) == {"embedder", "generator", "discriminator", "vgg19", "vggface"}
    assert result["gflops_per_sample"] > sum(result["gflops_per_image"].values())
    eager = result["modes"]["eager"]
    assert set(result["modes"]) == {"eager"}
    assert eager["samples_per_s"] > 0 and eager["peak_memory_mib"] > 0
    assert set(eager["step_ms"]) == {"total", "data", "d_phase", "g_phase", "forward_and_w"}
    assert all(v > 0 for v in eager["step_ms"].values())
    assert "mfu" not in eager
    assert set(eager["content_networks"]) == {"vgg19", "vggface"}


def test_train_bench_mfu_with_a_given_peak(capsys):
    result = train.main(["--config", "demo", "--set", "model.image_size=32", "--set", "loss.vggface_weight=0",
                         "--batch-size", "1", "--steps", "1", "--warmup", "0", "--peak-tflops", "1"])
    eager = result["modes"]["eager"]
    assert "vggface" not in result["gflops_per_image"] and set(eager["content_networks"]) == {"vgg19"}
    assert eager["mfu"] == pytest.approx(eager["achieved_tflops"], rel=1e-2, abs=1e-4)


def test_inference_bench_reports_fps_per_batch_size(capsys):
    result = inference.main(["--config", "demo", "--set", "model.image_size=32", "--batch-sizes", "1", "4",
                             "--repeats", "1", "--frames", "4"])
    assert _printed(capsys) == result
    assert set(result["generator_fps"]) == {"1", "4"}
    assert all(fps > 0 for fps in result["generator_fps"].values())
    assert result["drawing_fps"] > 0 and result["image_size"] == 32


def test_inference_bench_renders_a_person_file(tmp_path):
    cfg = load_config("demo", ["model.image_size=32"])
    path = save_person(tmp_path / "person.pt", inference.random_person(cfg, torch.device("cpu")),
                       to_dict(cfg)["model"], cfg.data.landmark_thickness)
    result = inference.main(["--person", str(path), "--batch-sizes", "2", "--repeats", "1", "--frames", "2"])
    assert result["person"] == str(path) and result["image_size"] == 32
    assert result["generator_fps"]["2"] > 0


def test_landmarks_bench_on_a_demo_clip(demo_clips, capsys):
    result = landmarks.main(["--video", str(demo_clips), "--backend", "dlib", "--frames", "4"])
    assert _printed(capsys) == result
    assert result["video"].endswith(".mp4") and result["frames"] == 4
    (dlib,) = result["backends"]
    assert dlib["backend"] == "dlib" and dlib["fps"] > 0 and dlib["load_s"] > 0
    assert dlib["frames_with_face"] == 4


def test_landmarks_bench_reports_a_backend_that_cannot_load(demo_clips, monkeypatch):
    class Unloadable:
        def detect(self, images):
            raise DetectorLoadError("weights not downloaded")

    monkeypatch.setattr(landmarks, "make_detector", lambda backend, device: Unloadable())
    video = next(demo_clips.rglob("*.mp4"))
    result = landmarks.main(["--video", str(video), "--backend", "face_alignment", "--frames", "2"])
    assert result["backends"] == [{"backend": "face_alignment", "error": "weights not downloaded"}]
