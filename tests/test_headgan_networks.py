"""HeadGAN networks, losses and training step: shapes, warping, audio, crops, overfitting, NaN stop, bad configs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from config import load_config
from model import build_networks
from model.headgan import (HeadGANGenerator, MouthDiscriminator, channel_table, crop_mouth, mouth_crop_size,
                           resize_map)
from model.headgan_loss import HeadGANLoss
from model.loss import ContentLoss
from model.summary import main as summary_main
from model.summary import summarize
from training.precision import NonFiniteLossError, Precision
from utils.syncs import SyncCounter
from training.headgan import (HeadGANNetworks, build_headgan_optimizers,
                                   headgan_train_step)
from vgg_model.vgg import CAFFE_PREPROCESS, VGGFeatures

SMALL = ["model.image_size=32", "train.batch_size=2"]


def small_config(*extra):
    return load_config("headgan_demo", [*SMALL, *extra])


def smooth_images(b, s, generator):
    """Low-frequency images in [-1, 1]: something a few steps can fit."""
    coarse = torch.rand(b, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)


def make_batch(cfg, seed=1, audio=True):
    g = torch.Generator().manual_seed(seed)
    b, s, h = cfg.train.batch_size, cfg.model.image_size, cfg.model.headgan
    batch = {key: smooth_images(b, s, g) for key in ("reference", "reference_render", "driving_render", "target")}
    batch["audio"] = torch.randn(b, h.audio_mels, h.audio_window, generator=g) if audio else None
    batch["mouth"] = torch.full((b, 2), s / 2)
    return batch


def generate(generator, batch, audio="batch"):
    return generator(batch["reference"], batch["reference_render"], batch["driving_render"],
                     batch["audio"] if audio == "batch" else audio)


# --------------------------------------------------------------------------------------------------------------
# Shapes and construction
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, size, device", [("headgan_demo", 64, "cpu"), ("headgan_demo", 96, "cpu"),
                                                  ("headgan", 256, "meta")])
def test_output_shapes(preset, size, device):
    torch.manual_seed(0)
    # Shapes do not depend on spectral norm, whose power iterations at construction are slow on meta tensors.
    cfg = load_config(preset, [f"model.image_size={size}", f"model.spectral_norm={device == 'cpu'}"]).model
    h = cfg.headgan
    with torch.device(device):
        nets = build_networks(cfg)
        images = torch.rand(2, 3, size, size) * 2 - 1
        audio = torch.randn(2, h.audio_mels, h.audio_window)
        out = nets["generator"](images, images, images, audio)
        d_out = nets["discriminator"](out["image"], images)
        mouth = crop_mouth(out["image"], torch.tensor([[size / 2, size * 0.7]] * 2), mouth_crop_size(cfg))
        m_scores, m_features = nets["mouth_discriminator"](mouth, audio)
    assert set(nets) == {"generator", "discriminator", "mouth_discriminator"}
    assert out["image"].shape == out["warped"].shape == (2, 3, size, size)
    assert out["flow"].shape == (2, 2, size, size) and out["mask"].shape == (2, 1, size, size)
    assert len(d_out) == h.d_scales
    for k, (scores, features) in enumerate(d_out):
        assert scores.shape == (2, 1, size // 2 ** (k + h.d_layers), size // 2 ** (k + h.d_layers))
        assert len(features) == h.d_layers
    m = mouth_crop_size(cfg)
    assert mouth.shape == (2, 3, m, m) and m == max(16, round(h.mouth_size * size / 256))
    assert m_scores.shape == (2, 1, m // 8, m // 8) and len(m_features) == 3
    if device == "cpu":
        assert out["image"].abs().max() <= 1 and 0 <= out["mask"].min() and out["mask"].max() <= 1


def test_no_mouth_discriminator_without_channels():
    nets = build_networks(small_config("model.headgan.mouth_ndf=0").model)
    assert set(nets) == {"generator", "discriminator"}


def test_spectral_norm_where_asked():
    cfg = small_config().model
    nets = build_networks(cfg)
    G, D = nets["generator"], nets["discriminator"]
    assert all(parametrize.is_parametrized(layer[0]) for layer in D.scales[0].layers)
    assert parametrize.is_parametrized(G.render.out_conv)
    # The flow head stays plain: spectral norm would undo its zero initialisation.
    assert not parametrize.is_parametrized(G.flow.flow_head)
    plain = build_networks(small_config("model.spectral_norm=false").model)
    assert not any(parametrize.is_parametrized(m) for m in plain["discriminator"].modules())


def test_encoder_channels_follow_the_table():
    cfg = load_config("headgan").model
    assert channel_table(cfg.headgan) == [32, 64, 128, 256, 256]
    torch.manual_seed(0)
    cfg = small_config().model
    G = build_networks(cfg)["generator"]
    x = torch.zeros(1, 6, 32, 32)
    shapes = [tuple(f.shape[1:]) for f in G.flow.encoder(x)]
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 4, 4)]


# --------------------------------------------------------------------------------------------------------------
# Flow and warping
# --------------------------------------------------------------------------------------------------------------


def test_flow_is_identity_at_init():
    torch.manual_seed(0)
    cfg = small_config()
    G = build_networks(cfg.model)["generator"].eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        out = generate(G, batch)
    assert out["flow"].abs().max() == 0
    assert torch.allclose(out["warped"], batch["reference"], atol=1e-5)


def test_translation_flow_moves_features_at_every_scale():
    """A constant flow of k pixels at full size moves every scale's features by k / 2**l pixels."""
    torch.manual_seed(0)
    cfg = small_config()
    G = build_networks(cfg.model)["generator"].eval()
    batch = make_batch(cfg)
    s, k = cfg.model.image_size, 8
    with torch.no_grad():
        G.flow.flow_head.bias.copy_(torch.tensor([2 * k / s, 0.0]))  # sample k pixels to the right
        G.flow.mask_head.weight.zero_()
        G.flow.mask_head.bias.zero_()  # mask = 0.5 everywhere
        flow = G.flow(batch["reference"], batch["reference_render"], batch["driving_render"])
        encoded = G.flow.encoder(torch.cat([batch["reference"], batch["reference_render"]], dim=1))
        out = generate(G, batch)
    assert len(flow["features"]) == cfg.model.headgan.levels + 1
    for level, (warped, original) in enumerate(zip(flow["features"], encoded)):
        shift, width = k // 2 ** level, original.shape[-1]
        assert torch.allclose(warped[..., :width - shift], 0.5 * original[..., shift:], atol=1e-5), level
        assert not torch.allclose(warped, 0.5 * original, atol=1e-3)
    assert torch.allclose(out["warped"][..., :s - k], batch["reference"][..., k:], atol=1e-5)


