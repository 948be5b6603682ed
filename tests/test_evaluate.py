"""evaluate.py end to end on demo data: the protocol's outputs and sane metric values."""
from __future__ import annotations

import csv
import json

import pytest

from config import load_config
from evaluate import main as evaluate_main
from evaluate import split_video
from training.loop import meta_train


@pytest.fixture(scope="module")
def checkpoint(demo_store, tmp_path_factory):
    cfg = load_config("demo", ["model.image_size=32", "train.batch_size=2", "train.k_shots=2", "data.num_workers=0",
                               "train.val_every=0", f"data.root={demo_store}", "train.steps=2"])
    return meta_train(cfg, tmp_path_factory.mktemp("eval_run"), progress=False)


def test_split_video_holds_out_disjoint_frames():
    shots, held = split_video(40, 8, 32)
    assert len(held) == 32 and len(shots) == 8 and not set(shots) & set(held)
    shots, held = split_video(10, 8, 32)  # short video: hold out all but one frame, keep one shot
    assert len(held) == 9 and shots and not set(shots) & set(held)


@pytest.mark.parametrize("mode", ["feedforward", "finetune"])
def test_evaluate_writes_the_protocol_outputs(checkpoint, demo_store, tmp_path, mode):
    out = tmp_path / mode
    code = evaluate_main(["--checkpoint", str(checkpoint), "--data", str(demo_store), "--out", str(out),
                          "--shots", "1", "4", "--videos", "2", "--holdout", "4", "--mode", mode,
                          "--set", "finetune.epochs=1"])
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["per_shots"]) == {"1", "4"}
    for values in report["per_shots"].values():
        assert 0 < values["ssim"] <= 1 and values["psnr"] > 0 and -1 <= values["csim"] <= 1
        assert values["fid"] is None and values["videos"] == 2 and values["frames"] == 8
    assert "--inception" in report["fid"]
    with open(out / "metrics.csv") as f:
        assert [row["shots"] for row in csv.DictReader(f)] == ["1", "4"]
    for name in ("per_video.csv", "best_worst_T1.png", "best_worst_T4.png", "metrics_vs_shots.png"):
        assert (out / name).is_file(), name


def test_evaluate_errors(checkpoint, demo_store, tmp_path):
    assert evaluate_main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(demo_store),
                          "--out", str(tmp_path)]) == 1
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(tmp_path)]) == 1
