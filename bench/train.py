"""Meta-training throughput of one D/G step on synthetic batches, with the real networks, losses and optimizers.

    python bench/train.py --config vox2 --device cuda --batch-size 8 --steps 20 --warmup 5 --mode both
    python bench/train.py --config demo --steps 10                    # CPU, eager

Batches are random uint8 frames and landmark images of the config's shape (no dataset needed); they go through
``training.meta.prepare_batch`` (host -> device copy, conversion to [-1, 1]) and ``training.step.train_step``
exactly as in meta_train.py. Missing VGG19 / VGGFace weight files are replaced by randomly initialised networks
of the same layout, so the perceptual loss still costs what it costs in a real run; the JSON says which.

Per mode (``eager``; ``fast`` = train.amp=bf16, train.channels_last=true, train.compile=true; ``both``) it prints
samples/s, the step time split into data / E+G forward / D phase / G phase, peak memory and, given a peak
FLOP/s, the model FLOP utilisation. Timings synchronise CUDA at the phase boundaries, which costs a little.
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

from config import Config, ConfigError, add_config_arguments, apply_overrides, config_from_args
from model import build_networks
from model.loss import GeneratorLoss
from model.summary import summarize
from training import step as step_module
from training.meta import prepare_batch
from training.step import Networks, build_optimizers, train_step
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
    """GFLOP of one training episode by FLOPS_FORMULA, with the per-image counts it is made of."""
    nets = summarize(cfg.model)
    e, g, d = (nets[name]["gflops"] for name in ("embedder", "generator", "discriminator"))
    vgg = vgg_gflops(cfg)
    k = cfg.train.k_shots
    total = 3 * (k * e + g + 4 * d) + 4 * sum(vgg.values())
    return {"gflops_per_image": {"embedder": e, "generator": g, "discriminator": d, **vgg},
            "gflops_per_sample": total}


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

    @contextlib.contextmanager
    def patch_step_phases(self):
        """Times training.step's D and G phases by swapping in timed versions for the duration."""
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


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # Linux reports ru_maxrss in KiB; it is the whole process's peak so far (earlier modes included).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "resource.getrusage ru_maxrss (process)"


def run_mode(cfg: Config, device: torch.device, steps: int, warmup: int, gflops: float,
             peak_tflops: float | None) -> dict:
    """Builds fresh networks for ``cfg``, runs ``warmup`` untimed then ``steps`` timed steps; returns the numbers."""
    torch.manual_seed(cfg.train.seed)
    networks, optimizers, generator_loss, sources = build_training(cfg, device)
    host_batch = synthetic_batch(cfg, cfg.train.batch_size, device, cfg.train.seed)
    for n in range(warmup):
        train_step(prepare_batch(host_batch, device), networks, optimizers, generator_loss, n, cfg.train.amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = PhaseTimer(device)
    with timer.patch_step_phases():
        for n in range(warmup, warmup + steps):
            with timer.phase("data"):
                batch = prepare_batch(host_batch, device)
            with timer.phase("step"):
                train_step(batch, networks, optimizers, generator_loss, n, cfg.train.amp)
    sec = timer.seconds
    total = sec["data"] + sec["step"]
    step_ms = {"total": total, "data": sec["data"], "d_phase": sec["d_phase"], "g_phase": sec["g_phase"],
               # E and G forward before the phases, plus W's update after them
               "forward_and_w": sec["step"] - sec["d_phase"] - sec["g_phase"]}
    samples_per_s = steps * cfg.train.batch_size / total
    memory, memory_source = _peak_memory_mib(device)
    result = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
              "samples_per_s": round(samples_per_s, 3),
              "step_ms": {k: round(1000 * v / steps, 2) for k, v in step_ms.items()},
              "peak_memory_mib": round(memory, 1), "peak_memory_source": memory_source,
              "achieved_tflops": round(gflops * samples_per_s / 1000, 4), "content_networks": sources}
    if peak_tflops:
        result["mfu"] = round(gflops * samples_per_s / 1000 / peak_tflops, 4)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser, default="vox2")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="episodes per step (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, per mode (default 5)")
    parser.add_argument("--mode", choices=("eager", "fast", "both"), default="eager",
                        help="eager, fast (bf16 + channels_last + torch.compile) or both (default eager)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s of the device in TFLOP/s for MFU (default: 989, H100 bf16 dense, on "
                             "cuda; none on cpu, and MFU is omitted)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    device = torch.device(args.device)
    peak = args.peak_tflops if args.peak_tflops is not None else (
        H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    try:
        cfg = apply_overrides(config_from_args(args), [f"train.batch_size={args.batch_size}"])
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    flops = flops_per_sample(cfg)
    modes = ["eager", "fast"] if args.mode == "both" else [args.mode]
    result = {
        "config": cfg.name, "device": str(device), "image_size": cfg.model.image_size, "k_shots": cfg.train.k_shots,
        "batch_size": cfg.train.batch_size, "steps": args.steps, "warmup": args.warmup,
        "data": "synthetic: random uint8 frames and landmark images of the config's shape, no dataset read",
        "flops_formula": FLOPS_FORMULA,
        "gflops_per_image": {k: round(v, 4) for k, v in flops["gflops_per_image"].items()},
        "gflops_per_sample": round(flops["gflops_per_sample"], 4), "peak_tflops": peak, "modes": {},
    }
    for mode in modes:
        mode_cfg = apply_overrides(cfg, FAST_OVERRIDES) if mode == "fast" else cfg
        result["modes"][mode] = run_mode(mode_cfg, device, args.steps, args.warmup, flops["gflops_per_sample"], peak)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
