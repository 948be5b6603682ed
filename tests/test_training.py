"""The meta-training engine: exact resume, atomic checkpoints, refusals, NaN stop, DDP on 2 CPU processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config import ConfigError, load_config
from training import checkpoint as ckpt
from training.loop import EpisodeSampler, WeightAverage, check_store_rows, meta_train
from training.precision import (NonFiniteLossError, Precision, PrecisionError, RowAdam, autocast_context,
                                make_adam, resolve_amp)
from sync_check import end_cadences, syncs_added_by_steps
from utils.syncs import SyncCounter

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


def test_resume_refuses_a_changed_config_and_accepts_a_longer_run(demo_store, tmp_path):
    run = tmp_path / "run"
    meta_train(tiny_config(demo_store, "train.steps=2"), run, progress=False)
    for change, key in (("optim.lr_generator=0.5", "requested 0.5"),
                        ("train.batch_size=3", "train.batch_size"), ("train.k_shots=3", "train.k_shots"),
                        ("model.generator.layers=[D32, I, D64, I, BA64, U64, U32]", "model.generator.layers")):
        with pytest.raises(ConfigError, match="would change the run's config") as err:
            meta_train(tiny_config(demo_store, "train.steps=3", change), run, resume=True, progress=False)
        assert key in str(err.value)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["step"] == 2  # nothing was trained or written
    # Run length and cadences may change; the frozen config then records the new length.
    meta_train(tiny_config(demo_store, "train.steps=3", "train.log_every=3"), run, resume=True, progress=False)
    assert load_config(run / "config.yaml").train.steps == 3


def test_resume_refuses_a_store_whose_videos_moved_to_other_rows():
    saved = torch.tensor([[11, 0], [22, 1], [33, 2]])
    assert check_store_rows(saved, saved, "run") is None
    assert "1 videos" in check_store_rows(saved, saved[:2], "run")  # quarantined: the others keep their rows
    with pytest.raises(ckpt.CheckpointError, match="0 videos are new and 2 sit at other rows"):
        check_store_rows(saved, torch.tensor([[11, 0], [22, 2], [33, 1]]), "run")
    with pytest.raises(ckpt.CheckpointError, match="1 videos are new"):
        check_store_rows(saved, torch.tensor([[11, 0], [44, 1]]), "run")


def test_diverging_weights_never_reach_a_checkpoint(demo_store, tmp_path):
    """A finite but absurd learning rate: the step that goes non-finite is named and no checkpoint is written."""
    huge = ["optim.lr_generator=1e37", "optim.lr_embedder=1e37", "optim.lr_discriminator=1e37",
            "train.checkpoint_every=1"]
    with pytest.raises(NonFiniteLossError, match=r"became NaN or Inf at step 1.*no checkpoint was written"):
        meta_train(tiny_config(demo_store, "train.steps=3", *huge), tmp_path / "run", progress=False)
    assert ckpt.list_checkpoints(tmp_path / "run") == []


def test_a_state_with_nan_is_never_saved_and_a_failing_save_is_one_line(tmp_path, monkeypatch):
    good = ckpt.save_run_checkpoint(tmp_path, 1, {"kind": "meta_train", "networks": {"g": {"w": torch.ones(3)}}}, 1)
    bad = {"kind": "meta_train", "networks": {"g": {"w": torch.tensor([1.0, float("nan")])}}}
    with pytest.raises(NonFiniteLossError, match=r"NaN or Inf in networks.g.w; not saving it .*step_000000001.pt"):
        ckpt.save_run_checkpoint(tmp_path, 2, bad, keep=1)
    assert ckpt.list_checkpoints(tmp_path) == [good]  # rotation never ran for the refused one

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match=r"cannot write checkpoint .*No space left on device .*intact"):
        ckpt.save_run_checkpoint(tmp_path, 3, {"kind": "meta_train"}, keep=1)
    assert ckpt.list_checkpoints(tmp_path) == [good] and not list(ckpt.checkpoint_dir(tmp_path).glob(".*.tmp"))


def test_resume_falls_back_from_a_damaged_newest_checkpoint(demo_store, tmp_path, capsys):
    run = tmp_path / "run"
    meta_train(tiny_config(demo_store, "train.steps=4"), run, progress=False)  # checkpoints at steps 2 and 4
    newest = ckpt.latest_checkpoint(run)
    newest.write_bytes(b"")  # a save cut off by a full disk or a killed copy
    stale = ckpt.checkpoint_dir(run) / ".step_000000006.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    meta_train(tiny_config(demo_store, "train.steps=5"), run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "empty (0 bytes)" in err and "resuming from step_000000002.pt" in err
    assert not stale.exists() and (newest.parent / (newest.name + ".unreadable")).is_file()
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["step"] == 5
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 5  # steps 3 and 4 logged once, by the resumed run


def test_an_unwritable_run_directory_is_refused_before_training(demo_store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ckpt.CheckpointError, match="cannot write to the run directory"):
        meta_train(tiny_config(demo_store, "train.steps=1"), blocker / "run", progress=False)


def test_a_training_step_does_not_wait_for_the_device(demo_store, tmp_path):
    """Between log, checkpoint, image and validation steps the loop reads nothing back from the device: the
    runs of 2 and 6 steps (all cadences at the end) differ by no synchronising op at all."""
    extra = syncs_added_by_steps(lambda steps: meta_train(
        tiny_config(demo_store, *end_cadences(steps), "train.val_every=0"), tmp_path / f"run{steps}",
        progress=False), 2, 6)
    assert not extra, f"4 more steps made {extra} more synchronising ops"


def test_fp16_with_a_gradient_scaler_resumes_exactly(demo_store, tmp_path):
    """train.amp=fp16 (runnable on the CPU for this test): the scaler's state is checkpointed and restored."""
    fp16 = ["train.amp=fp16", "train.ema_decay=0"]
    meta_train(tiny_config(demo_store, "train.steps=4", *fp16), tmp_path / "straight", progress=False)
    meta_train(tiny_config(demo_store, "train.steps=2", *fp16), tmp_path / "split", progress=False)
    meta_train(tiny_config(demo_store, "train.steps=4", *fp16), tmp_path / "split", resume=True, progress=False)
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / r)) for r in ("straight", "split"))
    assert a["scaler"]["scale"] == b["scaler"]["scale"]
    assert a["scaler"]["_growth_tracker"] == b["scaler"]["_growth_tracker"]
    for name, weights in a["networks"].items():
        assert all(torch.equal(v, b["networks"][name][k]) for k, v in weights.items()), name
    assert a["config"]["train"]["amp"] == "fp16"


