"""Typed configuration: YAML presets checked into dataclasses, with dotted command-line overrides.

Every field is documented where it is defined. Defaults are the paper's VoxCeleb2 256x256 set-up
(Zakharov et al. 2019, Sec. 3-4; see ../shared/SPEC.md); presets in ``configs/`` override what differs.

    cfg = load_config("configs/demo.yaml", ["train.batch_size=4", "model.image_size=128"])

Unknown keys and values of the wrong type raise ``ConfigError`` naming the dotted key, so a typo in a preset
or an override never passes silently.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


# --------------------------------------------------------------------------------------------------------------
# Talking-head networks (Zakharov et al. 2019). Layer tables use one block vocabulary (model/blocks.py):
#   D<c>  residual down block (BigGAN style, no normalisation)      U<c>  residual up block with AdaIN
#   B<c>  residual block with instance norm (Johnson et al.)        BA<c> the same with AdaIN
#   R<c>  residual block without normalisation                      I     instance norm (affine)
#   A     self-attention (SAGAN)                                    X*n   repeat token X n times
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EmbedderConfig:
    """E(x, y): frame + landmark image -> 512-d embedding (paper Sec. 3.2, Fig. 2)."""

    # Blocks applied to the 6-channel input at image_size; must end at 4x4 for 256x256 in the paper.
    layers: list[str] = field(default_factory=lambda: ["D64", "D128", "D256", "A", "D512", "D512", "D512"])


@dataclass
class GeneratorConfig:
    """G(y, e_hat): landmark image -> frame, AdaIN parameters psi = P e_hat (paper Sec. 3.2)."""

    # Down blocks use plain instance norm (the I after each D), AdaIN residual blocks sit at the bottleneck,
    # AdaIN up blocks return to image_size. The output head (AdaIN, ReLU, 3x3 conv to RGB, tanh) is fixed.
    layers: list[str] = field(default_factory=lambda: [
        "D64", "I", "D128", "I", "D256", "I", "A", "D512", "I",
        "BA512*4",
        "U512", "U256", "A", "U128", "U64",
    ])


@dataclass
class DiscriminatorConfig:
    """D(x, y, i): projection discriminator with a per-training-video embedding matrix W (paper Sec. 3.2)."""

    # Same down trunk as E plus one extra residual block at the lowest resolution.
    layers: list[str] = field(default_factory=lambda: [
        "D64", "D128", "D256", "A", "D512", "D512", "D512", "R512",
    ])
    # Rows of W (one per training video). The training script sets it from the dataset; the presets state the
    # paper's dataset size so that a checkpoint's shape can be predicted from its config alone.
    num_videos: int = 145569
    # Store W as a sparse-gradient embedding: only the rows of the videos in a batch receive gradient, so
    # VoxCeleb2's ~150k x 512 matrix is never updated or all-reduced densely.
    sparse_w: bool = True


# --------------------------------------------------------------------------------------------------------------
# HeadGAN (Doukas et al. 2021): one-shot reenactment from 3D face renders (NMFC) and audio. See model/headgan.py.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class HeadGANConfig:
    """Flow + rendering generator, multi-scale and mouth discriminators (SPEC section 2)."""

    # Base channels of the generator's encoders/decoders (paper: 32); doubled per level up to max_channels.
    ngf: int = 32
    max_channels: int = 256
    # Down-sampling levels of the flow and rendering encoders (256 -> 16 with 4); features are warped per level.
    levels: int = 4
    # SPADE residual blocks at the bottleneck of each decoder.
    bottleneck_blocks: int = 2
    # Base channels, strided layers and scales (1/1, 1/2, ...) of the multi-scale patch discriminators.
    ndf: int = 64
    d_layers: int = 4
    d_scales: int = 2
    # Mouth discriminator on a square crop centred on the mouth: side at 256x256 (scaled with image_size);
    # base channels; 0 channels switches it off.
    mouth_size: int = 64
    mouth_ndf: int = 32
    # Audio conditioning (AdaIN in the rendering network, projection in the mouth discriminator).
    # Per-frame features are log-mel windows (audio_mels bands x audio_window 10 ms hops centred on the frame),
    # written by dataset/audio.py.
    audio: bool = True
    audio_mels: int = 40
    audio_window: int = 16
    # Size of the audio embedding that drives AdaIN.
    audio_dim: int = 128


@dataclass
class ModelConfig:
    """Which model family to build and its networks' shapes."""

    # Model family: "talking_head" is Zakharov et al. 2019 (the embedder/generator/discriminator sections);
    # "headgan" is Doukas et al. 2021 (the headgan section).
    family: Literal["talking_head", "headgan"] = "talking_head"
    # Training and generated image resolution (square); every table must reduce it to a whole size.
    image_size: int = 256
    # Size of the embedding e_hat, of D's projection vectors W_i and w0.
    embed_dim: int = 512
    # Spectral normalisation on every convolution and linear layer of E, G and D (as in the paper).
    spectral_norm: bool = True
    # Channels of a drawn landmark image (RGB polylines on black).
    landmark_channels: int = 3
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    headgan: HeadGANConfig = field(default_factory=HeadGANConfig)


