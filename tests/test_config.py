"""Config loading: presets, strict keys and types, dotted overrides, frozen round trip."""
import subprocess
import sys

import pytest
import yaml

import config
from config import ConfigError, load_config

ROOT = config.CONFIG_DIR.parent


@pytest.mark.parametrize("preset", ["vox1", "vox2", "demo"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.model.family == "talking_head"
    assert cfg.optim.betas == [0.0, 0.999]


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
                               "model.embedder.layers=[D16, D32]", "name=x"])
    assert cfg.train.batch_size == 3
    assert cfg.optim.lr_generator == pytest.approx(1e-4) and isinstance(cfg.optim.lr_generator, float)
    assert cfg.model.spectral_norm is False
    assert cfg.model.embedder.layers == ["D16", "D32"]
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
