"""Meta-training throughput of one D/G step on synthetic batches, with the real networks, losses and optimizers.

    python bench/train.py --config vox2 --device cuda --batch-size 8 --steps 20 --warmup 5 --mode both
    python bench/train.py --config vox2 --device cuda --batch-size max --mode both  # largest batch that fits
    python bench/train.py --config demo --steps 10                    # CPU, eager
    python bench/train.py --config headgan --device cuda --mode both  # HeadGAN, 256x256, paper batch 6
    python bench/train.py --config headgan_demo --steps 10            # HeadGAN, 64x64, CPU
    bash bench/gpu.sh bench_gpu.json                                  # every GPU figure in one JSON file

Everything is built by ``training.loop.build_training``, the function meta_train.py builds with (networks,
fused optimisers, ``Precision``, moving averages, the loss and the trainer's compile wrapping), and each step is
the trainer's ``prepare`` and ``step`` followed by the moving-average update, as in meta_train's loop. Batches
are random uint8 tensors of the config's shape in (pinned) host memory, so no dataset is read. Talking heads:
(B, K+1) frames and landmark images. HeadGAN: reference, target and the two NMFC renders, a log-mel window per
sample and a mouth centre. Missing VGG19 / VGGFace weight files are replaced by randomly initialised networks of
the same layout (``content=``), so the perceptual loss still costs what it costs in a real run; the JSON says
which (a HeadGAN demo run without the weights drops the term instead: ``--set loss.vgg19_weight=0`` measures that).

Modes: ``eager`` is the fp32 reference (train.amp=none, no torch.compile); ``fast`` is the config's train.amp
resolved for the device (the presets' ``auto``: bf16 on H100 / H200, fp16 with a gradient scaler on older
CUDA GPUs, fp32 on the CPU) with train.compile=true; ``both`` runs one then the other. train.channels_last is
the config's in both (``--set train.channels_last=true`` to measure NHWC). The JSON reports the amp each mode
actually ran.

Per mode it prints samples/s, the step time split into phases, peak memory, host<->device synchronisations per
step (``syncs_per_step``, by op) and, given a peak FLOP/s, the model FLOP utilisation. The phases are laps
between marks set from inside the step: the end of the generator's forward (E and G for talking heads), the
discriminators' optimizer step (end of the D phase), the generator's optimizer step (end of the G phase) and the
rest (talking heads: W's update; both: the moving averages and the step's bookkeeping). The laps synchronise CUDA,
which costs a little. ``--batch-size max`` (CUDA only) doubles and then bisects the batch until the step runs out
of GPU memory, and measures the largest one that fits.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
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
from model.headgan import check_headgan_config
from model.summary import summarize
from training import loop
from training.loop import Training, build_training, make_trainer, resolve_config
from training.precision import PrecisionError
from utils.syncs import SyncCounter
from vgg_model.vgg import CAFFE_PREPROCESS, VGGFeatures, layer_names, load_vgg

MODE_OVERRIDES = {"eager": ["train.amp=none", "train.compile=false"], "fast": ["train.compile=true"]}
H100_BF16_DENSE_TFLOPS = 989.0  # H100 / H200 SXM, bf16 dense tensor cores
# The doubling of --batch-size max stops here even if memory is left (W and the optimisers' state are fixed costs).
MAX_BATCH_LIMIT = 4096
# Steps counted by SyncCounter after the timed ones: its dispatch mode costs Python time on every op and
# torch.compile does not compile under it, so it stays out of the timing.
SYNC_COUNT_STEPS = 1

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
    """Wall time per named phase, synchronising the device at every mark (``phase`` blocks, ``lap`` marks)."""

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
    def marks_in(self, run: Training):
        """Laps inside the trainer's step: after the generator's forward and after the D and G updates.

        Both families' trainers call ``networks.generator`` once per step and step the "discriminator" then the
        "generator" optimizer, so a wrapper and two optimizer hooks split any family's step the same way.
        """
        networks = run.trainer.networks
        generator = networks.generator

        def marked_generator(*args):
            out = generator(*args)
            self.lap("forward")
            return out

        networks.generator = marked_generator
        hooks = [run.optimizers[name].register_step_post_hook(lambda *_, phase=phase: self.lap(phase))
                 for name, phase in (("discriminator", "d_phase"), ("generator", "g_phase"))]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            networks.generator = generator


def _progress(steps: range, what: str, cfg: Config) -> tqdm:
    """A progress bar on stderr (a 256x256 step takes many seconds on a CPU); the JSON goes to stdout."""
    mode = "fast" if cfg.train.compile else "eager"
    return tqdm(steps, desc=f"{what} ({mode})", leave=False, file=sys.stderr, dynamic_ncols=True)


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # Linux reports ru_maxrss in KiB; it is the whole process's peak so far (earlier modes included).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "resource.getrusage ru_maxrss (process)"


class Stepper:
    """One mode's training set-up and a synthetic batch; ``step`` is one iteration of meta_train's loop."""

    def __init__(self, cfg: Config, device: torch.device, content: dict[str, torch.nn.Module]):
        self.cfg, self.device = cfg, device
        # meta_train's seeding and backend switches (TF32, cudnn autotuning): fp32 on a GPU is TF32 there too.
        loop.configure_backends(cfg, device)
        self.run = build_training(cfg, make_trainer(cfg), device, content=content)
        self.use_batch(cfg.train.batch_size)

    def use_batch(self, batch_size: int) -> None:
        self.host_batch = None  # the old batch's pinned memory goes before the new one is made
        make = synthetic_headgan_batch if self.cfg.model.family == "headgan" else synthetic_batch
        self.batch_size, self.host_batch = batch_size, make(self.cfg, batch_size, self.device, self.cfg.train.seed)

    def step(self, n: int, timer: PhaseTimer | None = None) -> None:
        """Step ``n`` (1-based, as meta_train counts): prepare, the trainer's step, the moving averages."""
        run = self.run
        with timer.phase("data") if timer else contextlib.nullcontext():
            batch = run.trainer.prepare(self.host_batch, self.device)
        with timer.phase("step") if timer else contextlib.nullcontext():
            if timer:
                timer.start_laps()
            run.trainer.step(batch, run.optimizers, run.loss, n, run.precision)
            if run.averages:
                run.averages.update(n)
            if timer:
                timer.lap("rest")

    def free_after_oom(self) -> None:
        """What an out-of-memory step left behind: partial gradients, then the allocator's cached blocks."""
        for opt in self.run.optimizers.values():
            opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()

    def fits(self, batch_size: int) -> bool:
        """Whether one step at ``batch_size`` runs without exhausting GPU memory."""
        try:
            self.use_batch(batch_size)
            self.step(1)
            _sync(self.device)
            return True
        except torch.cuda.OutOfMemoryError:
            pass  # leave the except block first: the traceback holds the step's tensors
        self.host_batch = None
        self.free_after_oom()
        return False


