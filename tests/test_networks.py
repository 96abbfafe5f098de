"""Tests for rlox_dp.networks: denoisers, timestep embedding, vision encoders, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlox_dp.networks import (
    DENOISERS,
    ConditionalUnet1D,
    Denoiser,
    MLPDenoiser,
    MultiImageObsEncoder,
    ResNetImageEncoder,
    SinusoidalPosEmb,
    SpatialSoftmax,
    build_denoiser,
    center_crop,
    denoiser_options,
    random_crop,
)
from rlox_dp.networks.unet1d import ConditionalResidualBlock1D

TINY_UNET = dict(down_dims=(8, 16), kernel_size=3, n_groups=4, diffusion_step_embed_dim=8)
TINY_MLP = dict(hidden_dim=32, n_layers=2, timestep_embed_dim=8)


def _inputs(batch: int, horizon: int, action_dim: int, cond_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, horizon, action_dim, generator=g)
    t = torch.randint(0, 100, (batch,), generator=g)
    c = torch.randn(batch, cond_dim, generator=g)
    return x, t, c


# ----------------------------------------------------------------------------- denoisers


@pytest.mark.parametrize(
    "down_dims,horizon", [((8,), 3), ((8, 16), 4), ((8, 16), 10), ((8, 16, 16), 16)]
)
@pytest.mark.parametrize("scale", [True, False])
def test_unet_output_shape(down_dims, horizon, scale):
    net = ConditionalUnet1D(
        2,
        horizon,
        5,
        down_dims=down_dims,
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=8,
        use_film_scale_modulation=scale,
    )
    x, t, c = _inputs(3, horizon, 2, 5)
    assert net(x, t, c).shape == (3, horizon, 2)


@pytest.mark.parametrize("horizon", [1, 7, 16])
def test_mlp_output_shape(horizon):
    net = MLPDenoiser(3, horizon, 4, **TINY_MLP)
    x, t, c = _inputs(2, horizon, 3, 4)
    assert net(x, t, c).shape == (2, horizon, 3)
    assert net(x, t.float() / 100.0, c).shape == (2, horizon, 3)  # continuous time accepted


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConditionalUnet1D(2, 8, 3, use_film_scale_modulation=True, **TINY_UNET),
        lambda: ConditionalUnet1D(2, 8, 3, use_film_scale_modulation=False, **TINY_UNET),
        lambda: MLPDenoiser(2, 8, 3, **TINY_MLP),
    ],
)
def test_gradient_reaches_every_parameter(make):
    torch.manual_seed(0)
    net = make()
    x, t, c = _inputs(4, 8, 2, 3)
    net(x, t, c).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_film_scale_adds_one_bias_head_per_block():
    with_scale = ConditionalUnet1D(2, 8, 3, use_film_scale_modulation=True, **TINY_UNET)
    bias_only = ConditionalUnet1D(2, 8, 3, use_film_scale_modulation=False, **TINY_UNET)
    film_dim = TINY_UNET["diffusion_step_embed_dim"] + 3
    blocks = [m for m in bias_only.modules() if isinstance(m, ConditionalResidualBlock1D)]
    assert len(blocks) == 2 * 2 + 2 + 2 * 1  # down levels, mid, up levels
    extra = sum(b.out_channels * (film_dim + 1) for b in blocks)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_scale) - count(bias_only) == extra


def test_unet_matches_reference_parameter_count():
    # Closed form for down_dims=(8,), k=3, one level, no up path: 2 down blocks + 2 mid blocks.
    d, a, cdim, dsed, k = 8, 2, 3, 8, 3
    film = dsed + cdim

    def crb(cin, cout):  # conv1 + GN + conv2 + GN + FiLM bias head + residual conv
        return (
            (cin * cout * k + cout)
            + 2 * cout
            + (cout * cout * k + cout)
            + 2 * cout
            + (film * cout + cout)
            + ((cin * cout + cout) if cin != cout else 0)
        )

    expected = (dsed * 4 * dsed + 4 * dsed) + (4 * dsed * dsed + dsed)  # timestep encoder
    expected += crb(a, d) + 3 * crb(d, d)
    expected += (d * d * k + d + 2 * d) + (d * a + a)  # final Conv1dBlock + 1x1 conv
    net = ConditionalUnet1D(
        a,
        4,
        cdim,
        down_dims=(d,),
        kernel_size=k,
        n_groups=4,
        diffusion_step_embed_dim=dsed,
        use_film_scale_modulation=False,
    )
    assert sum(p.numel() for p in net.parameters()) == expected


def test_unet_horizon_not_divisible_raises():
    with pytest.raises(ValueError, match="horizon"):
        ConditionalUnet1D(2, 6, 3, down_dims=(8, 16, 16), kernel_size=3, n_groups=4)
    ConditionalUnet1D(2, 12, 3, down_dims=(8, 16, 16), kernel_size=3, n_groups=4)  # 12 % 4 == 0


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(down_dims=()), "down_dims"),
        (dict(down_dims=(8, 12), n_groups=8), "down_dims"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(diffusion_step_embed_dim=7), "dim"),
        (dict(n_groups=0), "n_groups"),
    ],
)
def test_unet_bad_arguments_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ConditionalUnet1D(2, 8, 3, **{**dict(down_dims=(8, 16), n_groups=4), **kwargs})


@pytest.mark.parametrize("name,options", [("unet", TINY_UNET), ("mlp", TINY_MLP)])
def test_denoiser_rejects_wrong_input_shapes(name, options):
    net = build_denoiser(name, action_dim=2, horizon=8, cond_dim=3, **options)
    x, t, c = _inputs(4, 8, 2, 3)
    with pytest.raises(ValueError, match="noisy_actions"):
        net(x[:, :4], t, c)
    with pytest.raises(ValueError, match="global_cond"):
        net(x, t, c[:, :2])
    with pytest.raises(ValueError, match="timesteps"):
        net(x, t[:3], c)
    with pytest.raises(ValueError, match="action_dim"):
        build_denoiser(name, action_dim=0, horizon=8, cond_dim=3, **options)


@pytest.mark.parametrize("name,options", [("unet", TINY_UNET), ("mlp", TINY_MLP)])
def test_scalar_timestep_broadcasts(name, options):
    net = build_denoiser(name, action_dim=2, horizon=8, cond_dim=3, **options).eval()
    x, _, c = _inputs(4, 8, 2, 3)
    out_scalar = net(x, torch.tensor(17), c)
    out_vector = net(x, torch.full((4,), 17), c)
    torch.testing.assert_close(out_scalar, out_vector)


def test_sinusoidal_embedding_values_and_distinctness():
    emb = SinusoidalPosEmb(16)
    t = torch.arange(50)
    e = emb(t)
    assert e.shape == (50, 16)
    # closed form at t = 0 (sin 0 = 0, cos 0 = 1) and at t = 3 for the first frequency (1.0)
    torch.testing.assert_close(e[0], torch.cat((torch.zeros(8), torch.ones(8))))
    assert math.isclose(e[3, 0].item(), math.sin(3.0), abs_tol=1e-6)
    assert math.isclose(e[3, 8].item(), math.cos(3.0), abs_tol=1e-6)
    distances = torch.cdist(e, e) + torch.eye(50) * 1e3
    assert distances.min() > 1e-2  # every pair of distinct timesteps differs
    torch.testing.assert_close(emb(t.float()), e)  # float and long agree
    assert "freqs" not in emb.state_dict()  # derived buffer, not checkpointed
    with pytest.raises(ValueError, match="dim"):
        SinusoidalPosEmb(5)


def test_unet_batch_independence():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 8, 3, **TINY_UNET)
    x, t, c = _inputs(5, 8, 2, 3)
    x2, t2, c2 = _inputs(5, 8, 2, 3, seed=1)
    x2[2], t2[2], c2[2] = x[2], t[2], c[2]  # sample 2 is shared, the others differ
    for mode in (net.eval, net.train):  # GroupNorm: independent in both modes
        mode()
        torch.testing.assert_close(net(x, t, c)[2], net(x2, t2, c2)[2], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(x, t, c)[0], net(x2, t2, c2)[0])


def test_mlp_conditioned_is_forward():
    torch.manual_seed(0)
    net = MLPDenoiser(2, 4, 3, **TINY_MLP)
    x, t, c = _inputs(3, 4, 2, 3)
    torch.testing.assert_close(net.conditioned(c, t.tolist())(x, t), net(x, t, c))


@pytest.mark.parametrize("name,options", [("unet", TINY_UNET), ("mlp", TINY_MLP)])
def test_denoiser_overfits_fixed_mapping(name, options):
    torch.manual_seed(0)
    net = build_denoiser(name, action_dim=2, horizon=8, cond_dim=3, **options)
    x, t, c = _inputs(16, 8, 2, 3)
    target = torch.randn(16, 8, 2, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(x, t, c) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# ----------------------------------------------------------------------------- registry


def test_build_denoiser_registry_and_errors():
    assert set(DENOISERS) == {"unet", "mlp", "transformer"}
    assert isinstance(
        build_denoiser("unet", action_dim=2, horizon=8, cond_dim=3, **TINY_UNET), ConditionalUnet1D
    )
    mlp = build_denoiser("mlp", action_dim=2, horizon=8, cond_dim=3, **TINY_MLP)
    assert isinstance(mlp, MLPDenoiser) and isinstance(mlp, Denoiser)
    assert denoiser_options("mlp") == dict(hidden_dim=256, n_layers=4, timestep_embed_dim=128)
    with pytest.raises(ValueError, match="unet.*mlp|mlp.*unet"):
        build_denoiser("lstm", action_dim=2, horizon=8, cond_dim=3)
    with pytest.raises(TypeError, match="hidden_dim"):
        build_denoiser("unet", action_dim=2, horizon=8, cond_dim=3, hidden_dim=4)
    with pytest.raises(TypeError):
        Denoiser(2, 8, 3)  # abstract


# ----------------------------------------------------------------------------- vision


def test_random_crop_windows_are_per_sample_and_seeded():
    images = torch.arange(6 * 2 * 10 * 12, dtype=torch.float32).reshape(6, 2, 10, 12)
    crops = random_crop(images, (4, 5), torch.Generator().manual_seed(0))
    assert crops.shape == (6, 2, 4, 5)
    offsets = set()
    for i in range(6):  # each crop is exactly some window of its own image
        top, left = divmod(int(crops[i, 0, 0, 0].item()) - i * 240, 12)
        torch.testing.assert_close(crops[i], images[i, :, top : top + 4, left : left + 5])
        offsets.add((top, left))
    assert len(offsets) > 1  # offsets differ between samples
    again = random_crop(images, (4, 5), torch.Generator().manual_seed(0))
    other = random_crop(images, (4, 5), torch.Generator().manual_seed(1))
    torch.testing.assert_close(crops, again)
    assert not torch.equal(crops, other)
    with pytest.raises(ValueError, match="crop_shape"):
        random_crop(images, (11, 5))


def test_center_crop_matches_torchvision_convention():
    images = torch.randn(2, 3, 9, 10)
    torch.testing.assert_close(center_crop(images, (5, 6)), images[:, :, 2:7, 2:8])


def test_spatial_softmax_finds_the_peak():
    features = torch.zeros(1, 2, 5, 7)
    features[0, 0, 0, 6] = 50.0  # top-right -> (x, y) = (1, -1)
    features[0, 1, 4, 0] = 50.0  # bottom-left -> (-1, 1)
    kp = SpatialSoftmax((2, 5, 7), num_kp=None)(features)
    assert kp.shape == (1, 2, 2)
    torch.testing.assert_close(kp[0], torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), atol=1e-3, rtol=0)
    assert SpatialSoftmax((16, 3, 3), num_kp=4)(torch.randn(2, 16, 3, 3)).shape == (2, 4, 2)


def test_resnet_encoder_structure_and_no_download(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    enc = ResNetImageEncoder(input_shape=(3, 96, 96), crop_shape=(84, 84))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in enc.modules())
    assert enc.feature_dim == 64  # 2 * 32 keypoints, as LeRobot
    out = enc(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 64) and (out >= 0).all()
    with pytest.raises(ValueError, match="images"):
        enc(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="crop_shape"):
        ResNetImageEncoder(input_shape=(3, 64, 64), crop_shape=(72, 72))


def test_resnet_encoder_crop_modes():
    torch.manual_seed(0)
    enc = ResNetImageEncoder(input_shape=(3, 72, 72), crop_shape=(64, 64), feature_dim=16)
    images = torch.rand(3, 3, 72, 72)
    enc.train()
    a = enc(images, torch.Generator().manual_seed(0))
    b = enc(images, torch.Generator().manual_seed(1))
    c = enc(images, torch.Generator().manual_seed(0))
    assert a.shape == (3, 16)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)
    enc.eval()
    e1 = enc(images, torch.Generator().manual_seed(0))
    e2 = enc(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(e1, e2)
    # eval crop is the centre window: feeding the pre-cropped centre to an uncropped copy agrees
    no_crop = ResNetImageEncoder(input_shape=(3, 64, 64), crop_shape=None, feature_dim=16).eval()
    no_crop.load_state_dict(enc.state_dict())
    torch.testing.assert_close(no_crop(images[:, :, 4:68, 4:68]), e1)


def test_resnet_encoder_resize_then_crop():
    enc = ResNetImageEncoder(input_shape=(3, 48, 96), resize_shape=(72, 72), crop_shape=(64, 64))
    assert enc.pool.in_h == enc.pool.in_w == 2  # feature map of the 64x64 crop
    assert enc(torch.rand(2, 3, 48, 96)).shape == (2, 64)
    with pytest.raises(ValueError, match="1x1"):
        ResNetImageEncoder(input_shape=(3, 32, 32), crop_shape=(28, 28))


@pytest.mark.parametrize("share", [True, False])
def test_multi_image_encoder(share):
    torch.manual_seed(0)
    keys = ["observation.image", "wrist"]
    enc = MultiImageObsEncoder(
        keys, (3, 72, 72), share_encoder=share, crop_shape=(64, 64), spatial_softmax_num_keypoints=4
    ).eval()
    assert enc.output_dim == 2 * 8
    assert len(enc.encoders) == (1 if share else 2)
    obs = {k: torch.rand(2, 3, 3, 72, 72) for k in keys}
    obs["state"] = torch.rand(2, 3, 5)  # ignored
    out = enc(obs)
    assert out.shape == (2, 3, 16)
    # camera blocks are in image_keys order and each step/sample is encoded on its own
    single = enc.encoders[-1](obs["wrist"][1, 2:3])
    torch.testing.assert_close(out[1, 2, 8:], single[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="wrist"):
        enc({"observation.image": obs["observation.image"]})
    with pytest.raises(ValueError, match="wrist"):
        enc({**obs, "wrist": torch.rand(2, 4, 3, 72, 72)})
    assert not torch.allclose(out[0, 0, :8], out[0, 1, :8])  # features depend on the image