# --------------------------------------------------------------------------------------------------------------
# Losses (paper Sec. 3.3). A weight of 0 switches a term off and skips its computation.
# --------------------------------------------------------------------------------------------------------------

VGG_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@dataclass
class LossConfig:
    """Loss weights and the perceptual networks' weight files."""

    # Content loss: L1 between VGG19 activations of generated and real frame (paper v1: 1e-2; later 1.5e-1).
    vgg19_weight: float = 1e-2
    # Content loss: L1 between VGGFace activations (paper v1: 2e-3; later 2.5e-2).
    vggface_weight: float = 2e-3
    # Layers (Caffe names) compared by each content term: the paper's conv1_1 ... conv5_1, after ReLU.
    vgg19_layers: list[str] = field(default_factory=lambda: list(VGG_LAYERS))
    # Per-layer factors of the VGG19 term (empty: all 1). HeadGAN / pix2pixHD: [1/32, 1/16, 1/8, 1/4, 1].
    vgg19_layer_weights: list[float] = field(default_factory=list)
    vggface_layers: list[str] = field(default_factory=lambda: list(VGG_LAYERS))
    # Converted weight files (python vgg_model/convert_model.py ...); relative paths are taken from the cwd.
    vgg19_path: str = "weights/vgg19.pt"
    vggface_path: str = "weights/vggface.pt"
    # What to do when a perceptual weight file is missing: "error" stops with instructions of where to get and
    # how to convert the weights; "pixel_l1" drops that content term, warns loudly, and trains with the pixel
    # L1 term below (which must then be switched on).
    missing_weights: Literal["error", "pixel_l1"] = "error"
    # Pixel L1 between generated and real frame (images in [-1, 1]).
    pixel_l1_weight: float = 0.0
    # Generator adversarial term -D(x_hat).
    adversarial_weight: float = 1.0
    # Feature matching: L1 between D's block activations on real and generated frames (pix2pixHD).
    feature_matching_weight: float = 10.0
    # Embedding match L_MCH: L1 between e_hat and the video's W_i (paper v1: 80; later 10).
    embedding_match_weight: float = 80.0
    # HeadGAN only: L1 between the reference warped by the flow network and the real frame, and the mouth
    # discriminator's adversarial term (its feature matching is weighted by feature_matching_weight).
    warp_l1_weight: float = 0.0
    mouth_adversarial_weight: float = 1.0

    def __post_init__(self):
        if self.vgg19_layer_weights and len(self.vgg19_layer_weights) != len(self.vgg19_layers):
            raise ConfigError(f"loss.vgg19_layer_weights has {len(self.vgg19_layer_weights)} entries for "
                              f"{len(self.vgg19_layers)} loss.vgg19_layers")
        if self.missing_weights == "pixel_l1" and self.pixel_l1_weight <= 0:
            raise ConfigError("loss.missing_weights=pixel_l1 needs loss.pixel_l1_weight > 0, "
                              "or the fallback would train without any reconstruction term")


# --------------------------------------------------------------------------------------------------------------
# Optimisation and data
# --------------------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Adam for every network, with the two time-scale update rule (paper Sec. 4)."""

    # Learning rates of E, G (5e-5) and D (2e-4): D learns faster (TTUR, Heusel et al. 2017).
    lr_embedder: float = 5e-5
    lr_generator: float = 5e-5
    lr_discriminator: float = 2e-4
    # Adam's (beta1, beta2); beta1 = 0 as is usual for spectrally normalised GANs.
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])


