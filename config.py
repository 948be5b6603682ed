"""Typed configuration: YAML presets checked into dataclasses, with dotted command-line overrides.

Every field is documented where it is defined. Defaults are the paper's VoxCeleb2 256x256 set-up
(Zakharov et al. 2019, Sec. 3-4; see ../shared/SPEC.md); presets in ``configs/`` override what differs.

    cfg = load_config("configs/demo.yaml", ["train.batch_size=4", "model.image_size=128"])

Unknown keys, values of the wrong type and values out of range (a cadence of 0, a NaN learning rate, an
image_size the layer tables cannot halve) raise ``ConfigError`` naming the dotted key, so a typo in a preset or
an override never passes silently. Each dataclass checks its own fields in ``__post_init__``, so the checks run
on every construction: presets, ``--set`` overrides, checkpoints' configs and ``dataclasses.replace``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
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
# Range checks, called from the dataclasses' __post_init__. `not (value > 0)` rather than `value <= 0`, so a
# NaN (which compares false with everything) is refused too.
# --------------------------------------------------------------------------------------------------------------


def _refuse(key: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _positive(section: str, obj: Any, *names: str) -> None:
    """Each named field is > 0; floats must also be finite (an infinite learning rate is no setting)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, float):
            if not (math.isfinite(value) and value > 0):
                _refuse(f"{section}.{name}", "finite and > 0", value)
        elif not value > 0:
            _refuse(f"{section}.{name}", "> 0", value)


def _non_negative(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, float):
            if not (math.isfinite(value) and value >= 0):
                _refuse(f"{section}.{name}", "finite and >= 0", value)
        elif not value >= 0:
            _refuse(f"{section}.{name}", ">= 0", value)


def _in_unit_interval(key: str, value: float, include_one: bool) -> None:
    if not (0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0):
        _refuse(key, "in [0, 1]" if include_one else "in [0, 1)", value)


# The layer-table grammar (model/blocks.py builds the networks from it): NAME, NAME<width> and either followed by
# *<repeat>. It lives here so that config.py checks tables without importing torch.
_TOKEN = re.compile(r"^(BA|D|U|B|R|I|A)(\d+)?(?:\*(\d+))?$")
_SIZED = {"D", "U", "B", "BA", "R"}
# Spatial factor of each block kind in build_layers (D halves, U doubles, the rest keep the size).
_SCALE = {"D": 0.5, "U": 2}


def parse_layer_table(tokens: list[str], key: str) -> list[tuple[int, str, int | None]]:
    """Expands a layer table into (table index, kind, width) per block; errors name ``key[i]``."""
    blocks = []
    for i, token in enumerate(tokens):
        match = _TOKEN.match(token.strip())
        if not match:
            raise ConfigError(f"{key}[{i}]: cannot parse layer token {token!r}; expected one of "
                              "D<c>, U<c>, B<c>, BA<c>, R<c>, I, A, optionally followed by *<repeat>")
        kind, width, repeat = match.group(1), match.group(2), match.group(3)
        if kind in _SIZED and width is None:
            raise ConfigError(f"{key}[{i}]: {kind} needs an output width, e.g. {kind}512")
        if kind not in _SIZED and width is not None:
            raise ConfigError(f"{key}[{i}]: {kind} takes no width (it keeps its input's), got {token!r}")
        if width is not None and int(width) < 1:
            raise ConfigError(f"{key}[{i}]: width must be at least 1 in {token!r}")
        count = int(repeat) if repeat else 1
        if count < 1:
            raise ConfigError(f"{key}[{i}]: repeat count must be at least 1 in {token!r}")
        blocks.extend([(i, kind, int(width) if width else None)] * count)
    return blocks


def _follow_table(tokens: list[str], key: str, channels: int, image_size: int) -> tuple[int, int]:
    """Walks a table the way build_layers assembles it; returns (channels, size) after its last block.

    Refuses what build_layers would: a D block on an odd size, and self-attention on fewer than 8 channels
    (its C/8 query width) or a 1x1 map (its 2x-pooled keys).
    """
    blocks, size = parse_layer_table(tokens, key), image_size
    downs = sum(kind == "D" for _, kind, _ in blocks)
    for i, kind, width in blocks:
        if kind == "D" and size % 2:
            raise ConfigError(f"{key}[{i}] ({tokens[i]}) cannot halve an odd size {size}: model.image_size="
                              f"{image_size} must be divisible by 2**{downs} = {2 ** downs}, one halving per D "
                              "block of this table")
        if kind == "A" and channels < 8:
            raise ConfigError(f"{key}[{i}]: self-attention needs at least 8 channels, got {channels}")
        if kind == "A" and size < 2:
            raise ConfigError(f"{key}[{i}]: self-attention needs a spatial size of at least 2, got {size} "
                              f"at model.image_size={image_size}")
        channels = width if width is not None else channels
        size = int(size * _SCALE.get(kind, 1))
    return channels, size


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

    def __post_init__(self):
        parse_layer_table(self.layers, "model.embedder.layers")


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

    def __post_init__(self):
        parse_layer_table(self.layers, "model.generator.layers")


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

    def __post_init__(self):
        parse_layer_table(self.layers, "model.discriminator.layers")
        _positive("model.discriminator", self, "num_videos")


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

    def __post_init__(self):
        # Worded as model/headgan.py's check_headgan_config, which the networks still run.
        for name in ("ngf", "max_channels", "levels", "ndf", "d_layers", "d_scales", "mouth_size", "audio_mels",
                     "audio_window", "audio_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.headgan.{name} must be at least 1, got {getattr(self, name)}")
        _non_negative("model.headgan", self, "bottleneck_blocks", "mouth_ndf")
        if self.max_channels < self.ngf:
            raise ConfigError(f"model.headgan.max_channels ({self.max_channels}) is below ngf ({self.ngf})")


