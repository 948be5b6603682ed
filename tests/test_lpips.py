"""LPIPS (Zhang et al. 2018) with random weights in the published file layouts: metric properties, input
scaling, file errors and the evaluate.py options."""
from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from evaluation.lpips import (CHANNELS, LPIPS, SCALE, SHIFT, backbone_keys, linear_keys, load_lpips,
                              lpips_preprocess, packaged_linear_heads)
from utils.safe_load import UnsafeOrDamagedFile
from vgg_model.vgg import TORCHVISION_IMAGENET_PREPROCESS, VGGFeatures, conv_shapes


def _torchvision_vgg16_state(seed: int = 0) -> dict:
    """A VGG16 state dict keyed like torchvision's (features.N.*, plus classifier keys LPIPS must ignore)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = conv_shapes("vggface")
    state = {}
    for key, caffe_key in backbone_keys().items():
        name, param = caffe_key.split(".")
        weight_shape, bias_shape = shapes[name]
        if param == "weight":
            # He initialisation keeps activations from vanishing or exploding through 13 random layers.
            fan_in = weight_shape[1] * weight_shape[2] * weight_shape[3]
            state[key] = torch.randn(weight_shape, generator=generator) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros(bias_shape)
    state["classifier.6.weight"] = torch.zeros(10, 4096)
    return state


def _linear_state(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.rand((1, channels, 1, 1), generator=generator) for key, channels in zip(linear_keys(), CHANNELS)}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips_weights")
    backbone, linear = folder / "vgg16-397923af.pth", folder / "vgg.pth"
    torch.save(_torchvision_vgg16_state(), backbone)
    torch.save(_linear_state(), linear)
    return backbone, linear


@pytest.fixture(scope="module")
def model(weight_files):
    return load_lpips(*weight_files)


@pytest.fixture(scope="module")
def astronaut():
    """skimage's astronaut photo as a (1, 3, 128, 128) batch in [-1, 1]."""
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(image, size=(128, 128), mode="area")


