"""Meta-training throughput of one D/G step on synthetic batches, with the real networks, losses and optimizers.

    python bench/train.py --config vox2 --device cuda --batch-size 8 --steps 20 --warmup 5 --mode both
    python bench/train.py --config demo --steps 10                    # CPU, eager
    python bench/train.py --config headgan --device cuda --mode both  # HeadGAN, 256x256, paper batch 6
    python bench/train.py --config headgan_demo --steps 10            # HeadGAN, 64x64, CPU

Batches are random uint8 images of the config's shape (no dataset needed) and go through the same preparation
and step as meta_train.py. Talking heads: (B, K+1) frames and landmark images through
``training.talking_head.prepare_batch`` (host -> device copy, conversion to [-1, 1]) and ``training.talking_head.train_step``.
HeadGAN: reference, target and the two NMFC renders, a log-mel window per sample and a mouth centre, through
``HeadGANTrainer.prepare`` and ``HeadGANTrainer.step`` (``training.headgan.headgan_train_step``), the very
methods meta_train calls. Missing VGG19 / VGGFace weight files are replaced by randomly initialised networks
of the same layout, so the perceptual loss still costs what it costs in a real run; the JSON says which (a
HeadGAN demo run without the weights drops the term instead: ``--set loss.vgg19_weight=0`` measures that).

Per mode (``eager``; ``fast`` = train.amp=bf16, train.channels_last=true, train.compile=true; ``both``) it prints
samples/s, the step time split into phases, peak memory and, given a peak FLOP/s, the model FLOP utilisation.
Talking heads: data / E+G forward and W update / D phase / G phase. HeadGAN: data / G forward / D phase (up to
the discriminators' optimizer step) / G phase (the rest of the step). Timings synchronise CUDA at the phase
boundaries, which costs a little.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from config import Config, ConfigError, add_config_arguments, apply_overrides, config_from_args
from model import build_networks
from model.headgan import check_headgan_config
from model.loss import GeneratorLoss
from model.summary import summarize
from training import talking_head as step_module
from training.distributed import DistInfo
from training.talking_head import Networks, build_optimizers, prepare_batch, train_step
from vgg_model.vgg import CAFFE_PREPROCESS, VGGFeatures, layer_names, load_vgg

FAST_OVERRIDES = ["train.amp=bf16", "train.channels_last=true", "train.compile=true"]
H100_BF16_DENSE_TFLOPS = 989.0

FLOPS_FORMULA = (
    "per sample (episode) = 3 * (K * E + G + 2 * D + 2 * D) + sum over content nets of 4 * VGG; "
    "E, G, D: forward GFLOP per image from model.summary (E on one frame + landmarks, G with P, D on one pair); "
    "D runs on 2 images (real, fake) in the D phase and 2 (fake, real) in the G phase; "
    "x3 = forward + backward (backward ~ 2x forward, the usual approximation; it overcounts the G phase's frozen "
    "D and the D phase's detached input a little); VGG: forward on the real frame (1) + forward and backward on "
    "the generated frame (3). FLOPs count matmuls, convolutions and attention only (torch.utils.flop_counter, "
    "2 per multiply-add)."
)
HEADGAN_FLOPS_FORMULA = (
    "per sample (pair) = 3 * (G + 2 * D + 2 * D + 2 * M + 2 * M) + sum over content nets of 4 * VGG; "
    "G, D, M: forward GFLOP per image from model.summary (G on one reference, its render, the driving render "
    "and audio window; D the multi-scale discriminator on one (image, render) pair over all its scales; M the "
    "mouth discriminator on one crop, 0 when it is off or loss.mouth_adversarial_weight is 0); D and M run on 2 "
    "inputs (real, fake) in the D phase and 2 (fake, real) in the G phase; x3 = forward + backward (backward ~ "
    "2x forward; it overcounts the G phase's frozen discriminators and the D phase's detached input a little); "
    "VGG: forward on the real frame (1) + forward and backward on the generated frame (3). FLOPs count matmuls, "
    "convolutions and attention only (torch.utils.flop_counter, 2 per multiply-add; grid_sample's warps are not "
    "counted)."
)


def _gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def content_networks(cfg: Config) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """VGG19 / VGGFace for the non-zero content terms: converted weights if present, else random weights.

    Returns the networks and, per network, where its weights came from (for the JSON).
    """
    networks, sources = {}, {}
    loss = cfg.loss
    for arch, weight, path, layers in (("vgg19", loss.vgg19_weight, loss.vgg19_path, loss.vgg19_layers),
                                       ("vggface", loss.vggface_weight, loss.vggface_path, loss.vggface_layers)):
        if weight == 0:
            continue
        order = layer_names(arch)
        last = max(layers, key=order.index)
        if Path(path).is_file():
            networks[arch], sources[arch] = load_vgg(path, arch, last_layer=last), path
        else:
            networks[arch] = VGGFeatures(arch, CAFFE_PREPROCESS[arch], last_layer=last)
            sources[arch] = f"random weights ({path} not found)"
        networks[arch].requires_grad_(False).eval()  # frozen, as load_vgg returns them
    return networks, sources


def vgg_gflops(cfg: Config) -> dict[str, float]:
    """Forward GFLOP of each content network on one image at model.image_size (built on the meta device)."""
    s = cfg.model.image_size
    result = {}
    with torch.device("meta"):
        for arch, layers in (("vgg19", cfg.loss.vgg19_layers), ("vggface", cfg.loss.vggface_layers)):
            weight = cfg.loss.vgg19_weight if arch == "vgg19" else cfg.loss.vggface_weight
            if weight == 0:
                continue
            net = VGGFeatures(arch, CAFFE_PREPROCESS[arch], last_layer=max(layers, key=layer_names(arch).index))
            image = torch.empty(1, 3, s, s)
            result[arch] = _gflops(lambda: net(image, layers))
    return result


def flops_per_sample(cfg: Config) -> dict:
    """GFLOP of one training sample by FLOPS_FORMULA (HEADGAN_FLOPS_FORMULA), with the per-image counts."""
    nets = summarize(cfg.model)
    if cfg.model.family == "headgan":
        return _headgan_flops(cfg, nets)
    e, g, d = (nets[name]["gflops"] for name in ("embedder", "generator", "discriminator"))
    vgg = vgg_gflops(cfg)
    k = cfg.train.k_shots
    total = 3 * (k * e + g + 4 * d) + 4 * sum(vgg.values())
    return {"gflops_per_image": {"embedder": e, "generator": g, "discriminator": d, **vgg},
            "gflops_per_sample": total}


def _headgan_flops(cfg: Config, nets: dict[str, dict[str, float]]) -> dict:
    g, d = nets["generator"]["gflops"], nets["discriminator"]["gflops"]
    # The step crops mouths and runs the mouth D only when its loss weight is non-zero (HeadGANLoss.uses_mouth).
    mouth = "mouth_discriminator" in nets and cfg.loss.mouth_adversarial_weight != 0
    m = nets["mouth_discriminator"]["gflops"] if mouth else 0.0
    vgg = vgg_gflops(cfg)
    per_image = {"generator": g, "discriminator": d, **({"mouth_discriminator": m} if mouth else {}), **vgg}
    return {"gflops_per_image": per_image, "gflops_per_sample": 3 * (g + 4 * d + 4 * m) + 4 * sum(vgg.values())}


def synthetic_batch(cfg: Config, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """A uint8 batch shaped like MetaDataset's (B, K+1, 3, S, S) episodes, in (pinned) host memory."""
    g = torch.Generator().manual_seed(seed)
    s, k = cfg.model.image_size, cfg.train.k_shots
    shape = (batch_size, k + 1, 3, s, s)
    batch = {"frames": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
             "landmarks": torch.randint(0, 256, (batch_size, k + 1, cfg.model.landmark_channels, s, s), generator=g,
                                        dtype=torch.uint8),
             "video_index": torch.randint(0, cfg.model.discriminator.num_videos, (batch_size,), generator=g)}
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    return batch


