"""The meta-training engine: exact resume, atomic checkpoints, refusals, NaN stop, DDP on 2 CPU processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config import load_config
from training import checkpoint as ckpt
from training.loop import EpisodeSampler, WeightAverage, meta_train
from training.precision import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]

# The demo networks at 32x32: every code path of the paper's, at a size the tests can afford.
TINY = ["model.image_size=32", "train.batch_size=2", "train.k_shots=2", "data.num_workers=0",
        "train.log_every=1", "train.image_every=2", "train.checkpoint_every=2", "train.deterministic=true"]


def tiny_config(store, *extra):
    return load_config("demo", [*TINY, f"data.root={store}", *extra])


def _weights(run_dir):
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), kind="meta_train")
    return state["step"], {**state["networks"], **{f"ema/{n}": w for n, w in state["ema"].items()}}, \
        state["optimizers"]


def test_resume_is_exact(demo_store, tmp_path):
    straight = tmp_path / "straight"
    meta_train(tiny_config(demo_store, "train.steps=4"), straight, progress=False)
    split = tmp_path / "split"
    meta_train(tiny_config(demo_store, "train.steps=2"), split, progress=False)
    meta_train(tiny_config(demo_store, "train.steps=4"), split, resume=True, progress=False)

    step_a, nets_a, opts_a = _weights(straight)
    step_b, nets_b, opts_b = _weights(split)
    assert step_a == step_b == 4
    assert {"ema/embedder", "ema/generator"} <= set(nets_a)  # the demo preset keeps moving averages of E and G
    for name in nets_a:
        for key, value in nets_a[name].items():
            assert torch.equal(value, nets_b[name][key]), f"{name}.{key} differs after resume"
    exp_avg = [s["exp_avg"] for s in opts_a["generator"]["state"].values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, opts_b["generator"]["state"].values()))
    # The run directory has what a researcher looks at.
    assert (straight / "config.yaml").is_file() and (straight / "metrics.jsonl").is_file()
    assert list((straight / "images").glob("*.png")) and list((straight / "tensorboard").iterdir())
    assert len(ckpt.list_checkpoints(straight)) == 2


def test_weight_average_warms_up_then_follows_slowly():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averages = WeightAverage({"generator": net}, ("generator",), decay=0.9)
    weight = net[0].weight
    with torch.no_grad():
        weight.fill_(1.0)
        net[1].running_mean.fill_(3.0)
    averages.update(1)  # the first step copies
    kept = averages.averages["generator"]
    assert torch.equal(kept[0].weight, weight) and torch.equal(kept[1].running_mean, net[1].running_mean)
    assert not kept[0].weight.requires_grad and kept[0].weight.data_ptr() != weight.data_ptr()
    with torch.no_grad():
        weight.fill_(0.0)
    averages.update(100)  # decay min(0.9, 99/109) = 0.9
    assert torch.allclose(kept[0].weight, torch.full_like(weight, 0.9))
    restored = WeightAverage({"generator": net}, ("generator",), decay=0.9)
    restored.load_state_dict(averages.state_dict())
    assert torch.equal(restored.averages["generator"][0].weight, kept[0].weight)


def test_inference_uses_the_averages_when_the_run_kept_them(demo_store, tmp_path):
    from training.person import load_meta_checkpoint

    meta_train(tiny_config(demo_store, "train.steps=3"), tmp_path / "ema", progress=False)
    state, nets, _ = load_meta_checkpoint(ckpt.latest_checkpoint(tmp_path / "ema"))
    for name in ("embedder", "generator"):
        assert all(torch.equal(v, state["ema"][name][k]) for k, v in nets[name].state_dict().items())
    lagging = [k for k, v in state["ema"]["generator"].items()
               if v.is_floating_point() and not torch.equal(v, state["networks"]["generator"][k])]
    assert lagging  # after 3 steps (decay 2/12 at the last) the averages trail the last weights
    assert all(torch.equal(v, state["networks"]["discriminator"][k])
               for k, v in nets["discriminator"].state_dict().items())
    meta_train(tiny_config(demo_store, "train.steps=1", "train.ema_decay=0"), tmp_path / "plain", progress=False)
    assert "ema" not in ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "plain"))
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_config(demo_store, "train.ema_decay=1.0")


def test_sampler_resumes_mid_epoch():
    full = EpisodeSampler(10, seed=3, rank=0, world_size=1)
    stream = iter(full)
    items = [next(stream) for _ in range(25)]
    resumed = iter(EpisodeSampler(10, seed=3, rank=0, world_size=1, start=13))
    assert [next(resumed) for _ in range(12)] == items[13:]
    ranks = [iter(EpisodeSampler(10, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    firsts = [[next(it) for _ in range(5)] for it in ranks]
    assert sorted(v for part in firsts for v, _ in part) == list(range(10))  # one epoch split without overlap


def test_refuses_to_overwrite_and_resume_without_checkpoint(demo_store, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        meta_train(tiny_config(demo_store, "train.steps=1"), tmp_path / "empty", resume=True, progress=False)
    meta_train(tiny_config(demo_store, "train.steps=2"), tmp_path / "run", progress=False)
    with pytest.raises(ckpt.CheckpointError, match="--resume"):
        meta_train(tiny_config(demo_store, "train.steps=2"), tmp_path / "run", progress=False)


def test_resume_refuses_another_architecture(demo_store, tmp_path):
    meta_train(tiny_config(demo_store, "train.steps=2"), tmp_path / "run", progress=False)
    other = tiny_config(demo_store, "train.steps=3", "model.generator.layers=[D32, I, D64, I, BA64, U64, U32]")
    with pytest.raises(ckpt.CheckpointError) as err:
        meta_train(other, tmp_path / "run", resume=True, progress=False)
    message = str(err.value)
    assert "different architecture" in message and "model.generator" in message


def test_nan_loss_stops_with_the_term_and_keeps_the_checkpoint(demo_store, tmp_path):
    run = tmp_path / "run"
    meta_train(tiny_config(demo_store, "train.steps=2"), run, progress=False)
    good = ckpt.latest_checkpoint(run)
    with pytest.raises(NonFiniteLossError, match=r"'pixel_l1' is nan at step 2"):
        meta_train(tiny_config(demo_store, "train.steps=4", "loss.pixel_l1_weight=.nan"), run, resume=True,
                   progress=False)
    assert ckpt.latest_checkpoint(run) == good
    assert ckpt.load_checkpoint(good)["step"] == 2


def test_corrupted_and_missing_checkpoints_give_clear_errors(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"kind": "meta_train", "weights": torch.randn(1000)})
    assert ckpt.load_checkpoint(path, kind="meta_train")["weights"].shape == (1000,)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated, damaged"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"empty \(0 bytes\)"):
        ckpt.load_checkpoint(tmp_path / "empty.pt")
    torch.save({"format": ckpt.FORMAT, "code": Path}, tmp_path / "code.pt")  # a pickled class, not tensors
    with pytest.raises(ckpt.CheckpointError, match="pickled Python objects") as refused:
        ckpt.load_checkpoint(tmp_path / "code.pt")
    assert "weights_only=False" not in str(refused.value)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint of this framework"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="expected 'person'"):
        ckpt.load_checkpoint(path, kind="person")


KILL_SCRIPT = """
import sys, torch
from training.checkpoint import save_checkpoint
state = {"kind": "meta_train", "big": torch.randn(40_000_000)}
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], state)
"""


def test_killed_save_leaves_the_last_checkpoint_loadable(tmp_path):
    path = tmp_path / "step_000000001.pt"
    ckpt.save_checkpoint(path, {"kind": "meta_train", "big": torch.zeros(10)})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # mid-way through one of the 160 MB saves
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = ckpt.load_checkpoint(path, kind="meta_train")
    assert state["big"].numel() in (10, 40_000_000)
    assert [p.name for p in tmp_path.glob("step_*.pt")] == [path.name]  # temp files never look like checkpoints


def test_ddp_two_cpu_processes_keep_replicas_identical(demo_store, tmp_path):
    """torchrun with the gloo backend: both ranks end with the same weights, W included."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TH_TEST_DUMP": str(tmp_path / "rank"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(demo_store), str(run)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["step"] == 3


def test_bf16_autocast_and_channels_last_train(demo_store, tmp_path):
    cfg = tiny_config(demo_store, "train.steps=2", "train.amp=bf16", "train.channels_last=true",
                      "train.deterministic=false")
    path = meta_train(cfg, tmp_path / "run", progress=False)
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["networks"]["generator"].values() if v.is_floating_point())


def test_torch_compile_path_trains(demo_store, tmp_path):
    """train.compile=true: the compiled networks train and checkpoint like eager ones (no recompile per step)."""
    cfg = tiny_config(demo_store, "train.steps=3", "train.compile=true", "train.deterministic=false")
    path = meta_train(cfg, tmp_path / "run", progress=False)
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 3
    # Compiled modules must save under the plain names, so eager code (finetune, reenact) can load them.
    assert not any("_orig_mod" in key for key in state["networks"]["generator"])
