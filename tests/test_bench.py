"""The benchmark scripts run on tiny CPU settings and print the JSON they promise (numbers are never judged)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench import inference, landmarks, latency, train
from config import load_config, to_dict
from dataset.landmarks import DetectorLoadError
from training import talking_head
from training.person import save_person


def _printed(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_train_bench_reports_throughput_phases_flops_and_syncs(capsys, monkeypatch):
    engine_step = talking_head.train_step

    def step_with_a_read(*args, **kwargs):  # a host read in the step, as the engine had before issue 11
        stats, x_hat = engine_step(*args, **kwargs)
        float(stats["loss/d_total"])
        return stats, x_hat

    monkeypatch.setattr(talking_head, "train_step", step_with_a_read)
    result = train.main(["--config", "demo", "--set", "model.image_size=32", "--batch-size", "2",
                         "--steps", "2", "--warmup", "1"])
    assert _printed(capsys) == result
    assert result["data"].startswith("synthetic")
    assert result["peak_tflops"] is None and result["batch_size"] == 2
    assert set(result["gflops_per_image"]) == {"embedder", "generator", "discriminator", "vgg19", "vggface"}
    assert result["gflops_per_sample"] > sum(result["gflops_per_image"].values())
    eager = result["modes"]["eager"]
    assert set(result["modes"]) == {"eager"}
    assert eager["amp"] == "none" and not eager["compile"] and eager["batch_size"] == 2
    assert eager["samples_per_s"] > 0 and eager["peak_memory_mib"] > 0
    assert set(eager["step_ms"]) == {"total", "data", "forward", "d_phase", "g_phase", "rest"}
    assert all(v > 0 for v in eager["step_ms"].values())
    parts = sum(v for k, v in eager["step_ms"].items() if k != "total")
    assert parts == pytest.approx(eager["step_ms"]["total"], abs=0.05)  # the laps tile the step
    # One read per step, counted over the counting step only (not the warm-up or timed ones).
    assert eager["syncs_per_step"] == 1 and eager["sync_ops"] == {"_local_scalar_dense": 1}
    assert "mfu" not in eager
    assert set(eager["content_networks"]) == {"vgg19", "vggface"}


def test_train_bench_mfu_with_a_given_peak(capsys):
    result = train.main(["--config", "demo", "--set", "model.image_size=32", "--set", "loss.vggface_weight=0",
                         "--batch-size", "1", "--steps", "1", "--warmup", "0", "--peak-tflops", "1"])
    eager = result["modes"]["eager"]
    assert "vggface" not in result["gflops_per_image"] and set(eager["content_networks"]) == {"vgg19"}
    assert eager["mfu"] == pytest.approx(eager["achieved_tflops"], rel=1e-2, abs=1e-4)
    assert eager["syncs_per_step"] == 0 and eager["sync_ops"] == {}  # the engine's step reads nothing back


def test_train_bench_modes_run_the_resolved_amp():
    cpu = torch.device("cpu")
    cfg = load_config("vox2", ["train.channels_last=true"])
    eager, fast = (train.mode_config(cfg, mode, cpu).train for mode in ("eager", "fast"))
    assert (eager.amp, eager.compile, eager.channels_last) == ("none", False, True)
    assert (fast.amp, fast.compile, fast.channels_last) == ("none", True, True)  # auto is fp32 on the CPU
    assert train.mode_config(load_config("vox2", ["train.amp=bf16"]), "fast", cpu).train.amp == "bf16"


def test_train_bench_max_batch_search_finds_the_largest_that_fits():
    largest, refused, probes = train.largest_fitting(lambda b: b <= 37)
    assert (largest, refused) == (37, 38)
    assert [b for b, _ in probes][:7] == [1, 2, 4, 8, 16, 32, 64] and probes[6] == [64, False]
    assert all(fitted == (b <= 37) for b, fitted in probes)
    assert train.largest_fitting(lambda b: True, limit=6) == (6, None, [[1, True], [2, True], [4, True], [6, True]])
    assert train.largest_fitting(lambda b: False) == (0, 1, [[1, False]])


def test_train_bench_max_batch_recovers_from_out_of_memory(monkeypatch):
    calls = []

    def step_short_of_memory(self, batch, optimizers, loss, step, precision):  # a GPU whose memory ends at 3
        b = batch["frames"].shape[0]
        calls.append(b)
        if b > 3 or (b == 3 and calls.count(3) > 1):  # 3 passes its probe step but not the timed steps
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {}, None

    monkeypatch.setattr(talking_head.TalkingHeadTrainer, "step", step_short_of_memory)
    cpu = torch.device("cpu")
    cfg = train.mode_config(load_config("demo", ["model.image_size=32"]), "eager", cpu)
    result = train.run_mode(cfg, cpu, steps=2, warmup=1, gflops=1.0, peak_tflops=None, find_max=True)
    assert result["max_batch"] == {"largest_fitting": 3, "smallest_refused": 4, "refused_when_timed": [3],
                                   "probes": [[1, True], [2, True], [4, False], [3, True]]}
    assert result["batch_size"] == 2 and result["samples_per_s"] > 0  # stepped down to 3 * 7 // 8


def test_train_bench_max_batch_needs_cuda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "demo", "--batch-size", "max"])
    assert exit_info.value.code == 2
    assert "needs --device cuda" in capsys.readouterr().err


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


# HeadGAN (model.family: headgan): the same scripts through HeadGANTrainer's prepare and step.

HEADGAN_TINY = ["--config", "headgan_demo", "--set", "model.image_size=32"]


def _finite_positive(values) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_headgan_train_bench_reports_phases_flops_and_mfu(capsys):
    result = train.main([*HEADGAN_TINY, "--steps", "2", "--warmup", "1", "--peak-tflops", "1"])
    assert _printed(capsys) == result
    assert result["family"] == "headgan" and result["audio"] is True and result["image_size"] == 32
    assert result["batch_size"] == load_config("headgan_demo").train.batch_size  # the config's, not 8
    assert "k_shots" not in result and result["data"].startswith("synthetic")
    per_image = result["gflops_per_image"]
    assert set(per_image) == {"generator", "discriminator", "mouth_discriminator", "vgg19"}
    assert _finite_positive(per_image.values())
    g, d, m, vgg = (per_image[k] for k in ("generator", "discriminator", "mouth_discriminator", "vgg19"))
    assert result["gflops_per_sample"] == pytest.approx(3 * (g + 4 * d + 4 * m) + 4 * vgg, rel=1e-3)
    (eager,) = result["modes"].values()
    assert set(result["modes"]) == {"eager"} and eager["amp"] == "none" and not eager["compile"]
    assert set(eager["step_ms"]) == {"total", "data", "forward", "d_phase", "g_phase", "rest"}
    assert _finite_positive(eager["step_ms"].values())
    parts = sum(v for k, v in eager["step_ms"].items() if k != "total")
    assert parts == pytest.approx(eager["step_ms"]["total"], abs=0.05)  # the laps tile the step
    assert eager["syncs_per_step"] == 0
    assert _finite_positive([eager["samples_per_s"], eager["peak_memory_mib"], eager["achieved_tflops"]])
    assert eager["mfu"] == pytest.approx(eager["achieved_tflops"], rel=1e-2, abs=1e-4)
    assert eager["content_networks"]["vgg19"].startswith(("random weights", "weights/"))


def test_headgan_train_bench_flops_follow_the_loss_config(capsys):
    result = train.main([*HEADGAN_TINY, "--set", "loss.vgg19_weight=0", "--set", "loss.mouth_adversarial_weight=0",
                         "--batch-size", "1", "--steps", "1", "--warmup", "0"])
    per_image = result["gflops_per_image"]
    assert set(per_image) == {"generator", "discriminator"}  # no perceptual net, no mouth D in the step
    assert result["gflops_per_sample"] == pytest.approx(
        3 * (per_image["generator"] + 4 * per_image["discriminator"]), rel=1e-3)
    eager = result["modes"]["eager"]
    assert eager["content_networks"] == {} and "mfu" not in eager and result["batch_size"] == 1
    assert _finite_positive(eager["step_ms"].values())


def test_headgan_train_bench_rejects_a_size_the_model_cannot_take(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "headgan_demo", "--set", "model.image_size=36", "--steps", "1"])
    assert exit_info.value.code == 2
    assert "model.image_size=36" in capsys.readouterr().err


def test_headgan_inference_bench_reports_fps_and_render_time(capsys):
    result = inference.main([*HEADGAN_TINY, "--batch-sizes", "1", "3", "--repeats", "1", "--frames", "4"])
    assert _printed(capsys) == result
    assert result["family"] == "headgan" and result["image_size"] == 32 and result["audio"] is True
    assert set(result["generator_fps"]) == {"1", "3"} and _finite_positive(result["generator_fps"].values())
    render = result["nmfc_render"]
    assert render["frames"] == 5 and render["triangles"] == 852  # the reference's render and 4 driving ones
    assert _finite_positive([render["ms_per_frame"], render["fps"], result["generator_params"]])


def test_posed_mean_faces_render_a_face_that_moves():
    size = 64
    images, seconds = inference.nmfc_renders(inference.posed_mean_faces(3, size), size)
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8 and len(seconds) == 3
    covered = (images.max(axis=3) > 0).mean(axis=(1, 2))
    assert np.all((covered > 0.15) & (covered < 0.6))  # a face filling part of the crop, not the frame
    frontal = images[0].max(axis=2) > 0
    assert abs(int(frontal[:, : size // 2].sum()) - int(frontal[:, size // 2:].sum())) < 0.05 * frontal.sum()
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_headgan_generate_in_chunks_matches_one_batch():
    cfg = load_config("headgan_demo", ["model.image_size=32"])
    h, device = cfg.model.headgan, torch.device("cpu")
    generator = inference.random_headgan_generator(cfg, device)
    g = torch.Generator().manual_seed(1)
    reference, reference_render, renders = (torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 for n in (1, 1, 5))
    audio = torch.randn(5, h.audio_mels, h.audio_window, generator=g)
    chunked = inference.headgan_generate(generator, reference, reference_render, renders, audio, 2)
    with torch.no_grad():
        whole = generator(reference.expand(5, -1, -1, -1), reference_render.expand(5, -1, -1, -1), renders,
                          audio)["image"]
    assert chunked.shape == (5, 3, 32, 32) and chunked.device.type == "cpu"
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_latency_bench_times_every_stage_for_both_families_and_runtimes(demo_clips, capsys):
    video = next((demo_clips / "id00001").glob("*/00001.mp4"))
    result = latency.main(["--size", "32", "--frames", "3", "--warmup", "1", "--runtimes", "torch", "onnx",
                           "--video", str(video)])
    assert _printed(capsys) == result
    assert result["batch_size"] == 1 and result["threads"] == 1 and set(result["families"]) == {"talking_head",
                                                                                                  "headgan"}
    shared = {"capture", "detect", "crop", "adapt", "draw", "generate", "compose", "encode"}
    for family, entry in result["families"].items():
        assert [run["runtime"] for run in entry["runs"]] == ["torch", "onnx"]
        for run in entry["runs"]:
            assert shared | ({"fit3d"} if family == "headgan" else set()) == set(run["stage_ms"])
            assert run["frames_timed"] == 3 and run["frames_with_face"] == 4
            assert _finite_positive([run["pipeline_fps"], run["generator_fps"], run["frame_ms"]])
            assert run["generator_fps"] > run["pipeline_fps"]  # the pipeline adds detection and the rest
        assert entry["runs"][1]["onnx_max_abs_diff"] < 1e-4


def test_latency_bench_rejects_bad_arguments(capsys):
    for args, message in ((["--frames", "0"], "--frames must be at least 1"),
                          (["--family", "headgan", "--size", "36"], "model.image_size=36"),
                          (["--video", "nowhere.mp4"], "is not a video file")):
        with pytest.raises(SystemExit) as exit_info:
            latency.main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
