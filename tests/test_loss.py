"""Loss terms on known inputs, weights from config, zero-weight skipping, the perceptual-weights fallback."""
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from model.loss import (ContentLoss, GeneratorLoss, feature_matching, hinge_discriminator,
                        load_content_networks)
from vgg_model.vgg import CAFFE_PREPROCESS, VGGFeatures, load_vgg, save_weights

LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


def test_hinge_on_known_scores():
    terms = hinge_discriminator(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5]))
    assert terms["d_real"].item() == pytest.approx(0.25)  # mean(max(0, 1-2), max(0, 1-0.5))
    assert terms["d_fake"].item() == pytest.approx(0.75)  # mean(max(0, 1-2), max(0, 1+0.5))


def test_feature_matching_on_known_maps():
    real = [torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 4, 4)]
    fake = [torch.full((1, 2, 2, 2), 0.5, requires_grad=True), torch.full((1, 1, 4, 4), 3.0, requires_grad=True)]
    loss = feature_matching(real, fake)
    assert loss.item() == pytest.approx(0.5 + 2.0)
    loss.backward()
    assert fake[0].grad is not None
    with pytest.raises(ValueError, match="2 real and 1 fake"):
        feature_matching(real, fake[:1])


def _generator_inputs(requires_grad=True):
    torch.manual_seed(0)
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(requires_grad)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    scores = torch.tensor([0.5, -1.5])
    feats_f = [torch.ones(2, 4, 8, 8)]
    feats_r = [torch.zeros(2, 4, 8, 8)]
    e_hat, w_i = torch.ones(2, 8), torch.zeros(2, 8)
    return fake, real, scores, feats_f, feats_r, e_hat, w_i


def test_generator_terms_are_weighted_by_config():
    cfg = load_config("demo", ["loss.pixel_l1_weight=2", "loss.adversarial_weight=3",
                               "loss.feature_matching_weight=4", "loss.embedding_match_weight=5"]).loss
    fake, real, scores, ff, fr, e_hat, w_i = _generator_inputs()
    terms = GeneratorLoss(cfg, {})(fake, real, scores, ff, fr, e_hat, w_i)
    assert set(terms) == {"pixel_l1", "adversarial", "feature_matching", "embedding_match"}
    assert terms["pixel_l1"].item() == pytest.approx(2 * (fake - real).abs().mean().item(), rel=1e-6)
    assert terms["adversarial"].item() == pytest.approx(-3 * (-0.5))
    assert terms["feature_matching"].item() == pytest.approx(4.0)
    assert terms["embedding_match"].item() == pytest.approx(5.0)


def test_zero_weight_terms_are_skipped():
    cfg = load_config("demo", ["loss.adversarial_weight=0", "loss.embedding_match_weight=0"]).loss
    terms = GeneratorLoss(cfg, {})(*_generator_inputs())
    assert "adversarial" not in terms and "embedding_match" not in terms
    assert "feature_matching" in terms
    # Fine-tuning has no W_i: without e_hat the embedding-match term is left out.
    assert "embedding_match" not in GeneratorLoss(load_config("demo").loss, {})(*_generator_inputs()[:5])


def _vgg_file(tmp_path, arch="vgg19"):
    torch.manual_seed(1)
    net = VGGFeatures(arch, CAFFE_PREPROCESS[arch], last_layer="relu3_1")
    path = tmp_path / f"{arch}.pt"
    save_weights(path, arch, "caffe", CAFFE_PREPROCESS[arch], net.state_dict())
    return path, net


def test_content_loss_is_l1_over_layers(tmp_path):
    path, _ = _vgg_file(tmp_path)
    net = load_vgg(path, "vgg19", last_layer="relu3_1")
    loss = ContentLoss(net, LAYERS, weight=0.5)
    fake, real = _generator_inputs()[:2]
    value = loss(fake, real)
    expected = 0.5 * sum(F.l1_loss(a, b) for a, b in zip(net(fake, LAYERS), net(real, LAYERS)))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(real, real).item() == 0.0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())  # the perceptual nets stay frozen


def test_content_networks_load_from_config(tmp_path):
    path, _ = _vgg_file(tmp_path)
    cfg = load_config("vox2", [f"loss.vgg19_path={path}", "loss.vggface_weight=0",
                               f"loss.vgg19_layers=[{', '.join(LAYERS)}]"]).loss
    nets = load_content_networks(cfg)
    assert set(nets) == {"vgg19"}
    terms = GeneratorLoss(cfg, nets)(*_generator_inputs())
    assert terms["content_vgg19"].item() > 0


def test_missing_weights_error_says_how_to_convert(tmp_path):
    cfg = load_config("vox2", [f"loss.vgg19_path={tmp_path / 'nope.pt'}"]).loss
    with pytest.raises(FileNotFoundError, match="convert_model.py --arch vgg19"):
        load_content_networks(cfg)


def test_unknown_content_layer_is_named(tmp_path):
    path, _ = _vgg_file(tmp_path)
    cfg = load_config("vox2", [f"loss.vgg19_path={path}", "loss.vggface_weight=0",
                               "loss.vgg19_layers=[relu1_1, relu9_9]"]).loss
    with pytest.raises(ValueError, match="relu9_9"):
        load_content_networks(cfg)


def test_missing_weights_fallback_is_loud(tmp_path, capsys):
    cfg = load_config("demo", [f"loss.vgg19_path={tmp_path / 'a.pt'}",
                               f"loss.vggface_path={tmp_path / 'b.pt'}"]).loss
    nets = load_content_networks(cfg)
    assert nets == {}
    err = capsys.readouterr().err
    assert "PERCEPTUAL LOSS OFF: vgg19" in err and "PERCEPTUAL LOSS OFF: vggface" in err
    terms = GeneratorLoss(cfg, nets)(*_generator_inputs())
    assert "pixel_l1" in terms and not any(k.startswith("content") for k in terms)