def synthetic_headgan_batch(cfg: Config, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """A batch shaped like ``dataset.headgan_data.collate``'s, in (pinned) host memory.

    Images and renders are uint8 (B, 3, S, S); "audio" is (B, audio_mels, audio_window) log-mel-like noise with
    every item's ``has_audio`` set when the model uses audio (so the audio encoder and the mouth D's projection
    run, as on a store with soundtracks); "mouth" holds pixel centres around where a face crop has its mouth.
    """
    g = torch.Generator().manual_seed(seed)
    s, h = cfg.model.image_size, cfg.model.headgan
    images = {key: torch.randint(0, 256, (batch_size, 3, s, s), generator=g, dtype=torch.uint8)
              for key in ("reference", "target", "reference_render", "driving_render")}
    centre = torch.tensor([0.5, 0.7]) * s
    batch = {**images,
             "audio": torch.randn(batch_size, h.audio_mels, h.audio_window, generator=g) - 4.0,
             "has_audio": torch.full((batch_size,), h.audio, dtype=torch.bool),
             "mouth": centre + 0.05 * s * torch.randn(batch_size, 2, generator=g)}
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Accumulates wall time per named phase, synchronising the device at both ends of each."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def phase(self, name: str):
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed

    def start_laps(self) -> None:
        """Starts a run of consecutive laps inside one phase (see ``lap``)."""
        _sync(self.device)
        self._lap_start = time.perf_counter()

    def lap(self, name: str) -> None:
        """Adds the time since the last lap (or ``start_laps``) to ``name``; called from inside a step."""
        _sync(self.device)
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._lap_start
        self._lap_start = now

    @contextlib.contextmanager
    def patch_step_phases(self):
        """Times training.talking_head's D and G phases by swapping in timed versions for the duration."""
        originals = step_module.discriminator_phase, step_module.generator_phase
        step_module.discriminator_phase = self.wrap("d_phase", originals[0])
        step_module.generator_phase = self.wrap("g_phase", originals[1])
        try:
            yield
        finally:
            step_module.discriminator_phase, step_module.generator_phase = originals


def build_training(cfg: Config, device: torch.device) -> tuple[Networks, dict, GeneratorLoss, dict[str, str]]:
    """Networks (compiled if train.compile), optimizers and the generator loss on ``device``, as meta_train does."""
    nets = build_networks(cfg.model)
    optimizers = build_optimizers(nets["embedder"], nets["generator"], nets["discriminator"], cfg)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    for net in nets.values():
        net.to(device, memory_format=memory_format)
    content, sources = content_networks(cfg)
    content = {k: v.to(device, memory_format=memory_format) for k, v in content.items()}
    called = dict(nets)
    if cfg.train.compile:
        called = {name: torch.compile(net) for name, net in nets.items()}
    networks = Networks(called["embedder"], called["generator"], called["discriminator"], nets["discriminator"])
    return networks, optimizers, GeneratorLoss(cfg.loss, content), sources


def _progress(steps: range, what: str, cfg: Config) -> tqdm:
    """A progress bar on stderr (a 256x256 step takes many seconds on a CPU); the JSON goes to stdout."""
    mode = "fast" if cfg.train.compile else "eager"
    return tqdm(steps, desc=f"{what} ({mode})", leave=False, file=sys.stderr, dynamic_ncols=True)


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # Linux reports ru_maxrss in KiB; it is the whole process's peak so far (earlier modes included).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "resource.getrusage ru_maxrss (process)"


def mode_result(cfg: Config, device: torch.device, steps: int, step_seconds: dict[str, float], gflops: float,
                peak_tflops: float | None, sources: dict[str, str]) -> dict:
    """One mode's JSON from the seconds spent per phase over ``steps`` timed steps ("total": the whole)."""
    samples_per_s = steps * cfg.train.batch_size / step_seconds["total"]
    memory, memory_source = _peak_memory_mib(device)
    result = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
              "samples_per_s": round(samples_per_s, 3),
              "step_ms": {k: round(1000 * v / steps, 2) for k, v in step_seconds.items()},
              "peak_memory_mib": round(memory, 1), "peak_memory_source": memory_source,
              "achieved_tflops": round(gflops * samples_per_s / 1000, 4), "content_networks": sources}
    if peak_tflops:
        result["mfu"] = round(gflops * samples_per_s / 1000 / peak_tflops, 4)
    return result


