"""HeadGAN through the framework's commands: its store (3D faces + audio), meta_train.py, reenact.py, evaluate.py.

The store is the session fixture ``headgan_store`` (demo clips -> dlib landmarks -> MediaPipe 3D face fits ->
audio features, 64x64). Training runs the ``headgan_demo`` preset for real on CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import reenact as reenact_command
from config import ConfigError, load_config
from dataset.audio import read_audio_features
from dataset.face3d.fit import read_face3d
from dataset.headgan_data import HeadGANDataset, collate
from dataset.store import StoreError, load_index
from evaluate import main as evaluate_main
from model import build_networks
from test_reenact import read_clip, read_video
from training.checkpoint import load_checkpoint
from training.headgan import HeadGANTrainer, validate_headgan
from training.loop import meta_train
from sync_check import end_cadences, syncs_added_by_steps

SIZE = 64
STEPS = 150
ROOT = Path(__file__).resolve().parents[1]


def demo_cfg(store, *overrides):
    return load_config("headgan_demo", [f"data.root={store}", "data.num_workers=0", "train.val_every=0",
                                        *overrides])


def first_video(store, split="train"):
    return next(e for e in load_index(store)["videos"] if e["split"] == split)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def test_items_pair_a_reference_and_a_driving_frame_with_their_renders_and_audio(headgan_store):
    dataset = HeadGANDataset(headgan_store, "train", audio_shape=(40, 16))
    item = dataset[(0, 0)]
    for key in ("reference", "target", "reference_render", "driving_render"):
        assert item[key].shape == (3, SIZE, SIZE) and item[key].min() >= -1 and item[key].max() <= 1
    reference, driving = item["frame_indices"].tolist()
    assert reference != driving
    folder = headgan_store / dataset.videos[0][0]
    np.testing.assert_allclose(item["audio"].numpy(), read_audio_features(folder)[driving], atol=1e-6)
    assert item["has_audio"] and item["audio"].abs().sum() > 0
    # The renders cover the face (black background elsewhere) and follow their own frames' fits.
    covered = (item["driving_render"] > -1).any(dim=0)
    assert 0.1 < covered.float().mean() < 0.8
    assert not torch.equal(item["reference_render"], item["driving_render"])
    # The mouth centre sits inside the lower half of the face render.
    x, y = item["mouth"].tolist()
    ys, xs = np.nonzero(covered.numpy())
    assert xs.min() < x < xs.max() and (ys.min() + ys.max()) / 2 < y < ys.max()
    # Items depend only on (seed, epoch, index).
    again = HeadGANDataset(headgan_store, "train", audio_shape=(40, 16))[(0, 0)]
    assert torch.equal(again["frame_indices"], item["frame_indices"]) and torch.equal(again["target"], item["target"])


def test_videos_without_face_fits_are_left_out_and_without_audio_train_silent(headgan_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(headgan_store, store)
    full = HeadGANDataset(store, "train")
    first = store / full.videos[0][0]
    (first / "face3d.npz").unlink()
    second = store / full.videos[1][0]
    (second / "audio.npy").unlink()
    fewer = HeadGANDataset(store, "train")
    assert len(fewer) == len(full) - 1 and fewer.missing_face3d == 1
    silent = fewer[(0, 0)]
    assert not silent["has_audio"] and silent["audio"].abs().sum() == 0
    batch = collate([silent, fewer[(1, 0)]])
    assert batch["has_audio"].tolist() == [False, True] and batch["audio"].shape == (2, 40, 16)
    for video in (store / "videos").glob("*/*/face3d.npz"):
        video.unlink()
    with pytest.raises(StoreError, match="extract_mesh"):
        HeadGANDataset(store, "train")
    with pytest.raises(StoreError, match="extract_mesh"):
        read_face3d(first)


def test_wrong_audio_feature_shape_is_a_clear_error(headgan_store):
    dataset = HeadGANDataset(headgan_store, "train", audio_shape=(80, 16))
    with pytest.raises(StoreError, match="audio_mels"):
        dataset[(0, 0)]


# ----------------------------------------------------------------------------------------------------------------
# Training, reenactment and evaluation
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(headgan_store, tmp_path_factory):
    """The headgan_demo preset trained for STEPS steps; returns (run dir, final checkpoint, config)."""
    run = tmp_path_factory.mktemp("headgan_run")
    cfg = demo_cfg(headgan_store, f"train.steps={STEPS}", f"train.checkpoint_every={STEPS}",
                   f"train.image_every={STEPS}", "train.log_every=25")
    return run, meta_train(cfg, run, progress=False), cfg


def test_demo_training_improves_reconstruction_of_held_out_identity(trained, headgan_store):
    run, checkpoint, cfg = trained
    trainer = HeadGANTrainer(cfg)
    items = trainer.validation_set(8)
    assert items and all(it["identity"] == "id00008" for it in items)
    torch.manual_seed(cfg.train.seed)
    start = validate_headgan(build_networks(cfg.model)["generator"], items, torch.device("cpu"))
    state = load_checkpoint(checkpoint, kind="meta_train")
    generator = build_networks(cfg.model)["generator"]
    generator.load_state_dict(state["networks"]["generator"])
    end = validate_headgan(generator, items, torch.device("cpu"))
    assert end["val/l1"] < 0.75 * start["val/l1"], (start, end)
    assert set(state["networks"]) == {"generator", "discriminator", "mouth_discriminator"}
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/warp_l1" in row and "loss/mouth_adversarial" in row for row in logged)
    assert list((run / "images").glob("*.png"))


def test_resume_refuses_a_headgan_checkpoint_under_a_talking_head_config(trained, headgan_store, tmp_path):
    _, checkpoint, _ = trained
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "step_000000001.pt")
    cfg = load_config("demo", [f"data.root={headgan_store}", "data.num_workers=0", "train.steps=2"])
    with pytest.raises(ConfigError, match="model.family: run 'headgan', requested 'talking_head'"):
        meta_train(cfg, run, resume=True, progress=False)


def test_headgan_steps_do_not_wait_for_the_device(headgan_store, tmp_path):
    """As for the talking heads (tests/test_training.py): 2 and 5 steps differ by no synchronising op."""
    extra = syncs_added_by_steps(lambda steps: meta_train(
        demo_cfg(headgan_store, *end_cadences(steps), "train.batch_size=2"), tmp_path / f"run{steps}",
        progress=False), 2, 5)
    assert not extra, f"3 more steps made {extra} more synchronising ops"


def test_ddp_trains_on_batches_with_and_without_audio(headgan_store, tmp_path):
    """torchrun, 2 gloo processes, a store where all but one training clip are silent: whole batches without
    audio must not leave the audio encoders without gradients (DDP's 'Expected to have finished reduction')."""
    store = tmp_path / "store"
    shutil.copytree(headgan_store, store)
    silent = sorted(store.glob("videos/*/*/audio.npy"))[1:]
    for path in silent:
        path.unlink()
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(store), str(run), "headgan"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "step_000000004.pt")["step"] == 4