def test_rendering_reads_the_warped_features_of_every_scale():
    torch.manual_seed(0)
    cfg = small_config()
    G = build_networks(cfg.model)["generator"].eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        features = G.flow(batch["reference"], batch["reference_render"], batch["driving_render"])["features"]
        embedding = G.embed_audio(batch["audio"], 2)
        base = G.render(batch["driving_render"], features, embedding)
        for level in range(len(features)):
            changed = list(features)
            changed[level] = changed[level] + 1.0
            assert (G.render(batch["driving_render"], changed, embedding) - base).abs().max() > 1e-4, level


def test_resize_map_box_filters_down_and_keeps_size():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(resize_map(x, (4, 4)), x)
    assert torch.allclose(resize_map(x, (2, 2)), F.avg_pool2d(x, 2))
    assert resize_map(x, (8, 8)).shape == (1, 1, 8, 8)


# --------------------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------------------


def test_audio_changes_the_output_only_when_on():
    cfg = small_config()
    batch = make_batch(cfg)
    other = torch.randn_like(batch["audio"])
    torch.manual_seed(0)
    G = build_networks(cfg.model)["generator"].eval()
    with torch.no_grad():
        a, b = generate(G, batch)["image"], generate(G, batch, other)["image"]
        silent = generate(G, batch, None)["image"]
    assert (a - b).abs().max() > 1e-4 and (a - silent).abs().max() > 1e-4

    torch.manual_seed(0)
    G_off = build_networks(small_config("model.headgan.audio=false").model)["generator"].eval()
    assert G_off.audio_encoder is None
    with torch.no_grad():
        a, b, silent = (generate(G_off, batch)["image"], generate(G_off, batch, other)["image"],
                        generate(G_off, batch, None)["image"])
    assert torch.equal(a, b) and torch.equal(a, silent)