def largest_fitting(fits, limit: int = MAX_BATCH_LIMIT) -> tuple[int, int | None, list[list]]:
    """The largest batch size ``fits(b)`` accepts, by doubling from 1 and then bisecting (fits is monotone).

    Returns (largest fitting, smallest refused or None if ``limit`` fitted, [[size, fitted], ...] in probe order).
    """
    probes = []

    def probe(b: int) -> bool:
        ok = fits(b)
        probes.append([b, ok])
        return ok

    if not probe(1):
        return 0, 1, probes
    low, high = 1, None
    while high is None and low < limit:
        b = min(2 * low, limit)
        if probe(b):
            low = b
        else:
            high = b
    while high is not None and high - low > 1:
        mid = (low + high) // 2
        if probe(mid):
            low = mid
        else:
            high = mid
    return low, high, probes


def measure(stepper: Stepper, steps: int, warmup: int, gflops: float, peak_tflops: float | None,
            sources: dict[str, str]) -> dict:
    """``warmup`` untimed steps, ``steps`` timed ones, then the sync count; one mode's JSON."""
    cfg, device, run = stepper.cfg, stepper.device, stepper.run
    for n in _progress(range(1, warmup + 1), "warm-up", cfg):
        stepper.step(n)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = PhaseTimer(device)
    with timer.marks_in(run):
        for n in _progress(range(warmup + 1, warmup + steps + 1), "timed steps", cfg):
            stepper.step(n, timer)
    memory, memory_source = _peak_memory_mib(device)
    with SyncCounter() as syncs:
        for n in range(warmup + steps + 1, warmup + steps + SYNC_COUNT_STEPS + 1):
            stepper.step(n)
    sec = timer.seconds
    step_seconds = {"total": sec["data"] + sec["step"],
                    **{k: sec.get(k, 0.0) for k in ("data", "forward", "d_phase", "g_phase", "rest")}}
    samples_per_s = steps * stepper.batch_size / step_seconds["total"]
    result = {"amp": cfg.train.amp, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
              "batch_size": stepper.batch_size, "samples_per_s": round(samples_per_s, 3),
              "step_ms": {k: round(1000 * v / steps, 2) for k, v in step_seconds.items()},
              "peak_memory_mib": round(memory, 1), "peak_memory_source": memory_source,
              "syncs_per_step": syncs.count / SYNC_COUNT_STEPS,
              "sync_ops": dict(sorted(syncs.ops.items())),
              "achieved_tflops": round(gflops * samples_per_s / 1000, 4), "content_networks": sources}
    if peak_tflops:
        result["mfu"] = round(gflops * samples_per_s / 1000 / peak_tflops, 4)
    return result