def test_amp_auto_resolves_for_the_device_and_impossible_choices_are_refused():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "none" and resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(PrecisionError, match="needs a CUDA GPU"):
        resolve_amp("fp16", torch.device("meta"))
    with pytest.raises(PrecisionError, match="resolved amp"):
        autocast_context(cpu, "auto")


def test_non_finite_terms_skip_the_update_on_the_device():
    """The guard and the skip need no host read; Adam's weights, moments and step counter stay as they were."""
    net = torch.nn.Linear(3, 1)
    opt = make_adam(net.parameters(), 0.1, (0.0, 0.999))
    precision = Precision("none", torch.device("cpu"))
    x = torch.ones(2, 3)
    good = {"fit": net(x).pow(2).mean()}
    precision.step(opt, precision.backward(good, 1))
    before = [p.detach().clone() for p in net.parameters()]
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    with SyncCounter() as syncs:
        opt.zero_grad()
        bad = {"fit": net(x).pow(2).mean(), "broken": torch.tensor(float("inf"))}
        precision.step(opt, precision.backward(bad, 2))
    assert syncs.count == 0, syncs.ops
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, opt.state.values()))
    assert all(float(s["step"]) == 1 for s in opt.state.values())
    with pytest.raises(NonFiniteLossError, match="'broken' became NaN or Inf at step 2"):
        precision.check(2)


def test_row_adam_matches_sparse_adam_and_skips_rows_on_the_device():
    torch.manual_seed(0)
    weights = [torch.nn.Embedding(6, 4, sparse=True) for _ in range(2)]
    weights[1].load_state_dict(weights[0].state_dict())
    reference = torch.optim.SparseAdam(weights[0].parameters(), lr=0.01, betas=(0.0, 0.999))
    rows = RowAdam(weights[1].parameters(), lr=0.01, betas=(0.0, 0.999))
    for step in range(3):
        index = torch.tensor([1, 3, 3, step])  # duplicates, as a batch with two episodes of one video has
        target = torch.randn(4, 4)
        for w, opt in zip(weights, (reference, rows)):
            opt.zero_grad()
            (w(index) - target).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(weights[1].weight, weights[0].weight)
    before = weights[1].weight.detach().clone()
    rows.zero_grad()
    weights[1](torch.tensor([2, 5])).sum().backward()
    rows.step(found_inf=torch.tensor(1.0))
    assert torch.equal(weights[1].weight, before)
    restored = RowAdam(weights[1].parameters(), lr=0.01)
    restored.load_state_dict(rows.state_dict())
    assert "scratch" not in rows.state_dict()["state"][0]


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


def test_torch_compile_path_trains_without_recompiling_after_warm_up(demo_store, tmp_path, monkeypatch):
    """train.compile=true: E, G, both uses of D and the perceptual networks compile in the first steps; the
    later steps compile nothing more, and checkpoints keep the plain names."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from training.talking_head import TalkingHeadTrainer

    compiled_after_step = []
    step = TalkingHeadTrainer.step

    def counting_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        compiled_after_step.append(sum(counters["frames"].values()))
        return out

    monkeypatch.setattr(TalkingHeadTrainer, "step", counting_step)
    torch._dynamo.reset()
    counters.clear()
    # aot_eager: the same graphs and guards as inductor (what decides recompiles) without generating C++ kernels
    # on the test machine; the inductor path is the GPU benchmark's (bench/gpu.sh).
    cfg = tiny_config(demo_store, "train.steps=5", "train.compile=true", "train.compile_backend=aot_eager",
                      "train.deterministic=false", "train.log_every=5", "train.image_every=5",
                      "train.checkpoint_every=5")
    path = meta_train(cfg, tmp_path / "run", progress=False)
    assert compiled_after_step[1] > 0 and compiled_after_step[-1] == compiled_after_step[1], compiled_after_step
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 5
    # Compiled modules must save under the plain names, so eager code (finetune, reenact) can load them.
    assert not any("_orig_mod" in key for key in state["networks"]["generator"])
