"""Few-shot fine-tuning: psi' and w' initialisation, error reduction, the person file, the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from config import load_config
from dataset.landmarks import make_detector
from dataset.pipeline.faces import read_face_crops, read_frames
from dataset.store import FewShotDataset
from finetune import main as finetune_main
from finetune import split_shots
from training import checkpoint as ckpt
from training.finetune import finetune
from training.loop import meta_train
from training.talking_head import validate, validation_episodes
from training.person import load_meta_checkpoint, load_person, person_from_frames, save_person

TINY = ["model.image_size=32", "train.batch_size=2", "train.k_shots=2", "data.num_workers=0", "train.val_every=0"]


@pytest.fixture(scope="module")
def meta_checkpoint(demo_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("ft_run")
    cfg = load_config("demo", [*TINY, f"data.root={demo_store}", "train.steps=3", "train.checkpoint_every=3"])
    return meta_train(cfg, run, progress=False)


@pytest.fixture(scope="module")
def person_frames(demo_clips):
    clip = next((demo_clips / "id00008").glob("*/*.mp4"))  # the store's held-out identity
    crops, points, _ = read_face_crops(clip, make_detector("dlib"), 32)
    return clip, crops, points


def test_read_face_crops_from_video_and_folder(person_frames, tmp_path):
    import cv2

    clip, crops, points = person_frames
    assert crops[0].shape == (32, 32, 3) and points.shape == (len(crops), 68, 2)
    assert len(crops) >= 12  # a face in (nearly) every one of the 16 frames
    for i, frame in enumerate(read_frames(clip, max_frames=3)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    folder_crops, _, _ = read_face_crops(tmp_path, make_detector("dlib"), 32)
    assert len(folder_crops) == 3
    black = tmp_path / "black"
    black.mkdir()
    cv2.imwrite(str(black / "0.png"), np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="no face found"):
        read_face_crops(black, make_detector("dlib"), 32)


def test_split_shots_is_disjoint():
    train, holdout = split_shots(20, 8, 5)
    assert len(train) == 8 and len(holdout) == 5 and not set(train) & set(holdout)
    assert split_shots(4, 8, 3) == ([0, 1, 2, 3], [])


def test_finetune_initialises_from_e_new_and_reduces_the_error(meta_checkpoint, person_frames):
    _, crops, points = person_frames
    _, nets, cfg = load_meta_checkpoint(meta_checkpoint)
    cfg = load_config("demo", [*TINY, "finetune.epochs=15", "finetune.batch_size=4", "finetune.lr_generator=5e-4"])
    train = FewShotDataset(crops[:8], points[:8], image_size=32)
    person, report = finetune(nets, cfg, train, progress=False)
    assert report["after"]["train_l1"] < 0.9 * report["before"]["train_l1"], report
    assert person.psi.shape == (nets["generator"].num_adain_params,)
    # Before training, psi' = P e_NEW gives exactly the feed-forward person.
    _, fresh, _ = load_meta_checkpoint(meta_checkpoint)
    feed_forward = person_from_frames(meta_checkpoint, crops[:8], points[:8])
    episode = train.episode()
    with torch.no_grad():
        e_new = fresh["embedder"].embed(episode["frames"], episode["landmarks"]).mean(0)
        assert torch.allclose(feed_forward.psi, fresh["generator"].project(e_new[None])[0], atol=1e-5)


def test_person_file_round_trip(meta_checkpoint, person_frames, tmp_path):
    _, crops, points = person_frames
    person = person_from_frames(meta_checkpoint, crops[:4], points[:4], identity="id00008")
    state, _, cfg = load_meta_checkpoint(meta_checkpoint)
    path = save_person(tmp_path / "p.pt", person, state["config"]["model"], cfg.data.landmark_thickness)
    loaded = load_person(path)
    landmarks = person.draw(points[:2])
    assert landmarks.shape == (2, 3, 32, 32)
    assert torch.allclose(person.generate(landmarks), loaded.generate(landmarks), atol=1e-6)
    assert loaded.identity == "id00008" and np.allclose(loaded.reference_points, points[:4].mean(0))
    with pytest.raises(ckpt.CheckpointError, match="expected 'person'"):
        load_person(meta_checkpoint)


def test_finetune_command(meta_checkpoint, person_frames, tmp_path):
    clip, _, _ = person_frames
    out = tmp_path / "out"
    code = finetune_main([str(meta_checkpoint), "--frames", str(clip), "--out", str(out), "--shots", "4",
                          "--holdout", "4", "--set", "finetune.epochs=2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 4 and report["holdout_frames"] == 4
    assert (out / "person.pt").is_file() and (out / "before_after.png").is_file()
    assert finetune_main([str(tmp_path / "missing.pt"), "--frames", str(clip), "--out", str(out)]) == 1
    assert finetune_main([str(meta_checkpoint), "--frames", str(clip), "--out", str(out),
                          "--set", "finetune.epoch=2"]) == 1


def test_validation_compares_with_the_nearest_source(meta_checkpoint, demo_store):
    _, nets, cfg = load_meta_checkpoint(meta_checkpoint)
    cfg = load_config("demo", [*TINY, f"data.root={demo_store}"])
    episodes = validation_episodes(cfg, 4)
    assert len(episodes) == 4 and all(e["identity"] == "id00008" for e in episodes)
    scores = validate(nets["embedder"], nets["generator"], episodes, torch.device("cpu"))
    assert 0 < scores["val/nearest_source_l1"] < scores["val/l1"]  # 3 steps of training: far from the baseline


def test_finetune_command_checks_its_arguments_before_any_work(meta_checkpoint, person_frames, tmp_path, capsys):
    from test_reenact import damaged_files, one_line_error

    clip, _, _ = person_frames
    frames_folder = tmp_path / "frames"
    frames_folder.mkdir()
    (frames_folder / "0.png").write_bytes(b"")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    inside = tmp_path / "run"
    inside.mkdir()
    checkpoint_in_out = inside / "person.pt"
    checkpoint_in_out.write_bytes(meta_checkpoint.read_bytes())
    good = [str(meta_checkpoint), "--frames", str(clip), "--out", str(tmp_path / "out")]
    cases = [
        (good + ["--shots", "0"], "--shots must be at least 1"),
        (good + ["--holdout", "-1"], "--holdout must be at least 0"),
        (good + ["--device", "tpu"], "is not a torch device"),
        (good + ["--driver", str(tmp_path / "nowhere.mp4")], "--driver not found"),
        ([str(meta_checkpoint), "--frames", str(clip), "--out", str(a_file)], "is a file; give a folder"),
        ([str(meta_checkpoint), "--frames", str(frames_folder), "--out", str(frames_folder / "out")],
         "inside the --frames folder"),
        ([str(checkpoint_in_out), "--frames", str(clip), "--out", str(inside)], "would overwrite the checkpoint"),
    ]
    for args, message in cases:
        assert finetune_main(args) == 1, args
        assert message in one_line_error(capsys), args
    assert not (tmp_path / "out").exists() and checkpoint_in_out.read_bytes() == meta_checkpoint.read_bytes()
    damaged = damaged_files(tmp_path)
    for kind, message in (("empty", "is empty (0 bytes)"), ("truncated", "truncated"),
                          ("code", "holds pickled Python objects")):
        assert finetune_main([str(damaged[kind]), "--frames", str(clip), "--out", str(tmp_path / "out")]) == 1
        assert message in one_line_error(capsys), kind
    with pytest.raises(ValueError, match="at least 1 shot"):
        split_shots(10, 0, 2)