def run_mode(cfg: Config, device: torch.device, steps: int, warmup: int, gflops: float,
             peak_tflops: float | None, find_max: bool = False) -> dict:
    """Builds fresh networks for ``cfg`` and measures them; with ``find_max`` at the largest batch that fits."""
    content, sources = content_networks(cfg)
    stepper = Stepper(cfg, device, content)
    if not find_max:
        return measure(stepper, steps, warmup, gflops, peak_tflops, sources)
    largest, refused, probes = largest_fitting(stepper.fits)
    search = {"largest_fitting": largest, "smallest_refused": refused, "probes": probes}
    if largest == 0:
        return {"amp": cfg.train.amp, "compile": cfg.train.compile, "max_batch": search,
                "error": "one sample does not fit in GPU memory"}
    # The timed steps can need a little more than one probe step (more warm-up, allocator fragmentation):
    # step down by eighths rather than report nothing.
    search["refused_when_timed"] = []
    batch_size = largest
    while len(search["refused_when_timed"]) < 3:
        stepper.use_batch(batch_size)
        try:
            return {**measure(stepper, steps, warmup, gflops, peak_tflops, sources), "max_batch": search}
        except torch.cuda.OutOfMemoryError:
            pass
        stepper.free_after_oom()
        search["refused_when_timed"].append(batch_size)
        batch_size = max(1, batch_size * 7 // 8)
    return {"amp": cfg.train.amp, "compile": cfg.train.compile, "max_batch": search,
            "error": f"out of memory in the timed steps at batch sizes {search['refused_when_timed']}"}



def mode_config(cfg: Config, mode: str, device: torch.device) -> Config:
    """``cfg`` for ``mode`` ("eager" or "fast", see the module docstring) as meta_train would run it on ``device``."""
    return resolve_config(apply_overrides(cfg, MODE_OVERRIDES[mode]), device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser, default="vox2")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-size", default=None,
                        help="samples (episodes, pairs) per step, or 'max': the largest that fits in GPU memory "
                             "(CUDA only). Default: 8 for talking heads, the set-up of the GPU targets; the "
                             "config's train.batch_size for HeadGAN, 6 in the paper's")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, per mode (default 5)")
    parser.add_argument("--mode", choices=("eager", "fast", "both"), default="eager",
                        help="eager (fp32, no compile), fast (the config's train.amp resolved for the device, "
                             "torch.compile) or both (default eager)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s of the device in TFLOP/s for MFU (default: 989, H100 / H200 bf16 "
                             "dense, on cuda, for both modes; none on cpu, and MFU is omitted)")
    args = parser.parse_args(argv)
    find_max = args.batch_size == "max"
    if not find_max and args.batch_size is not None and not (args.batch_size.isdigit() and int(args.batch_size)):
        parser.error(f"--batch-size must be a positive integer or 'max', got {args.batch_size!r}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1, --warmup at least 0")
    device = torch.device(args.device)
    if find_max and device.type != "cuda":
        parser.error(f"--batch-size max searches for the largest batch before CUDA runs out of memory; "
                     f"it needs --device cuda (got {device})")
    peak = args.peak_tflops if args.peak_tflops is not None else (
        H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    try:
        cfg = config_from_args(args)
        headgan = cfg.model.family == "headgan"
        if not find_max and args.batch_size is not None:
            cfg = apply_overrides(cfg, [f"train.batch_size={args.batch_size}"])
        elif not headgan:
            cfg = apply_overrides(cfg, ["train.batch_size=8"])
        if headgan:
            check_headgan_config(cfg.model)
        modes = ["eager", "fast"] if args.mode == "both" else [args.mode]
        mode_cfgs = {mode: mode_config(cfg, mode, device) for mode in modes}
    except (ConfigError, PrecisionError, ValueError) as err:  # ValueError: a HeadGAN set-up that cannot be built
        parser.exit(2, f"error: {err}\n")
    flops = flops_per_sample(cfg)
    result = {"config": cfg.name, "family": cfg.model.family, "device": str(device),
              "image_size": cfg.model.image_size}
    if headgan:
        result.update({
            "audio": cfg.model.headgan.audio,
            "data": "synthetic: random uint8 reference, target and NMFC render images, log-mel-shaped audio "
                    "windows and mouth centres of the config's shape, no dataset read",
            "flops_formula": HEADGAN_FLOPS_FORMULA})
    else:
        result.update({
            "k_shots": cfg.train.k_shots,
            "data": "synthetic: random uint8 frames and landmark images of the config's shape, no dataset read",
            "flops_formula": FLOPS_FORMULA})
    result.update({"batch_size": "max" if find_max else cfg.train.batch_size, "steps": args.steps,
                   "warmup": args.warmup, "syncs_counted_over": f"{SYNC_COUNT_STEPS} step(s) after the timed ones",
                   "gflops_per_image": {k: round(v, 4) for k, v in flops["gflops_per_image"].items()},
                   "gflops_per_sample": round(flops["gflops_per_sample"], 4), "peak_tflops": peak, "modes": {}})
    for mode, mode_cfg in mode_cfgs.items():
        result["modes"][mode] = run_mode(mode_cfg, device, args.steps, args.warmup, flops["gflops_per_sample"],
                                         peak, find_max)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