def run_mode(cfg: Config, device: torch.device, steps: int, warmup: int, gflops: float,
             peak_tflops: float | None) -> dict:
    """Builds fresh networks for ``cfg``, runs ``warmup`` untimed then ``steps`` timed steps; returns the numbers."""
    torch.manual_seed(cfg.train.seed)
    networks, optimizers, generator_loss, sources = build_training(cfg, device)
    host_batch = synthetic_batch(cfg, cfg.train.batch_size, device, cfg.train.seed)
    for n in _progress(range(warmup), "warm-up", cfg):
        train_step(prepare_batch(host_batch, device), networks, optimizers, generator_loss, n, cfg.train.amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = PhaseTimer(device)
    with timer.patch_step_phases():
        for n in _progress(range(warmup, warmup + steps), "timed steps", cfg):
            with timer.phase("data"):
                batch = prepare_batch(host_batch, device)
            with timer.phase("step"):
                train_step(batch, networks, optimizers, generator_loss, n, cfg.train.amp)
    sec = timer.seconds
    total = sec["data"] + sec["step"]
    step_ms = {"total": total, "data": sec["data"], "d_phase": sec["d_phase"], "g_phase": sec["g_phase"],
               # E and G forward before the phases, plus W's update after them
               "forward_and_w": sec["step"] - sec["d_phase"] - sec["g_phase"]}
    return mode_result(cfg, device, steps, step_ms, gflops, peak_tflops, sources)


def run_headgan_mode(cfg: Config, device: torch.device, steps: int, warmup: int, gflops: float,
                     peak_tflops: float | None) -> dict:
    """``run_mode`` for HeadGAN: networks, optimizers, loss, prepare and step all come from ``HeadGANTrainer``.

    The step is one function, so its phases are laps between marks set from inside it: after the generator's
    forward (a wrapper around the called generator) and after the discriminators' optimizer step (a step hook).
    """
    from training.headgan import HeadGANTrainer

    torch.manual_seed(cfg.train.seed)
    trainer = HeadGANTrainer(cfg)
    nets = build_networks(cfg.model)
    optimizers = trainer.optimizers(nets)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    for net in nets.values():
        net.to(device, memory_format=memory_format)
    content, sources = content_networks(cfg)
    loss = trainer.loss({k: v.to(device, memory_format=memory_format) for k, v in content.items()})
    trainer.wrap(nets, DistInfo(), device)
    host_batch = synthetic_headgan_batch(cfg, cfg.train.batch_size, device, cfg.train.seed)
    for n in _progress(range(warmup), "warm-up", cfg):
        trainer.step(trainer.prepare(host_batch, device), optimizers, loss, n)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timer = PhaseTimer(device)
    generator = trainer.networks.generator

    def timed_generator(*args):
        out = generator(*args)
        timer.lap("g_forward")
        return out

    trainer.networks.generator = timed_generator
    hook = optimizers["discriminator"].register_step_post_hook(lambda *_: timer.lap("d_phase"))
    try:
        for n in _progress(range(warmup, warmup + steps), "timed steps", cfg):
            with timer.phase("data"):
                batch = trainer.prepare(host_batch, device)
            with timer.phase("step"):
                timer.start_laps()
                trainer.step(batch, optimizers, loss, n)
                timer.lap("g_phase")
    finally:
        hook.remove()
        trainer.networks.generator = generator
    sec = timer.seconds
    total = sec["data"] + sec["step"]
    step_ms = {"total": total, **{k: sec[k] for k in ("data", "g_forward", "d_phase", "g_phase")}}
    return mode_result(cfg, device, steps, step_ms, gflops, peak_tflops, sources)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser, default="vox2")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples (episodes, pairs) per step (default: 8 for talking heads, the set-up of the "
                             "GPU targets; the config's train.batch_size for HeadGAN, 6 in the paper's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, per mode (default 5)")
    parser.add_argument("--mode", choices=("eager", "fast", "both"), default="eager",
                        help="eager, fast (bf16 + channels_last + torch.compile) or both (default eager)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s of the device in TFLOP/s for MFU (default: 989, H100 bf16 dense, on "
                             "cuda; none on cpu, and MFU is omitted)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    device = torch.device(args.device)
    peak = args.peak_tflops if args.peak_tflops is not None else (
        H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    try:
        cfg = config_from_args(args)
        headgan = cfg.model.family == "headgan"
        batch_size = args.batch_size if args.batch_size is not None else (cfg.train.batch_size if headgan else 8)
        cfg = apply_overrides(cfg, [f"train.batch_size={batch_size}"])
        if headgan:
            check_headgan_config(cfg.model)
    except (ConfigError, ValueError) as err:  # ValueError: a HeadGAN set-up that cannot be built
        parser.exit(2, f"error: {err}\n")
    flops = flops_per_sample(cfg)
    modes = ["eager", "fast"] if args.mode == "both" else [args.mode]
    result = {"config": cfg.name, "family": cfg.model.family, "device": str(device),
              "image_size": cfg.model.image_size}
    if headgan:
        result.update({
            "audio": cfg.model.headgan.audio, "batch_size": cfg.train.batch_size, "steps": args.steps,
            "warmup": args.warmup,
            "data": "synthetic: random uint8 reference, target and NMFC render images, log-mel-shaped audio "
                    "windows and mouth centres of the config's shape, no dataset read",
            "flops_formula": HEADGAN_FLOPS_FORMULA})
    else:
        result.update({
            "k_shots": cfg.train.k_shots, "batch_size": cfg.train.batch_size, "steps": args.steps,
            "warmup": args.warmup,
            "data": "synthetic: random uint8 frames and landmark images of the config's shape, no dataset read",
            "flops_formula": FLOPS_FORMULA})
    result.update({"gflops_per_image": {k: round(v, 4) for k, v in flops["gflops_per_image"].items()},
                   "gflops_per_sample": round(flops["gflops_per_sample"], 4), "peak_tflops": peak, "modes": {}})
    run = run_headgan_mode if headgan else run_mode
    for mode in modes:
        mode_cfg = apply_overrides(cfg, FAST_OVERRIDES) if mode == "fast" else cfg
        result["modes"][mode] = run(mode_cfg, device, args.steps, args.warmup, flops["gflops_per_sample"], peak)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