# The mouth crop's smallest side in pixels (model/headgan.py MIN_MOUTH_SIZE): its 3 stride-2 layers end at 2x2.
HEADGAN_MIN_MOUTH_SIZE = 16


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

    def __post_init__(self):
        _positive("model", self, "image_size", "embed_dim", "landmark_channels")
        # Only the family that is built must fit image_size: a HeadGAN preset keeps the talking-head default
        # tables, which a 96x96 HeadGAN run never builds.
        if self.family == "talking_head":
            self._check_talking_head_tables()
        else:
            self._check_headgan_sizes()

    def _check_talking_head_tables(self):
        s, frame_and_landmarks = self.image_size, 3 + self.landmark_channels
        for key, tokens in (("model.embedder.layers", self.embedder.layers),
                            ("model.discriminator.layers", self.discriminator.layers)):
            channels, _ = _follow_table(tokens, key, frame_and_landmarks, s)
            if channels != self.embed_dim:
                why = "the last block's width is the embedding size" if "embedder" in key else "v and W_i must match"
                raise ConfigError(f"{key} ends with {channels} channels but model.embed_dim is {self.embed_dim}: "
                                  f"{why}")
        _, size = _follow_table(self.generator.layers, "model.generator.layers", self.landmark_channels, s)
        if size != s:
            raise ConfigError(f"model.generator.layers maps {s}x{s} to {size}x{size}: a generator needs as many "
                              "U blocks as D blocks")

    def _check_headgan_sizes(self):
        """What model/headgan.py's networks need of image_size (its check_headgan_config, same wording)."""
        h, s = self.headgan, self.image_size
        if s % 2 ** h.levels:
            raise ConfigError(f"model.image_size={s} is not divisible by 2**model.headgan.levels = {2 ** h.levels}: "
                              "every encoder level halves the size exactly; pick another image_size or fewer levels")
        # Scale k of the multi-scale D average-pools exactly k times; its 4x4 stride-2 layers then floor-halve,
        # and instance norm on the coarsest patch grid needs more than one position.
        if s % 2 ** (h.d_scales - 1) or s // 2 ** (h.d_scales - 1 + h.d_layers) < 2:
            raise ConfigError(f"model.image_size={s} is too small for model.headgan.d_scales={h.d_scales} x "
                              f"d_layers={h.d_layers}: the coarsest scale's patch grid must be at least 2x2 "
                              "(instance norm needs more than one position); lower d_layers or d_scales")
        crop = max(HEADGAN_MIN_MOUTH_SIZE, round(h.mouth_size * s / 256))
        if h.mouth_ndf and crop > s:
            raise ConfigError(f"the mouth crop ({crop} px from model.headgan.mouth_size={h.mouth_size} at 256) "
                              f"does not fit a {s}x{s} image; lower mouth_size or set mouth_ndf 0")


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
        # Every *_weight field is a loss weight; a new term is checked without being listed here.
        _non_negative("loss", self, *(f.name for f in dataclasses.fields(self) if f.name.endswith("_weight")))
        for i, weight in enumerate(self.vgg19_layer_weights):
            if not (math.isfinite(weight) and weight >= 0):
                _refuse(f"loss.vgg19_layer_weights[{i}]", "finite and >= 0", weight)
        # Layer names are checked against each network's layout where it is built (model/loss.py).
        for arch in ("vgg19", "vggface"):
            if getattr(self, f"{arch}_weight") > 0 and not getattr(self, f"{arch}_layers"):
                raise ConfigError(f"loss.{arch}_layers is empty but loss.{arch}_weight is "
                                  f"{getattr(self, f'{arch}_weight')}; name layers or set the weight to 0")
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

    def __post_init__(self):
        _positive("optim", self, "lr_embedder", "lr_generator", "lr_discriminator")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be exactly 2 values (beta1, beta2), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            _in_unit_interval(f"optim.betas[{i}]", beta, include_one=False)


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
    # Mixed precision of the networks' forward passes: "bf16" autocast (Ampere/Hopper and newer); "fp16" autocast
    # with a gradient scaler (older CUDA GPUs, whose bf16 is slow or missing); "none" fp32. "auto" picks bf16 on
    # GPUs that support it, fp16 on older CUDA GPUs and none on CPU; the run's frozen config.yaml records the
    # resolved choice, so a run directory says which precision trained it.
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    # TF32 tensor-core matmuls and cuDNN convolutions for the fp32 parts of a step on Ampere and newer GPUs
    # (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32): several times faster fp32 with a
    # 10-bit mantissa, which GAN training tolerates. No effect on CPU or older GPUs; false for exact fp32.
    tf32: bool = True
    # NHWC memory layout for the convolutions (faster with tensor cores).
    channels_last: bool = False
    # torch.compile the networks (first steps are slow while it compiles).
    compile: bool = False
    # torch.compile's backend: "inductor" (generated kernels, the fast path); "aot_eager" traces and guards the
    # same graphs without generating code (debugging, and the tests' check that nothing recompiles).
    compile_backend: str = "inductor"
    # Deterministic kernels (torch.use_deterministic_algorithms): exact resume and reproducible runs, slower.
    deterministic: bool = False
    # Exponential moving average of the generator side's weights (E and G; HeadGAN: G), updated after every step
    # with decay min(ema_decay, (step - 1) / (step + 9)) after 1-based step `step` (the first copies); 0: off (the
    # papers). When on, validation, finetune.py, reenact.py and evaluate.py use the averaged weights, steadier
    # than the last step's under the adversarial game (StyleGAN / imaginaire practice). D keeps its last weights.
    ema_decay: float = 0.0

    def __post_init__(self):
        _positive("train", self, "k_shots", "batch_size", "log_every", "image_every", "checkpoint_every",
                  "keep_checkpoints")
        _non_negative("train", self, "seed", "steps", "val_every")
        if self.val_every > 0:
            _positive("train", self, "val_episodes")
        _in_unit_interval("train.ema_decay", self.ema_decay, include_one=False)


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

    def __post_init__(self):
        _positive("finetune", self, "epochs", "batch_size", "lr_generator", "lr_discriminator")


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

    def __post_init__(self):
        _in_unit_interval("data.flip_prob", self.flip_prob, include_one=True)
        _in_unit_interval("data.max_skipped_fraction", self.max_skipped_fraction, include_one=True)
        _positive("data", self, "landmark_thickness")
        _non_negative("data", self, "num_workers")


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
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        # YAML's .nan and a --set ...=nan both arrive here; no field means anything by NaN.
        if math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got nan")
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
# Resuming: which differences between a run's frozen config and the requested one are harmless
# --------------------------------------------------------------------------------------------------------------