def test_reenact_one_shot_from_a_photo_with_the_drivers_motion_and_audio(trained, demo_clips, tmp_path, capsys):
    _, checkpoint, _ = trained
    person_clip = next((demo_clips / "id00008").glob("*/00001.mp4"))
    photo = tmp_path / "person.png"
    cv2.imwrite(str(photo), cv2.cvtColor(read_clip(person_clip)[0], cv2.COLOR_RGB2BGR))
    driver = next((demo_clips / "id00002").glob("*/00001.mp4"))
    out = tmp_path / "out.mp4"
    code = reenact_command.main(["--person", str(photo), "--checkpoint", str(checkpoint), "--driver", str(driver),
                                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NMFC render" in printed and "audio on" in printed
    meta, frames = read_video(out)
    assert len(frames) == len(read_clip(driver)) and meta["size"] == (3 * SIZE, SIZE)
    assert meta["codec"] == "h264"
    # The middle panel is an NMFC render on black; it changes as the driver moves.
    renders = [np.split(f, 3, axis=1)[1].astype(np.float32) for f in frames]
    assert all((r.max(axis=2) < 30).mean() > 0.2 for r in renders)
    assert np.abs(renders[0] - renders[-1]).mean() > 1


def test_reenact_headgan_errors(trained, demo_clips, tmp_path, capsys):
    _, checkpoint, _ = trained
    driver = next((demo_clips / "id00002").glob("*/00001.mp4"))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((64, 64, 3), np.uint8))
    assert reenact_command.main(["--person", str(blank), "--checkpoint", str(checkpoint), "--driver", str(driver),
                                 "--out", str(tmp_path / "o.mp4")]) == 1
    assert "no face" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_finetune_points_headgan_checkpoints_to_one_shot_reenactment(trained, demo_clips, tmp_path, capsys):
    import finetune as finetune_command

    _, checkpoint, _ = trained
    person = next((demo_clips / "id00008").glob("*/00001.mp4"))
    assert finetune_command.main([str(checkpoint), "--frames", str(person), "--out", str(tmp_path / "p")]) == 1
    assert "one-shot" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_evaluate_one_shot(trained, headgan_store, tmp_path):
    _, checkpoint, _ = trained
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(headgan_store), "--out", str(out),
                          "--shots", "1", "--videos", "2", "--holdout", "4"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    values = report["per_shots"]["1"]
    assert report["mode"] == "feedforward" and values["videos"] == 2 and values["frames"] == 8
    assert 0 < values["ssim"] <= 1 and values["psnr"] > 0
    assert (out / "best_worst_T1.png").is_file()
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(headgan_store), "--out", str(out),
                          "--shots", "1", "8"]) == 1
