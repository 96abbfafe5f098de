"""Image encoders by name, the compact encoder, and the bf16 capability check.

Every encoder is an :class:`~rlox_dp.networks.vision.ImageEncoder`: ``forward(images (B, C, H, W)
in [0, 1], generator) -> (B, output_dim)``, with the same resize / crop / spatial-softmax head;
they differ only in the trunk. ``IMAGE_ENCODERS`` lists them:

- ``"resnet18"``: the paper's ResNet-18 with GroupNorm (LeRobot parity; the default).
- ``"compact"``: :class:`CompactConvEncoder`, a four-layer conv net for CPU training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from rlox_dp.networks.vision import ImageEncoder, ResNetImageEncoder

__all__ = [
    "IMAGE_ENCODERS",
    "CompactConvEncoder",
    "build_image_encoder",
]

class CompactConvEncoder(ImageEncoder):
    """A small conv net ending in the same spatial softmax as the paper's encoder.

    Trunk: ``len(channels)`` 3x3 convolutions, each followed by GroupNorm (BatchNorm when
    ``use_group_norm`` is False) and ReLU, with the given strides. The default, channels
    ``(16, 32, 64)`` with strides ``(2, 2, 1)``, maps an 84x84 crop to a 21x21x64 feature map
    (the ResNet-18's is 3x3x512): finer keypoints from 30 k parameters instead of 11.2 M.

    Why this shape: candidates were timed side by side in one process as whole PushT image
    Diffusion Policy training steps (U-Net 32-64-128, batch 64, one CPU thread;
    ``benchmarks/image_encoders.py`` -> ``benchmarks/results/pusht_image_encoders.json``). This
    one was 12.7x and 13.3x cheaper per step than the ResNet-18 GN in float32 in two such
    measurements; the four-layer 32-32-64-64 (72 k parameters) only 4-7x, 16-32-32-64 11-12x. The
    two-layer 32-64 was as cheap within the noise of the shared machine (10.7x and 16.9x) but has
    no layer at the 21x21 resolution after its second stride. bf16 autocast barely changes its
    cost on this CPU (1.0-1.06x), while it halves the ResNet-18's.

    Args:
        channels: output channels of the convolutions (each a multiple of 8 for GroupNorm).
        strides: stride of each convolution (same length as ``channels``).
        use_group_norm: GroupNorm(C // 8, C) (True) or BatchNorm (False) after each convolution.
        options: :class:`ImageEncoder`'s arguments (``crop_shape``, ``precision`` ...).
    """

    def __init__(
        self, input_shape: Sequence[int] = (3, 96, 96), *, use_group_norm: bool = True,
        channels: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (2, 2, 1), **options: Any,
    ) -> None:
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)
        if not self.channels or len(self.channels) != len(self.strides):
            raise ValueError(
                f"channels and strides must be non-empty and of equal length, got {channels}, {strides}"
            )
        if any(c < 8 or c % 8 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ValueError(
                f"channels must be positive multiples of 8 and strides >= 1, got {channels}, {strides}"
            )
        self.use_group_norm = use_group_norm
        super().__init__(input_shape, **options)

    def build_backbone(self, in_channels: int) -> nn.Module:
        """Conv3x3 -> norm -> ReLU per entry of ``channels`` / ``strides``."""
        layers: list[nn.Module] = []
        for out, stride in zip(self.channels, self.strides, strict=True):
            norm = nn.GroupNorm(out // 8, out) if self.use_group_norm else nn.BatchNorm2d(out)
            layers += [nn.Conv2d(in_channels, out, 3, stride, 1, bias=False), norm, nn.ReLU()]
            in_channels = out
        return nn.Sequential(*layers)


IMAGE_ENCODERS: dict[str, type[ImageEncoder]] = {
    "resnet18": ResNetImageEncoder,
    "compact": CompactConvEncoder,
}
"""Encoder name -> class; ``vision_backbone`` in the configs takes these names."""


def build_image_encoder(name: str, input_shape: Sequence[int], **kwargs: Any) -> ImageEncoder:
    """Build the encoder called ``name`` (a key of :data:`IMAGE_ENCODERS`) for ``(C, H, W)`` images.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones).
    """
    if name not in IMAGE_ENCODERS:
        raise ValueError(f"unknown vision_backbone {name!r}; expected one of {sorted(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[name](input_shape, **kwargs)