# Dotted keys (or whole sections) that a resumed run may change. Everything else shapes the networks, the
# optimiser state, the data stream or the losses, so a difference there would continue a different experiment
# from this one's checkpoint. Left out on purpose: train.amp and train.tf32 (the precision the numbers are computed
# in; fp16 also keeps a gradient scaler in the checkpoint), train.seed and train.batch_size (the rest of the
# data order), model.discriminator.num_videos (W's shape), loss.*_path (no fingerprint says a moved file holds
# the same weights). Compare the requested config as the run would freeze it: "auto" amp resolved, num_videos
# taken from the dataset.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    # How long the run goes and how often it logs, validates and saves: none of it is training state.
    "train.steps", "train.log_every", "train.image_every", "train.val_every", "train.checkpoint_every",
    "train.keep_checkpoints",
    # Only the validation curve changes (its points before and after are then on different episode sets).
    "train.val_episodes",
    # Samples are drawn from (seed, epoch, index) whatever the number of workers (dataset/store.py).
    "data.num_workers",
    # A moved store; the training loop checks the store's fingerprint separately.
    "data.root",
    # When to stop on damaged samples, not what is trained on.
    "data.max_skipped_fraction",
    # How the same computation is executed: compiled, in NHWC layout, with deterministic kernels. They change
    # speed and the order of float roundings, not the model, the optimiser state or the data.
    "train.compile", "train.compile_backend", "train.channels_last", "train.deterministic",
    # A label for logs.
    "name",
    # Read by finetune.py only, never by meta-training.
    "finetune",
)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}``; lists are values, not sections."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: dict, new: dict, allowed: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """One line per dotted key whose value differs between ``old`` and ``new`` (nested dicts as from
    ``to_dict``) and that ``allowed`` does not cover, e.g. ``"optim.lr_generator: run 5e-05, requested 0.5"``.

    An entry of ``allowed`` covers its key and, as a prefix, every key below it ("finetune" covers
    "finetune.epochs"). A key present on one side only differs. To compare with a frozen config written by an
    older version, rebuild it first (``to_dict(config_from_dict(old))``) so keys added since take their defaults.
    """
    def shown(flat: dict, key: str) -> str:
        if key not in flat:
            return "(absent)"
        return repr(flat[key]) if isinstance(flat[key], str) else str(flat[key])

    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in [*before, *(k for k in after if k not in before)]:
        if any(key == entry or key.startswith(f"{entry}.") for entry in allowed):
            continue
        if key not in before or key not in after or before[key] != after[key]:
            lines.append(f"{key}: run {shown(before, key)}, requested {shown(after, key)}")
    return lines


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
    from utils.atomic import atomic_file  # a run's frozen config is never half-written

    with atomic_file(path, "w") as f:
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