def test_items_without_audio_in_a_mixed_batch_get_the_silent_embedding():
    cfg = small_config()
    batch = make_batch(cfg)
    torch.manual_seed(0)
    G = build_networks(cfg.model)["generator"].eval()
    args = (batch["reference"], batch["reference_render"], batch["driving_render"])
    mask = torch.tensor([True] + [False] * (batch["audio"].shape[0] - 1))
    with torch.no_grad():
        mixed = G(*args, batch["audio"], mask)["image"]
        heard, silent = G(*args, batch["audio"])["image"], G(*args, None)["image"]
    torch.testing.assert_close(mixed[:1], heard[:1])
    torch.testing.assert_close(mixed[1:], silent[1:])


def test_mouth_discriminator_audio_projection():
    torch.manual_seed(0)
    cfg = small_config().model
    M = MouthDiscriminator(cfg).eval()
    mouth = torch.rand(2, 3, M.crop_size, M.crop_size) * 2 - 1
    audio = torch.randn(2, cfg.headgan.audio_mels, cfg.headgan.audio_window)
    with torch.no_grad():
        plain, features = M(mouth)
        with_audio, _ = M(mouth, audio)
        other, _ = M(mouth, -audio)
        # The projection shifts every patch of a sample by the same amount.
        delta = (with_audio - plain).flatten(1)
    assert torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-5)
    assert delta.abs().min() > 0 and not torch.allclose(with_audio, other)
    assert torch.equal(plain, M.trunk(mouth)[0])


# --------------------------------------------------------------------------------------------------------------
# Discriminators and the mouth crop
# --------------------------------------------------------------------------------------------------------------


def test_multiscale_discriminator_sees_pooled_inputs():
    torch.manual_seed(0)
    cfg = small_config().model
    D = build_networks(cfg)["discriminator"].eval()
    image, render = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outputs = D(image, render)
        pair = torch.cat([image, render], dim=1)
        for k, (scores, features) in enumerate(outputs):
            expected, expected_features = D.scales[k](pair)
            assert torch.equal(scores, expected) and len(features) == len(expected_features)
            pair = F.avg_pool2d(pair, 2)
    assert len(outputs) == cfg.headgan.d_scales == 2


def test_crop_mouth_takes_the_right_pixels():
    s, m = 32, 8
    ys, xs = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)]).float().unsqueeze(0).repeat(3, 1, 1, 1)
    image[:, 2] = torch.arange(3.0).view(3, 1, 1)
    image.requires_grad_(True)
    centres = torch.tensor([[20.0, 12.0], [1.0, 30.0], [31.6, 0.2]])
    crop = crop_mouth(image, centres, m)
    assert crop.shape == (3, 3, m, m)
    # Sample 0 in the middle: columns 16..23, rows 8..15; samples 1 and 2 are clamped into the image.
    for i, (x0, y0) in enumerate([(16, 8), (0, 24), (24, 0)]):
        assert torch.equal(crop[i, 0, 0], torch.arange(x0, x0 + m).float())
        assert torch.equal(crop[i, 1, :, 0], torch.arange(y0, y0 + m).float())
        assert torch.all(crop[i, 2] == i)
    crop.sum().backward()
    assert image.grad.sum() == 3 * 3 * m * m and image.grad[0, 0, 8:16, 16:24].eq(1).all()
    with pytest.raises(ValueError, match="does not fit"):
        crop_mouth(image, centres, 40)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        crop_mouth(image, centres[:2], m)


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------


