"""Config loading: presets, strict keys, types and ranges, dotted overrides, frozen round trip, resume checks."""
import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

import config
from config import ConfigError, load_config

ROOT = config.CONFIG_DIR.parent


PRESETS = sorted(p.stem for p in config.CONFIG_DIR.glob("*.yaml"))


def test_every_preset_is_tested():
    assert PRESETS == ["demo", "headgan", "headgan_demo", "vox1", "vox2"]


@pytest.mark.parametrize("preset", ["vox1", "vox2", "demo"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.model.family == "talking_head"
    assert cfg.optim.betas == [0.0, 0.999]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_choose_precision_automatically(preset):
    cfg = load_config(preset)
    assert cfg.train.amp == "auto" and cfg.train.tf32 is True


def test_paper_presets_state_paper_facts():
    vox1, vox2 = load_config("vox1"), load_config("vox2")
    assert (vox1.model.image_size, vox2.model.image_size) == (256, 256)
    assert vox1.model.discriminator.num_videos == 21819
    assert vox2.model.discriminator.num_videos == 145569
    assert vox1.model.generator.layers == vox2.model.generator.layers  # vox1 inherits from vox2
    assert (vox2.optim.lr_generator, vox2.optim.lr_discriminator) == (5e-5, 2e-4)
    assert vox2.train.k_shots == 8
    assert (vox2.loss.feature_matching_weight, vox2.loss.embedding_match_weight) == (10.0, 80.0)


def test_override_sets_nested_values_with_their_types():
    cfg = load_config("demo", ["train.batch_size=3", "optim.lr_generator=1e-4", "model.spectral_norm=false",
                               "model.embedder.layers=[D16, D128]", "name=x"])
    assert cfg.train.batch_size == 3
    assert cfg.optim.lr_generator == pytest.approx(1e-4) and isinstance(cfg.optim.lr_generator, float)
    assert cfg.model.spectral_norm is False
    assert cfg.model.embedder.layers == ["D16", "D128"]
    assert cfg.name == "x"


def test_int_widens_to_float():
    assert load_config("demo", ["loss.vgg19_weight=1"]).loss.vgg19_weight == 1.0


@pytest.mark.parametrize("override, message", [
    ("train.batchsize=3", "unknown config key 'train.batchsize'"),
    ("model.discriminator.nope=1", "unknown config key 'model.discriminator.nope'"),
    ("train.batch_size=three", "train.batch_size: expected int"),
    ("train.batch_size=2.5", "train.batch_size: expected int"),
    ("train.batch_size=true", "train.batch_size: expected int"),
    ("model.spectral_norm=1", "model.spectral_norm: expected bool"),
    ("optim.betas=[0.5, x]", "optim.betas[1]: expected float"),
    ("loss.missing_weights=ignore", "loss.missing_weights: expected one of"),
    ("model=3", "model: expected a mapping"),
    ("train.batch_size", "must look like key.sub_key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("demo", [override])


# One failing value per class of range check; each message names the dotted key.
@pytest.mark.parametrize("override, message", [
    # cadences, run length, retention
    ("train.log_every=0", "train.log_every must be > 0, got 0"),
    ("train.image_every=-5", "train.image_every must be > 0, got -5"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be > 0"),
    ("train.val_every=-1", "train.val_every must be >= 0, got -1"),
    ("train.steps=-1", "train.steps must be >= 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be > 0"),
    ("train.val_episodes=0", "train.val_episodes must be > 0"),
    # counts
    ("train.batch_size=0", "train.batch_size must be > 0"),
    ("finetune.batch_size=0", "finetune.batch_size must be > 0"),
    ("train.k_shots=0", "train.k_shots must be > 0"),
    ("finetune.epochs=0", "finetune.epochs must be > 0"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.landmark_thickness=0", "data.landmark_thickness must be > 0"),
    # learning rates: positive and finite, NaN refused whichever way YAML spells it
    ("optim.lr_generator=0", "optim.lr_generator must be finite and > 0, got 0.0"),
    ("optim.lr_embedder=-1e-4", "optim.lr_embedder must be finite and > 0"),
    ("optim.lr_discriminator=.inf", "optim.lr_discriminator must be finite and > 0, got inf"),
    ("finetune.lr_generator=inf", "finetune.lr_generator must be finite and > 0, got inf"),
    ("finetune.lr_discriminator=0", "finetune.lr_discriminator must be finite and > 0"),
    ("optim.lr_generator=nan", "optim.lr_generator: expected a number, got nan"),
    ("optim.lr_generator=.nan", "optim.lr_generator: expected a number, got nan"),
    # Adam betas
    ("optim.betas=[0.5]", "optim.betas must be exactly 2 values"),
    ("optim.betas=[0.5, 0.9, 0.99]", "optim.betas must be exactly 2 values"),
    ("optim.betas=[0.5, 1.0]", "optim.betas[1] must be in [0, 1), got 1.0"),
    ("optim.betas=[-0.1, 0.999]", "optim.betas[0] must be in [0, 1)"),
    # probabilities and decays
    ("data.flip_prob=1.5", "data.flip_prob must be in [0, 1], got 1.5"),
    ("data.flip_prob=-0.1", "data.flip_prob must be in [0, 1]"),
    ("data.max_skipped_fraction=2", "data.max_skipped_fraction must be in [0, 1]"),
    ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1), got 1.0"),
    ("train.ema_decay=nan", "train.ema_decay: expected a number, got nan"),
    # loss weights
    ("loss.vgg19_weight=-1", "loss.vgg19_weight must be finite and >= 0, got -1.0"),
    ("loss.warp_l1_weight=inf", "loss.warp_l1_weight must be finite and >= 0, got inf"),
    ("loss.embedding_match_weight=-0.5", "loss.embedding_match_weight must be finite and >= 0"),
    ("loss.vgg19_layer_weights=[1, 1, 1, -1, 1]", "loss.vgg19_layer_weights[3] must be finite and >= 0"),
    ("loss.vgg19_layers=[]", "loss.vgg19_layers is empty but loss.vgg19_weight is 0.01"),
    # sizes
    ("model.image_size=0", "model.image_size must be > 0"),
    ("model.embed_dim=0", "model.embed_dim must be > 0"),
    ("model.landmark_channels=0", "model.landmark_channels must be > 0"),
    ("model.discriminator.num_videos=0", "model.discriminator.num_videos must be > 0"),
    # layer tables against image_size and embed_dim
    ("model.image_size=36", "model.embedder.layers[3] (D128) cannot halve an odd size 9: model.image_size=36 "
                            "must be divisible by 2**4 = 16"),
    ("model.generator.layers=[D32*7, U32*7]", "model.generator.layers[0] (D32*7) cannot halve an odd size 1: "
                                              "model.image_size=64 must be divisible by 2**7 = 128"),
    ("model.discriminator.layers=[D32, D64, A, D128*5, R128]",
     "model.discriminator.layers[3] (D128*5) cannot halve an odd size 1"),
    ("model.generator.layers=[D32, U32, D32]", "model.generator.layers maps 64x64 to 32x32"),
    ("model.embedder.layers=[D32, D64]", "model.embedder.layers ends with 64 channels but model.embed_dim is 128"),
    ("model.discriminator.layers=[D32, R64]", "model.discriminator.layers ends with 64 channels"),
    ("model.generator.layers=[A, D32, U32]", "model.generator.layers[0]: self-attention needs at least 8 channels"),
    ("model.embedder.layers=[D32, D64, D128, D128, D128, D128, A]",
     "model.embedder.layers[6]: self-attention needs a spatial size of at least 2, got 1"),
    # tokens
    ("model.embedder.layers=[D32, Q3]", "model.embedder.layers[1]: cannot parse layer token 'Q3'"),
    ("model.generator.layers=[D]", "model.generator.layers[0]: D needs an output width"),
    ("model.discriminator.layers=[A64]", "model.discriminator.layers[0]: A takes no width"),
    ("model.embedder.layers=[D0]", "model.embedder.layers[0]: width must be at least 1"),
    ("model.generator.layers=[BA64*0]", "model.generator.layers[0]: repeat count must be at least 1"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("demo", [override])


@pytest.mark.parametrize("override, message", [
    ("model.headgan.ngf=0", "model.headgan.ngf must be at least 1, got 0"),
    ("model.headgan.d_scales=0", "model.headgan.d_scales must be at least 1"),
    ("model.headgan.levels=-1", "model.headgan.levels must be at least 1"),
    ("model.headgan.audio_dim=0", "model.headgan.audio_dim must be at least 1"),
    ("model.headgan.bottleneck_blocks=-1", "model.headgan.bottleneck_blocks must be >= 0"),
    ("model.headgan.mouth_ndf=-1", "model.headgan.mouth_ndf must be >= 0"),
    ("model.headgan.max_channels=8", "model.headgan.max_channels (8) is below ngf (16)"),
    ("model.image_size=36", "model.image_size=36 is not divisible by 2**model.headgan.levels = 8"),
    ("model.headgan.d_layers=5", "model.image_size=64 is too small for model.headgan.d_scales=2 x d_layers=5"),
    ("model.headgan.d_scales=7", "model.image_size=64 is too small for model.headgan.d_scales=7"),
    ("model.headgan.mouth_size=512", "the mouth crop (128 px from model.headgan.mouth_size=512 at 256) does not fit"),
])
def test_headgan_sizes_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("headgan_demo", [override])


def test_boundary_values_are_accepted():
    cfg = load_config("demo", ["train.val_every=0", "train.val_episodes=0", "train.steps=0", "data.flip_prob=1",
                               "data.num_workers=0", "train.seed=0", "optim.betas=[0, 0]", "loss.vgg19_weight=0",
                               "loss.vgg19_layers=[]", "model.image_size=48"])
    assert (cfg.train.val_every, cfg.train.steps, cfg.data.flip_prob) == (0, 0, 1.0)
    # A HeadGAN set-up checks only its own networks: the unused talking-head tables cannot halve 96 six times.
    assert load_config("headgan_demo", ["model.image_size=96"]).model.image_size == 96
    assert load_config("headgan_demo", ["model.headgan.mouth_ndf=0", "model.headgan.mouth_size=512"])


def test_checks_run_on_overrides_of_a_loaded_config_and_on_construction():
    cfg = load_config("demo")
    with pytest.raises(ConfigError, match="train.checkpoint_every must be > 0"):
        config.apply_overrides(cfg, ["train.checkpoint_every=0"])
    with pytest.raises(ConfigError, match="train.keep_checkpoints must be > 0"):
        dataclasses.replace(cfg.train, keep_checkpoints=0)
    saved = config.to_dict(cfg)
    saved["optim"]["lr_generator"] = float("nan")
    with pytest.raises(ConfigError, match="optim.lr_generator: expected a number, got nan"):
        config.config_from_dict(saved)


@pytest.mark.parametrize("value", ["auto", "none", "bf16", "fp16"])
def test_amp_choices(value):
    assert load_config("vox2", [f"train.amp={value}", "train.tf32=false"]).train.amp == value


def test_amp_refuses_other_spellings():
    with pytest.raises(ConfigError, match="train.amp: expected one of 'auto' | 'none' | 'bf16' | 'fp16'"):
        load_config("vox2", ["train.amp=fp32"])


def test_config_differences_lists_what_a_resume_may_not_change():
    run = config.to_dict(load_config("demo"))
    requested = config.to_dict(load_config("demo", [
        "optim.lr_generator=0.5", "optim.betas=[0.5, 0.999]", "train.amp=bf16",
        # allowed: run length, cadences, workers, the store's place, compile, fine-tuning
        "train.steps=5000", "train.log_every=7", "train.val_every=0", "train.checkpoint_every=9",
        "data.num_workers=0", "data.root=/moved", "train.compile=true", "finetune.epochs=3", "name=again",
    ]))
    assert config.config_differences(run, requested) == [
        "optim.lr_generator: run 0.0002, requested 0.5",
        "optim.betas: run [0.0, 0.999], requested [0.5, 0.999]",
        "train.amp: run 'auto', requested 'bf16'",
    ]
    assert config.config_differences(run, run) == []


def test_config_differences_keys_on_one_side_and_custom_allow_list():
    old = {"train": {"steps": 1, "amp": "bf16"}, "finetune": {"epochs": 4}}
    new = {"train": {"steps": 2, "tf32": True}, "finetune": {"epochs": 5}}
    assert config.config_differences(old, new) == [
        "train.amp: run 'bf16', requested (absent)",
        "train.tf32: run (absent), requested True",
    ]
    # Nothing allowed: every difference shows; a section prefix allows the whole section, not a name prefix.
    assert config.config_differences(old, new, allowed=()) == [
        "train.steps: run 1, requested 2", "train.amp: run 'bf16', requested (absent)",
        "finetune.epochs: run 4, requested 5", "train.tf32: run (absent), requested True",
    ]
    assert config.config_differences(old, new, allowed=("train", "fine")) == ["finetune.epochs: run 4, requested 5"]


def test_allow_list_names_real_keys():
    keys = set(config._flatten(config.to_dict(config.Config())))
    for entry in config.RESUME_MAY_CHANGE:
        assert any(k == entry or k.startswith(f"{entry}.") for k in keys), entry


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  embedder:\n    layer: [D64]\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.embedder.layer'"):
        load_config(path)


def test_base_chain_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  batch_size: 2\n  k_shots: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  k_shots: 5\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.batch_size, cfg.train.k_shots) == (2, 5)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "b.yaml")


def test_missing_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="demo"):
        load_config("no_such_preset")


def test_pixel_fallback_needs_a_pixel_term():
    with pytest.raises(ConfigError, match="pixel_l1_weight"):
        load_config("demo", ["loss.pixel_l1_weight=0"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("vox1", ["train.batch_size=5"])
    config.save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config.config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


def test_cli_reports_bad_key_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "model.summary", "--config", "demo", "--set", "train.k=1"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown config key 'train.k'" in result.stderr
