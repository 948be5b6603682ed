"""E, G, D: shapes, sizes against the paper, AdaIN bookkeeping, spectral norm, the projection matrix W."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from config import load_config
from model import build_networks
from model.blocks import AdaIN, build_layers, parse_layers


def _params(module, skip=None):
    return sum(p.numel() for n, p in module.named_parameters() if skip is None or not n.startswith(skip))


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    cfg = load_config("demo")
    return cfg, build_networks(cfg.model)


def _batch(cfg, b=2, k=3):
    s = cfg.model.image_size
    return torch.randn(b, k, 3, s, s).clamp(-1, 1), torch.randn(b, k, 3, s, s).clamp(-1, 1)


@pytest.mark.parametrize("preset, size", [("vox2", 256), ("vox2", 128), ("demo", 64), ("demo", 128),
                                          ("demo", 96)])
def test_shapes_at_several_resolutions(preset, size):
    # Meta tensors propagate shapes without computing, so the 256x256 paper networks cost nothing here.
    cfg = load_config(preset, [f"model.image_size={size}"])
    with torch.device("meta"):
        nets = build_networks(cfg.model)
        frames = torch.empty(2, 3, 3, size, size)
        e_hat = nets["embedder"](frames, frames)
        fake = nets["generator"](frames[:, 0], e_hat)
        scores, features = nets["discriminator"](fake, frames[:, 0], torch.tensor([0, 1]))
    assert e_hat.shape == (2, cfg.model.embed_dim)
    assert fake.shape == (2, 3, size, size)
    assert scores.shape == (2,)
    assert len(features) == sum(t.kind in ("D", "R") for t in parse_layers(cfg.model.discriminator.layers, "d"))


def test_paper_sizes():
    """E ~15M, G ~38M with P ~6.7M, D ~20M without W (paper; 14.8/37.9/6.7/19.5M in the lab's code)."""
    cfg = load_config("vox2")
    with torch.device("meta"):
        nets = build_networks(cfg.model)
    E, G, D = nets["embedder"], nets["generator"], nets["discriminator"]
    assert _params(E) == pytest.approx(14.8e6, rel=0.02)
    assert _params(G) == pytest.approx(37.9e6, rel=0.02)
    assert _params(G.projection) == pytest.approx(6.7e6, rel=0.01)
    assert _params(D, skip="W.") == pytest.approx(19.5e6, rel=0.02)
    assert G.num_adain_params == pytest.approx(13e3, rel=0.02)


def test_projection_output_matches_adain_channels(demo):
    cfg, nets = demo
    G = nets["generator"]
    adain_channels = sum(m.channels for m in G.modules() if isinstance(m, AdaIN))
    assert G.num_adain_params == 2 * adain_channels
    assert G.projection.out_features == G.num_adain_params


def test_psi_slices_reach_their_own_blocks(demo):
    """Changing the slice of psi that belongs to one AdaIN block changes the output; psi = P e_hat is G(e_hat)."""
    cfg, nets = demo
    G = nets["generator"].eval()
    _, lm = _batch(cfg, b=1, k=1)
    e_hat = torch.randn(1, cfg.model.embed_dim)
    with torch.no_grad():
        psi = G.project(e_hat)
        base = G(lm[:, 0], psi=psi)
        assert torch.allclose(base, G(lm[:, 0], e_hat))
        offset = 0
        for block in G.blocks:
            if block.adain_params:
                changed = psi.clone()
                changed[:, offset:offset + block.adain_params] += 1.0
                assert not torch.allclose(G(lm[:, 0], psi=changed), base), block
                offset += block.adain_params
        assert offset + G.out_norm.num_params == G.num_adain_params
        shared = G(lm.expand(2, -1, -1, -1, -1)[:, 0], psi=psi[0])  # one psi broadcast over a batch
        assert torch.allclose(shared[0], base[0], atol=1e-5) and torch.allclose(shared[1], base[0], atol=1e-5)


def _convs_and_linears(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_spectral_norm_on_every_conv_and_linear(demo):
    _, nets = demo
    for name, net in nets.items():
        layers = _convs_and_linears(net)
        assert layers, name
        for layer in layers:
            assert parametrize.is_parametrized(layer, "weight"), f"{name}: {layer} lacks spectral norm"
            assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"
    plain = build_networks(load_config("demo", ["model.spectral_norm=false"]).model)
    assert not any(parametrize.is_parametrized(m) for net in plain.values() for m in _convs_and_linears(net))


def test_embedder_averages_over_frames(demo):
    cfg, nets = demo
    E = nets["embedder"].eval()
    frames, lms = _batch(cfg, b=2, k=3)
    with torch.no_grad():
        e_hat = E(frames, lms)
        per_frame = E.embed(frames.flatten(0, 1), lms.flatten(0, 1)).view(2, 3, -1)
        permuted = E(frames[:, [2, 0, 1]], lms[:, [2, 0, 1]])
    assert torch.allclose(e_hat, per_frame.mean(1), atol=1e-5)
    assert torch.allclose(e_hat, permuted, atol=1e-5)
    assert (per_frame >= 0).all()  # ReLU before sum pooling


def test_discriminator_projection_and_w_override(demo):
    cfg, nets = demo
    D = nets["discriminator"].eval()
    frames, lms = _batch(cfg, b=2, k=1)
    idx = torch.tensor([3, 7])
    with torch.no_grad():
        D.w0.normal_()
        scores, _ = D(frames[:, 0], lms[:, 0], idx)
        again, _ = D(frames[:, 0], lms[:, 0], w=D.W.weight[idx])
        other, _ = D(frames[:, 0], lms[:, 0], torch.tensor([4, 8]))
    assert torch.allclose(scores, again)
    assert not torch.allclose(scores, other)


def test_w_gets_sparse_gradient_on_batch_rows_only(demo):
    cfg, nets = demo
    D = nets["discriminator"].train()
    D.zero_grad()
    frames, lms = _batch(cfg, b=2, k=1)
    scores, _ = D(frames[:, 0], lms[:, 0], torch.tensor([5, 9]))
    scores.sum().backward()
    grad = D.W.weight.grad
    assert grad.is_sparse
    assert sorted(grad.coalesce().indices()[0].tolist()) == [5, 9]
    assert D.w0.grad is not None and not D.w0.grad.is_sparse


def test_w_is_sized_by_num_videos_and_stays_cheap():
    cfg = load_config("vox2", ["model.discriminator.num_videos=150000"])
    with torch.device("meta"):
        D = build_networks(cfg.model)["discriminator"]
    assert D.W.weight.shape == (150000, 512)
    assert D.W.sparse
    assert _params(D, skip="W.") == pytest.approx(19.6e6, rel=0.01)  # the trunk does not grow with W


def test_gradients_reach_every_network_from_the_generator_loss(demo):
    cfg, nets = demo
    E, G = nets["embedder"].train(), nets["generator"].train()
    frames, lms = _batch(cfg, b=2, k=2)
    fake = G(lms[:, 0], E(frames, lms))
    assert fake.min() >= -1 and fake.max() <= 1
    fake.square().mean().backward()
    for net in (E, G):
        missing = [n for n, p in net.named_parameters() if p.grad is None and not n.endswith("gamma")]
        assert not missing, missing


def test_attention_starts_as_identity():
    blocks, _, _ = build_layers(["A"], 16, 8, sn=True, key="t")
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(blocks[0](x), x)


@pytest.mark.parametrize("layers, message", [
    (["D64", "Q3"], r"\[1\]: cannot parse layer token 'Q3'"),
    (["D"], "D needs an output width"),
    (["A64"], "A takes no width"),
    (["D64*0"], "repeat count"),
])
def test_bad_layer_tables(layers, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(layers, "model.embedder.layers")


def test_table_errors_name_the_config_key():
    with pytest.raises(ValueError, match="model.embedder.layers ends with 64 channels"):
        build_networks(load_config("demo", ["model.embedder.layers=[D32, D64]"]).model)
    with pytest.raises(ValueError, match="model.generator.layers maps 64x64 to 32x32"):
        build_networks(load_config("demo", ["model.generator.layers=[D32, U32, D32]"]).model)
    with pytest.raises(ValueError, match="odd size"):
        build_networks(load_config("demo", ["model.image_size=36"]).model)