def test_content_loss_layer_weights():
    torch.manual_seed(1)
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    net = VGGFeatures("vgg19", CAFFE_PREPROCESS["vgg19"], last_layer="relu3_1")
    fake, real = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    per_layer = [F.l1_loss(a, b).item() for a, b in zip(net(fake, layers), net(real, layers))]
    weighted = ContentLoss(net, layers, 0.5, [1.0, 0.0, 2.0])(fake, real)
    assert weighted.item() == pytest.approx(0.5 * (per_layer[0] + 2 * per_layer[2]), rel=1e-5)
    assert ContentLoss(net, layers, 0.5)(fake, real).item() == pytest.approx(0.5 * sum(per_layer), rel=1e-5)
    with pytest.raises(ValueError, match="2 layer weights for 3 layers"):
        ContentLoss(net, layers, 1.0, [1.0, 1.0])

    cfg = load_config("headgan", ["loss.vgg19_layers=[relu1_1, relu2_1, relu3_1]",
                                  "loss.vgg19_layer_weights=[0.25, 0.5, 1.0]", "loss.adversarial_weight=0",
                                  "loss.feature_matching_weight=0"]).loss
    terms = HeadGANLoss(cfg, {"vgg19": net})({"image": fake, "warped": fake}, real, [], [])
    expected = 10 * (0.25 * per_layer[0] + 0.5 * per_layer[1] + per_layer[2])
    assert terms["content_vgg19"].item() == pytest.approx(expected, rel=1e-5)


def _d_outputs(scores, feature_value):
    return [(torch.full((2, 1, 4, 4), s), [torch.full((2, 3, 4, 4), feature_value)]) for s in scores]


def test_headgan_loss_terms_and_weights():
    cfg = load_config("headgan", ["loss.pixel_l1_weight=2", "loss.warp_l1_weight=3", "loss.adversarial_weight=4",
                                  "loss.feature_matching_weight=5", "loss.mouth_adversarial_weight=6"]).loss
    loss = HeadGANLoss(cfg, {})
    target = torch.zeros(2, 3, 8, 8)
    outputs = {"image": torch.full((2, 3, 8, 8), 0.5), "warped": torch.full((2, 3, 8, 8), -0.25)}
    fake = _d_outputs([1.0, 3.0], 1.0)
    real_features = [[torch.zeros(2, 3, 4, 4)], [torch.full((2, 3, 4, 4), 3.0)]]
    mouth_fake = (torch.full((2, 1, 2, 2), -1.0), [torch.ones(2, 4, 2, 2)])
    terms = loss(outputs, target, fake, real_features, mouth_fake, [torch.zeros(2, 4, 2, 2)])
    assert set(terms) == {"pixel_l1", "warp_l1", "adversarial", "feature_matching", "mouth_adversarial",
                          "mouth_feature_matching"}
    assert terms["pixel_l1"].item() == pytest.approx(2 * 0.5)
    assert terms["warp_l1"].item() == pytest.approx(3 * 0.25)
    assert terms["adversarial"].item() == pytest.approx(-4 * 2.0)  # mean over scales of (1, 3)
    assert terms["feature_matching"].item() == pytest.approx(5 * (1.0 + 2.0) / 2)
    assert terms["mouth_adversarial"].item() == pytest.approx(6.0)
    assert terms["mouth_feature_matching"].item() == pytest.approx(5.0)

    d = loss.discriminator_terms(_d_outputs([2.0, 0.5], 0.0), _d_outputs([-2.0, 0.0], 0.0),
                                 (torch.full((2, 1, 2, 2), 0.0),), (torch.full((2, 1, 2, 2), 1.0),))
    assert d["d_real"].item() == pytest.approx((0.0 + 0.5) / 2)
    assert d["d_fake"].item() == pytest.approx((0.0 + 1.0) / 2)
    assert d["mouth_real"].item() == pytest.approx(1.0) and d["mouth_fake"].item() == pytest.approx(2.0)