@dataclass
class TrainConfig:
    """Meta-learning episodes."""

    # K: source frames per episode whose embeddings are averaged into e_hat (plus one target frame).
    k_shots: int = 8
    # Episodes (videos) per optimisation step.
    batch_size: int = 8
    # Seed for every random generator (Python, NumPy, torch) and for the data order.
    seed: int = 0
    # Optimisation steps of the whole run (one step = a D phase and a G phase on one batch).
    steps: int = 500000
    # Scalars go to TensorBoard and metrics.jsonl every log_every steps, image grids every image_every steps.
    log_every: int = 50
    image_every: int = 1000
    # Every val_every steps (and at the end), reconstruction L1 on val_episodes fixed episodes of the test split,
    # next to the baseline of copying the source frame whose landmarks are nearest the target's (0: off).
    val_every: int = 1000
    val_episodes: int = 16
    # A checkpoint every checkpoint_every steps (and at the end); the newest keep_checkpoints are kept.
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    # Autocast dtype for the networks' forward passes: "bf16" on Ampere/Hopper GPUs; "fp16" adds a grad scaler.
    amp: Literal["none", "bf16", "fp16"] = "none"
    # NHWC memory layout for the convolutions (faster with tensor cores).
    channels_last: bool = False
    # torch.compile the networks (first steps are slow while it compiles).
    compile: bool = False
    # Deterministic kernels (torch.use_deterministic_algorithms): exact resume and reproducible runs, slower.
    deterministic: bool = False
    # Exponential moving average of the generator side's weights (E and G; HeadGAN: G), updated after every step
    # with decay min(ema_decay, (step - 1) / (step + 9)) after 1-based step `step` (the first copies); 0: off (the
    # papers). When on, validation, finetune.py, reenact.py and evaluate.py use the averaged weights, steadier
    # than the last step's under the adversarial game (StyleGAN / imaginaire practice). D keeps its last weights.
    ema_decay: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class FinetuneConfig:
    """Few-shot fine-tuning on T frames of a new person (paper Sec. 3.4)."""

    # Passes over the T frames (the paper fine-tunes for about 40 epochs).
    epochs: int = 40
    # Frames per optimisation step (at most T).
    batch_size: int = 8
    # Learning rates of G with psi' (5e-5) and of D with w' (2e-4), as in meta-learning.
    lr_generator: float = 5e-5
    lr_discriminator: float = 2e-4


@dataclass
class DataConfig:
    """The preprocessed training dataset (written by dataset/voxceleb*/extract_landmark.py)."""

    # Dataset directory; the training scripts require it (no default path on purpose).
    root: str = ""
    # Probability of a horizontal flip of a whole episode (frames and landmarks, left/right indices swapped).
    flip_prob: float = 0.5
    # Line width, in pixels at 256x256, of the drawn landmark polylines (scaled with image_size).
    landmark_thickness: int = 2
    # DataLoader worker processes.
    num_workers: int = 4
    # Training skips a sample that cannot be read (truncated JPEG bytes, non-finite points), logs its video and
    # counts it (data/skipped in metrics.jsonl); past this share of bad samples among those read the run stops
    # with an error naming the store (python -m dataset.store verify STORE lists the damaged videos).
    max_skipped_fraction: float = 0.01


@dataclass
class Config:
    """The whole configuration of a run; frozen into every run directory."""

    # Name of the preset, for logs and run directories.
    name: str = "vox2_256"
    # Sections, each documented in its dataclass above.
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: DataConfig = field(default_factory=DataConfig)


# --------------------------------------------------------------------------------------------------------------
# Strict conversion between plain data and the dataclasses
# --------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns it converted (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-4" as a string; accept any spelling float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from ``data``; missing keys keep their defaults, unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (lists stay lists), suitable for YAML and checkpoints."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------------------------
# Loading presets and overrides
# --------------------------------------------------------------------------------------------------------------


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_preset(path_or_name: str | Path) -> Path:
    """Accepts a path to a YAML file or the bare name of a preset in configs/ (``demo``, ``vox1``...)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{path_or_name}.yaml"
    if candidate.is_file():
        return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path_or_name} (presets in configs/: {presets})")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Reads a preset, following its optional ``base:`` key (a path relative to the file) first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config 'base' cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return _deep_merge(_read_yaml(path.parent / base, (*seen, path)), data)


def parse_override(text: str) -> dict:
    """``"train.batch_size=4"`` -> ``{"train": {"batch_size": 4}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub_key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset YAML (with its bases) <- dotted overrides, validated into a ``Config``."""
    data: dict = {}
    if path_or_name is not None:
        data = _read_yaml(resolve_preset(path_or_name))
    for text in overrides or []:
        data = _deep_merge(data, parse_override(text))
    return from_dict(Config, data)


def config_from_dict(data: dict) -> Config:
    """Rebuilds a ``Config`` saved with ``to_dict`` (e.g. from a checkpoint), with the same strict checks."""
    return from_dict(Config, data)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with dotted overrides applied (e.g. a checkpoint's config adjusted from the command line)."""
    data = to_dict(cfg)
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (frozen into run directories)."""
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Adds ``--config`` and repeatable ``--set key=value`` to a command-line parser."""
    parser.add_argument("--config", default=default, required=default is None,
                        help="preset name in configs/ (e.g. demo, vox1, vox2) or path to a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field with a dotted key, e.g. --set train.batch_size=4 "
                             "(repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Loads the config named by ``add_config_arguments``' options; ConfigError on any bad key or value."""
    return load_config(args.config, args.overrides)
