"""Image encoders by name: the same tests for the paper's ResNet-18 and the compact conv net."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rlox_dp.algorithms.diffusion import DiffusionConfig, DiffusionPolicy
from rlox_dp.algorithms.observation import ObservationEncoder, split_observation_keys
from rlox_dp.buffers import Normalizer
from rlox_dp.config import ConfigError
from rlox_dp.networks import precision
from rlox_dp.networks.encoders import IMAGE_ENCODERS, CompactConvEncoder, build_image_encoder
from rlox_dp.networks.vision import ImageEncoder, MultiImageObsEncoder, ResNetImageEncoder

torch.set_num_threads(1)
ENCODERS = sorted(IMAGE_ENCODERS)


def _encoder(name: str, input_shape=(3, 48, 48), **kwargs) -> ImageEncoder:
    torch.manual_seed(0)
    options = {"crop_shape": (40, 40), "spatial_softmax_num_keypoints": 8, **kwargs}
    return build_image_encoder(name, input_shape, **options)


def test_registry_lists_both_and_rejects_unknown_names():
    assert set(IMAGE_ENCODERS) == {"resnet18", "compact"}
    assert IMAGE_ENCODERS["resnet18"] is ResNetImageEncoder
    assert IMAGE_ENCODERS["compact"] is CompactConvEncoder
    with pytest.raises(ValueError, match="'resnet9'.*compact"):
        build_image_encoder("resnet9", (3, 48, 48))
    assert DiffusionConfig().vision_backbone == "resnet18"  # the paper's stays the default
    with pytest.raises(ConfigError, match="vision_backbone"):
        DiffusionConfig(vision_backbone="vgg")


@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_and_interface(name):
    enc = _encoder(name)
    assert isinstance(enc, ImageEncoder)
    assert enc.output_dim == enc.feature_dim == 16  # 2 * K
    out = enc(torch.rand(5, 3, 48, 48), torch.Generator().manual_seed(0))
    assert out.shape == (5, 16) and (out >= 0).all()
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 48, 48\)"):
        enc(torch.rand(5, 3, 40, 40))
    assert _encoder(name, feature_dim=7)(torch.rand(2, 3, 48, 48)).shape == (2, 7)


@pytest.mark.parametrize("name", ENCODERS)
def test_crop_behaviour_and_determinism(name):
    enc = _encoder(name).train()
    images = torch.rand(4, 3, 48, 48)
    a = enc(images, torch.Generator().manual_seed(0))
    b = enc(images, torch.Generator().manual_seed(1))
    c = enc(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, c, rtol=0, atol=0)  # same generator, same crops, same output
    assert not torch.allclose(a, b)  # other crops
    enc.eval()  # centre crop whatever the generator
    e = enc(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(e, enc(images, torch.Generator().manual_seed(5)), rtol=0, atol=0)
    uncropped = _encoder(name, (3, 40, 40), crop_shape=None)
    uncropped.load_state_dict(enc.state_dict())
    torch.testing.assert_close(uncropped.eval()(images[:, :, 4:44, 4:44]), e)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
    enc = _encoder(name).train()
    enc(torch.rand(3, 3, 48, 48), torch.Generator().manual_seed(0)).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", ENCODERS)
def test_bf16_channels_last_path_matches_float32(name):
    """The fast path (bf16 autocast, channels-last) against the plain float32 one, same weights."""
    plain = _encoder(name).eval()
    fast = _encoder(name, precision="bfloat16").eval()
    fast.load_state_dict(plain.state_dict())
    images = torch.rand(6, 3, 48, 48)
    ref, out = plain(images), fast(images)
    assert out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in fast.parameters())  # weights stay float32
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 0.05 * scale  # bf16 has ~3 significant digits
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.99
    fast.train()
    fast(images, torch.Generator().manual_seed(0)).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())


def test_precision_is_chosen_by_a_capability_check(monkeypatch):
    assert precision.resolve_vision_precision("float32", "cpu") == "float32"
    assert precision.resolve_vision_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="vision_precision"):
        precision.resolve_vision_precision("fp8", "cpu")
    for fast in (True, False):
        monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type, fast=fast: fast)
        assert precision.resolve_vision_precision("auto", "cpu") == ("bfloat16" if fast else "float32")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        assert precision.bf16_is_fast("cuda") is False
    assert precision.bf16_is_fast("mps") is False


def test_compact_encoder_is_small_with_a_fine_feature_map():
    enc = build_image_encoder("compact", (3, 96, 96))
    paper = build_image_encoder("resnet18", (3, 96, 96))
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(enc) * 50 < n_params(paper)
    assert (enc.pool.in_h, enc.pool.in_w) == (21, 21) and (paper.pool.in_h, paper.pool.in_w) == (3, 3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    with pytest.raises(ValueError, match="channels"):
        CompactConvEncoder((3, 96, 96), channels=(16, 30), strides=(2, 2))
    with pytest.raises(ValueError, match="equal length"):
        CompactConvEncoder((3, 96, 96), channels=(16, 32), strides=(2,))


def test_multi_camera_encoder_takes_the_backbone_by_name():
    enc = MultiImageObsEncoder(["a", "b"], (3, 48, 48), backbone="compact", crop_shape=(40, 40),
                               spatial_softmax_num_keypoints=4)
    assert isinstance(enc.encoders[0], CompactConvEncoder)
    assert enc({"a": torch.rand(2, 3, 3, 48, 48), "b": torch.rand(2, 3, 3, 48, 48)}).shape == (2, 3, 16)


# --- issue 16 item 4: channel-last images are refused, not read as channels ---------------------
def _spaces(image_shape):
    obs = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, image_shape, np.uint8),
                           "agent_pos": gym.spaces.Box(-1, 1, (2,), np.float32)})
    return obs, gym.spaces.Box(-1, 1, (2,), np.float32)


def test_channel_last_env_space_is_refused_with_a_clear_error():
    obs_space, act_space = _spaces((64, 64, 3))
    with pytest.raises(ValueError, match=r"'image'.*\(64, 64, 3\).*channel-last.*\(3, 64, 64\)"):
        split_observation_keys(obs_space)
    raw = {"image": np.zeros((2, 64, 64, 3), np.uint8), "agent_pos": np.zeros((2, 2), np.float32),
           "action": np.zeros((2, 2), np.float32)}
    normalizer = Normalizer.fit(raw, {"image": "image", "agent_pos": "min_max", "action": "min_max"})
    config = DiffusionConfig(crop_shape=None, down_dims=(16, 32), n_groups=4, horizon=8,
                             diffusion_step_embed_dim=16, num_train_timesteps=10)
    with pytest.raises(ValueError, match="channel-last"):  # was: a Conv2d(64, 64) trained silently
        DiffusionPolicy(config, obs_space, act_space, normalizer)
    with pytest.raises(ValueError, match="channel-last"):
        build_image_encoder("compact", (64, 64, 3), crop_shape=None)
    # channel-first spaces (and stacked frames with many channels) are accepted
    assert split_observation_keys(_spaces((3, 64, 64))[0]) == (["agent_pos"], ["image"])
    encoder = ObservationEncoder(_spaces((9, 32, 32))[0], 2, {"backbone": "compact", "crop_shape": None})
    assert encoder.image_encoder.input_shape == (9, 32, 32)