def test_zero_weights_skip_terms():
    cfg = load_config("headgan", ["loss.warp_l1_weight=0", "loss.adversarial_weight=0",
                                  "loss.mouth_adversarial_weight=0"]).loss
    loss = HeadGANLoss(cfg, {})
    assert not loss.uses_mouth
    image = torch.zeros(2, 3, 8, 8)
    terms = loss({"image": image, "warped": image}, image, _d_outputs([1.0], 1.0), [[torch.zeros(2, 3, 4, 4)]])
    assert set(terms) == {"pixel_l1", "feature_matching"}


# --------------------------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------------------------


def _setup(cfg, seed=0):
    torch.manual_seed(seed)
    modules = build_networks(cfg.model)
    return modules, HeadGANNetworks.from_modules(modules), build_headgan_optimizers(modules, cfg), \
        HeadGANLoss(cfg.loss, {})


def test_optimizers_follow_the_config():
    cfg = small_config()
    modules, _, optimizers, _ = _setup(cfg)
    g, d = optimizers["generator"].param_groups[0], optimizers["discriminator"].param_groups[0]
    assert g["lr"] == cfg.optim.lr_generator and d["lr"] == cfg.optim.lr_discriminator
    assert g["betas"] == (0.5, 0.999)
    d_count = sum(1 for m in ("discriminator", "mouth_discriminator") for _ in modules[m].parameters())
    assert len(d["params"]) == d_count
    assert len(g["params"]) == len(list(modules["generator"].parameters()))


def test_a_few_steps_overfit_one_batch():
    """The real step (D phase, G phase, every demo loss term) lowers the final-image L1 on a fixed batch."""
    cfg = small_config()
    modules, nets, optimizers, loss = _setup(cfg)
    batch = make_batch(cfg)
    d_before = [p.detach().clone() for p in modules["mouth_discriminator"].parameters()]
    errors = []
    precision = Precision("none", torch.device("cpu"))
    for step in range(20):
        stats, outputs = headgan_train_step(batch, nets, optimizers, loss, step, precision)
        errors.append((outputs["image"] - batch["target"]).abs().mean().item())
    stats = {name: float(value) for name, value in stats.items()}
    assert errors[-1] < 0.7 * errors[0], errors
    assert set(stats) >= {"loss/d_real", "loss/d_fake", "loss/mouth_real", "loss/mouth_fake", "loss/pixel_l1",
                          "loss/warp_l1", "loss/adversarial", "loss/feature_matching", "loss/mouth_adversarial",
                          "loss/mouth_feature_matching", "loss/d_total", "loss/g_total", "score/real", "score/fake"}
    assert stats["loss/d_total"] == pytest.approx(sum(stats[f"loss/{k}"] for k in
                                                      ("d_real", "d_fake", "mouth_real", "mouth_fake")))
    assert not any(o.requires_grad for o in outputs.values())
    # The mouth discriminator trained; the G phase never froze (or unfroze) any weight.
    assert any(not torch.equal(a, b) for a, b in zip(d_before, modules["mouth_discriminator"].parameters()))
    assert all(p.requires_grad for m in modules.values() for p in m.parameters())