def test_identical_images_have_zero_distance_and_distance_is_symmetric(model, astronaut):
    noisy = (astronaut + 0.2 * torch.randn(astronaut.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    pair_a, pair_b = torch.cat([astronaut, noisy]), torch.cat([noisy, astronaut.flip(3)])
    with torch.no_grad():
        assert torch.equal(model(pair_a, pair_a), torch.zeros(2))
        forward, backward = model(pair_a, pair_b), model(pair_b, pair_a)
    assert forward.shape == (2,) and (forward > 0).all()
    torch.testing.assert_close(forward, backward, rtol=1e-6, atol=0)


def test_more_noise_gives_a_larger_distance(model, astronaut):
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(astronaut.shape, generator=generator)
    mild, strong = (astronaut + 0.1 * noise).clamp(-1, 1), (astronaut + 0.3 * noise).clamp(-1, 1)
    with torch.no_grad():
        distances = model(torch.cat([mild, strong]), astronaut.expand(2, -1, -1, -1))
    assert 0 < distances[0] < distances[1]


def test_preprocess_reproduces_the_published_input_scaling():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    shift, scale = torch.tensor(SHIFT).view(1, 3, 1, 1), torch.tensor(SCALE).view(1, 3, 1, 1)
    trunk = VGGFeatures("vggface", lpips_preprocess(), last_layer="relu1_2")
    torch.testing.assert_close(trunk.preprocess(x), (x - shift) / scale, rtol=1e-6, atol=1e-6)
    # The LPIPS constants are torchvision's ImageNet normalisation carried over to [-1, 1] inputs.
    config = lpips_preprocess()
    assert config["channel_order"] == "RGB" and config["scale"] == 1.0
    np.testing.assert_allclose(config["mean"], TORCHVISION_IMAGENET_PREPROCESS["mean"], atol=1e-12)
    np.testing.assert_allclose(config["std"], TORCHVISION_IMAGENET_PREPROCESS["std"], atol=1e-12)


def test_model_uses_the_loaded_weights_and_is_frozen(model, weight_files):
    backbone = torch.load(weight_files[0], weights_only=True)
    linear = torch.load(weight_files[1], weights_only=True)
    assert torch.equal(model.trunk.conv5_3.weight, backbone["features.28.weight"])
    assert torch.equal(model.trunk.conv3_1.weight, backbone["features.10.weight"])
    assert torch.equal(model.heads[4].weight, linear["lin4.model.1.weight"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert isinstance(model, LPIPS)


def test_missing_files_say_where_they_come_from(weight_files, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_lpips(tmp_path / "none.pth", tmp_path / "none_vgg.pth")
    message = str(info.value)
    for text in ("vgg16-397923af.pth", "lpips/weights/v0.1/vgg.pth", "--lpips-backbone", "--lpips-linear"):
        assert text in message
    with pytest.raises(FileNotFoundError, match="linear file"):
        load_lpips(weight_files[0], tmp_path / "none_vgg.pth")


def test_wrong_files_name_the_keys(weight_files, tmp_path):
    backbone, linear = weight_files
    vgg19_like = _torchvision_vgg16_state()
    vgg19_like["features.30.weight"] = vgg19_like.pop("features.28.weight")
    torch.save(vgg19_like, tmp_path / "vgg19.pth")
    with pytest.raises(ValueError, match=r"features\.28\.weight.*features\.30\.weight"):
        load_lpips(tmp_path / "vgg19.pth", linear)

    heads = _linear_state()
    heads["lin5.model.1.weight"] = heads.pop("lin4.model.1.weight")
    torch.save(heads, tmp_path / "squeeze.pth")
    with pytest.raises(ValueError, match=r"lin4\.model\.1\.weight.*lin5\.model\.1\.weight"):
        load_lpips(backbone, tmp_path / "squeeze.pth")

    heads = _linear_state()
    heads["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    torch.save(heads, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"lin0\.model\.1\.weight has shape \(1, 32, 1, 1\)"):
        load_lpips(backbone, tmp_path / "shape.pth")

    heads = _linear_state()
    heads["lin2.model.1.weight"] = -heads["lin2.model.1.weight"]
    torch.save(heads, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="negative"):
        load_lpips(backbone, tmp_path / "negative.pth")

    (tmp_path / "text.pth").write_text("not a state dict")
    with pytest.raises(UnsafeOrDamagedFile, match="text.pth"):
        load_lpips(tmp_path / "text.pth", linear)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UnsafeOrDamagedFile, match="empty"):
        load_lpips(backbone, tmp_path / "empty.pth")


def test_the_lpips_packages_v01_heads_are_used_without_importing_it(weight_files):
    import sys

    heads = packaged_linear_heads()
    if heads is None:
        pytest.skip("the lpips package is not installed (make setup installs it with --no-deps)")
    assert heads.parts[-3:] == ("weights", "v0.1", "vgg.pth")
    model = load_lpips(weight_files[0])
    assert model.linear_source == str(heads) and "lpips" not in sys.modules
    published = torch.load(heads, map_location="cpu", weights_only=True)  # the wheel's tensors were saved on CUDA
    assert torch.equal(model.heads[0].weight, published["lin0.model.1.weight"])


def test_evaluate_reports_lpips(weight_files, demo_store, tmp_path):
    from config import load_config
    from evaluate import main as evaluate_main
    from training.loop import meta_train

    cfg = load_config("demo", ["model.image_size=32", "train.batch_size=2", "train.k_shots=2", "data.num_workers=0",
                               "train.val_every=0", f"data.root={demo_store}", "train.steps=1"])
    checkpoint = meta_train(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "eval"
    code = evaluate_main(["--checkpoint", str(checkpoint), "--data", str(demo_store), "--out", str(out),
                          "--shots", "1", "--videos", "1", "--holdout", "2", "--mode", "feedforward",
                          "--lpips-backbone", str(weight_files[0]), "--lpips-linear", str(weight_files[1])])
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["notes"]["lpips_vgg"].startswith("computed") and str(weight_files[1]) in report["notes"]["lpips_vgg"]
    assert report["per_shots"]["1"]["lpips_vgg"] > 0