def test_step_without_audio_or_mouth_discriminator():
    cfg = small_config("model.headgan.mouth_ndf=0", "model.headgan.audio=false")
    modules, nets, optimizers, loss = _setup(cfg)
    assert nets.mouth_discriminator is None
    stats, outputs = headgan_train_step(make_batch(cfg, audio=False), nets, optimizers, loss, 0,
                                        Precision("none", torch.device("cpu")))
    assert "loss/mouth_real" not in stats and "loss/mouth_adversarial" not in stats
    assert outputs["image"].shape == (2, 3, 32, 32)


def test_non_finite_loss_skips_the_update_on_the_device_and_stops_at_the_read():
    cfg = small_config()
    modules, nets, optimizers, loss = _setup(cfg)
    batch = make_batch(cfg)
    with torch.no_grad():
        modules["generator"].render.out_conv.bias.fill_(float("nan"))
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in modules.items()}
    precision = Precision("none", torch.device("cpu"))
    with SyncCounter() as syncs:
        headgan_train_step(batch, nets, optimizers, loss, 7, precision)
    assert syncs.count == 0, syncs.ops  # the check and the skip happen on the device
    for name, m in modules.items():
        for a, b in zip(before[name], m.parameters()):
            torch.testing.assert_close(b.detach(), a, rtol=0, atol=0, equal_nan=True)
    assert all(float(s["step"]) == 0 for o in optimizers.values() for s in o.state.values())
    with pytest.raises(NonFiniteLossError, match=r"'d_fake' became NaN or Inf at step 7"):
        precision.check(8)

    # A term of the G phase only: D has stepped, G has not.
    cfg = small_config()
    modules, nets, optimizers, _ = _setup(cfg)
    weights = copy.copy(cfg.loss)
    weights.warp_l1_weight = float("inf")  # past the config's range check: a term that overflows mid-run
    bad = HeadGANLoss(weights, {})
    g_before = [p.detach().clone() for p in modules["generator"].parameters()]
    d_before = [p.detach().clone() for p in modules["discriminator"].parameters()]
    precision = Precision("none", torch.device("cpu"))
    headgan_train_step(batch, nets, optimizers, bad, 3, precision)
    assert all(torch.equal(a, b) for a, b in zip(g_before, modules["generator"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, modules["discriminator"].parameters()))
    with pytest.raises(NonFiniteLossError, match=r"'warp_l1' became NaN or Inf at step 3"):
        precision.check(3)
    assert all(p.requires_grad for m in modules.values() for p in m.parameters())


# --------------------------------------------------------------------------------------------------------------
# Bad input and configs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["model.image_size=36"], r"not divisible by 2\*\*model.headgan.levels"),
    (["model.headgan.d_layers=5"], "too small for model.headgan.d_scales"),
    (["model.headgan.mouth_size=512"], "does not fit"),
    (["model.headgan.ngf=0"], "ngf must be at least 1"),
    (["model.headgan.max_channels=8"], "below ngf"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_networks(small_config(*overrides).model)


def test_bad_inputs_name_what_is_wrong():
    cfg = small_config()
    G = HeadGANGenerator(cfg.model)
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"driving_render must have shape \(2, 3, 32, 32\)"):
        G(x, x, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="audio_mels x audio_window"):
        G(x, x, x, torch.zeros(2, 40, 3))
    with pytest.raises(ValueError, match="mouth crops must have shape"):
        MouthDiscriminator(cfg.model)(x)


# --------------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------------


def test_summary_of_the_paper_preset(capsys):
    cfg = load_config("headgan").model
    summary = summarize(cfg)
    assert set(summary) == {"generator", "discriminator", "mouth_discriminator"}
    g = summary["generator"]
    assert g["flow_params"] + g["rendering_params"] < g["params"] < g["flow_params"] + g["rendering_params"] + 1e6
    assert all(row["params"] > 0 and row["gflops"] > 0 for row in summary.values())
    assert 10 < g["gflops"] < 500  # one 256x256 forward
    summary_main(["--config", "headgan"])
    table = capsys.readouterr().out
    assert "headgan at 256x256" in table and "mouth_discriminator" in table and "64 px mouth crop" in table
