"""Image observation encoders: ResNet-18 with GroupNorm and a spatial-softmax head.

Follows the original Diffusion Policy vision setup (robomimic-style ResNet-18 trained from
scratch, BatchNorm replaced by GroupNorm, spatial softmax keypoints) and LeRobot's
``DiffusionRgbEncoder`` (module names ``backbone``, ``pool``, ``out``; output size
``2 * spatial_softmax_num_keypoints``). Images are expected as float in [0, 1] and are *not*
normalized with ImageNet statistics: there are no pretrained weights whose input statistics
would need matching; any dataset normalization belongs to the preprocessing layer.
Weights are never downloaded (``torchvision.models.resnet18(weights=None)``).

Random crops use an independent offset per image (as robomimic's ``CropRandomizer`` in the
original; LeRobot's ``RandomCrop`` uses one offset per batch) and draw from the ``generator``
passed to ``forward`` (torch's default generator when it is ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rlox_dp.image_layout import check_channels_first
from rlox_dp.networks.precision import VISION_PRECISIONS, resolve_vision_precision

__all__ = [
    "ImageEncoder",
    "MultiImageObsEncoder",
    "ResNetImageEncoder",
    "SpatialSoftmax",
    "center_crop",
    "random_crop",
]


def _check_crop(images: torch.Tensor, crop_shape: tuple[int, int]) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if crop_shape[0] > images.shape[-2] or crop_shape[1] > images.shape[-1]:
        raise ValueError(
            f"crop_shape {crop_shape} is larger than the image size {tuple(images.shape[-2:])}"
        )


def center_crop(images: torch.Tensor, crop_shape: tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``crop_shape`` window (offsets as torchvision's ``CenterCrop``).

    Args:
        images: ``(N, C, H, W)``.
        crop_shape: ``(h, w)``.

    Returns:
        ``(N, C, h, w)`` view of ``images``.
    """
    _check_crop(images, crop_shape)
    h, w = crop_shape
    top = int(round((images.shape[-2] - h) / 2.0))
    left = int(round((images.shape[-1] - w) / 2.0))
    return images[..., top : top + h, left : left + w]


def random_crop(
    images: torch.Tensor, crop_shape: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop a ``crop_shape`` window at an independent uniform random offset for every image.

    One vectorized ``gather``; no Python loop over the batch.

    Args:
        images: ``(N, C, H, W)``.
        crop_shape: ``(h, w)``.
        generator: source of the offsets (on any device); torch's default one when ``None``.

    Returns:
        ``(N, C, h, w)`` crops.
    """
    _check_crop(images, crop_shape)
    n, c, height, width = images.shape
    h, w = crop_shape
    rng_device = generator.device if generator is not None else images.device
    offsets = torch.stack(
        (
            torch.randint(0, height - h + 1, (n,), generator=generator, device=rng_device),
            torch.randint(0, width - w + 1, (n,), generator=generator, device=rng_device),
        ),
        dim=1,
    ).to(images.device)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (N, h)
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (N, w)
    flat_index = (rows.unsqueeze(2) * width + cols.unsqueeze(1)).reshape(n, 1, h * w)
    crops = images.reshape(n, c, height * width).gather(2, flat_index.expand(n, c, h * w))
    return crops.reshape(n, c, h, w)


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax keypoints (Finn et al. 2016; robomimic / LeRobot port).

    A 1x1 convolution maps the ``C`` feature channels to ``num_kp`` maps; each map is
    softmax-normalized over its ``H * W`` positions and the expected ``(x, y)`` position is
    returned, with x along the width and y along the height, both in [-1, 1].

    Args:
        input_shape: ``(C, H, W)`` of the incoming feature maps.
        num_kp: number of keypoints ``K``; ``None`` keeps one keypoint per input channel.
    """

    pos_grid: torch.Tensor

    def __init__(self, input_shape: Sequence[int], num_kp: int | None = 32) -> None:
        super().__init__()
        if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape}")
        self.in_c, self.in_h, self.in_w = (int(s) for s in input_shape)
        if num_kp is not None and num_kp < 1:
            raise ValueError(f"num_kp must be a positive int or None, got {num_kp}")
        self.nets = nn.Conv2d(self.in_c, num_kp, kernel_size=1) if num_kp is not None else None
        self.num_kp = num_kp if num_kp is not None else self.in_c
        pos_y, pos_x = torch.meshgrid(
            torch.linspace(-1.0, 1.0, self.in_h, dtype=torch.float64),
            torch.linspace(-1.0, 1.0, self.in_w, dtype=torch.float64),
            indexing="ij",
        )
        grid = torch.stack((pos_x.reshape(-1), pos_y.reshape(-1)), dim=1).float()  # (H*W, 2)
        self.register_buffer("pos_grid", grid, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` feature maps -> ``(B, K, 2)`` expected ``(x, y)`` in [-1, 1]."""
        if features.ndim != 4 or tuple(features.shape[1:]) != (self.in_c, self.in_h, self.in_w):
            raise ValueError(
                f"features must have shape (B, {self.in_c}, {self.in_h}, {self.in_w}), "
                f"got {tuple(features.shape)}"
            )
        if self.nets is not None:
            features = self.nets(features)
        attention = F.softmax(features.reshape(-1, self.in_h * self.in_w), dim=-1)
        return (attention @ self.pos_grid).reshape(-1, self.num_kp, 2)


def _replace_batchnorm_with_groupnorm(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d(C)`` inside ``module`` by ``GroupNorm(C // 16, C)`` in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(child.num_features // 16, child.num_features))
        else:
            _replace_batchnorm_with_groupnorm(child)


class ImageEncoder(nn.Module):
    """The interface and shared pipeline of every image encoder (``IMAGE_ENCODERS`` lists them).

    ``(B, C, H, W)`` float images in [0, 1] -> optional bilinear (antialiased) resize -> crop
    (random per image in train mode when ``crop_is_random``, centre crop otherwise) ->
    ``backbone`` (built by the subclass in :meth:`build_backbone`) -> :class:`SpatialSoftmax` ->
    flatten -> Linear -> ReLU -> ``(B, feature_dim)``.

    ``precision="bfloat16"`` runs the backbone under bf16 autocast on channels-last input (the
    spatial softmax and the output layer stay float32; the weights are float32 whatever the
    precision); ``"float32"`` is the plain path; ``"auto"`` picks bf16 on each call where the
    images' device has native bf16 (:func:`rlox_dp.networks.precision.bf16_is_fast`).

    Args:
        input_shape: ``(C, H, W)`` of the incoming images.
        crop_shape: ``(h, w)`` crop applied after the resize, or ``None`` for no crop.
        crop_is_random: random crops in train mode (eval mode always centre-crops).
        resize_shape: ``(h, w)`` to resize to first, or ``None``.
        spatial_softmax_num_keypoints: ``K``.
        feature_dim: output size; ``None`` gives ``2 * K`` (LeRobot's choice: 64 for K = 32).
        precision: ``"float32"``, ``"bfloat16"`` (backbone autocast + channels-last) or ``"auto"``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 96, 96),
        crop_shape: tuple[int, int] | None = (84, 84),
        crop_is_random: bool = True,
        resize_shape: tuple[int, int] | None = None,
        spatial_softmax_num_keypoints: int = 32,
        feature_dim: int | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape}")
        self.input_shape = tuple(int(s) for s in input_shape)
        check_channels_first(self.input_shape, "input_shape")
        self.resize_shape = tuple(resize_shape) if resize_shape is not None else None
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None
        self.crop_is_random = crop_is_random
        pre_crop = self.resize_shape or self.input_shape[1:]
        if self.crop_shape is not None and (
            self.crop_shape[0] > pre_crop[0] or self.crop_shape[1] > pre_crop[1]
        ):
            raise ValueError(
                f"crop_shape {self.crop_shape} must fit in the (resized) image size {pre_crop}"
            )
        self.feature_dim = (
            2 * spatial_softmax_num_keypoints if feature_dim is None else int(feature_dim)
        )
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int or None, got {feature_dim}")
        if precision not in VISION_PRECISIONS:
            raise ValueError(f"precision must be one of {VISION_PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.backbone = self.build_backbone(self.input_shape[0])
        net_shape = self.crop_shape or pre_crop
        with torch.no_grad():
            feature_shape = self.backbone(torch.zeros(1, self.input_shape[0], *net_shape)).shape
        if feature_shape[-2] * feature_shape[-1] < 2:
            raise ValueError(
                f"images of size {tuple(net_shape)} after resize_shape/crop_shape give a 1x1 "
                f"feature map in {type(self).__name__}, on which the spatial softmax is constant; "
                "use larger images"
            )
        self.pool = SpatialSoftmax(feature_shape[1:], num_kp=spatial_softmax_num_keypoints)
        self.out = nn.Linear(2 * spatial_softmax_num_keypoints, self.feature_dim)
        self.relu = nn.ReLU()

    def build_backbone(self, in_channels: int) -> nn.Module:
        """The trunk: ``(B, in_channels, h, w)`` -> ``(B, C', h', w')`` feature maps."""
        raise NotImplementedError

    @property
    def output_dim(self) -> int:
        """``feature_dim``: size of the encoding of one image."""
        return self.feature_dim

    def preprocess(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Check, resize and crop: ``(B, C, H, W)`` -> ``(B, C, h, w)`` (crop size, or resized)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images must have shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(images.shape)}"
            )
        if self.resize_shape is not None:
            images = F.interpolate(
                images, size=self.resize_shape, mode="bilinear", align_corners=False, antialias=True
            )
        if self.crop_shape is not None:
            if self.training and self.crop_is_random:
                images = random_crop(images, self.crop_shape, generator)
            else:
                images = center_crop(images, self.crop_shape)
        return images

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, C, H, W)`` float images in [0, 1] -> ``(B, feature_dim)``.

        ``generator`` drives the train-mode random crop (ignored otherwise).
        """
        images = self.preprocess(images, generator)
        if resolve_vision_precision(self.precision, images.device) == "bfloat16":
            with torch.autocast(images.device.type, dtype=torch.bfloat16):
                features = self.backbone(images.contiguous(memory_format=torch.channels_last))
            features = features.float()
        else:
            features = self.backbone(images)
        keypoints = self.pool(features)
        return self.relu(self.out(keypoints.flatten(start_dim=1)))


class ResNetImageEncoder(ImageEncoder):
    """The paper's encoder: ResNet-18 trunk without avgpool/fc, random init, spatial softmax.

    BatchNorm is replaced by GroupNorm(C // 16, C) when ``use_group_norm`` (recommended: small
    batches, EMA). 11.2 M parameters; 84x84 crops give a 3x3 feature map. ``options`` are
    :class:`ImageEncoder`'s (``crop_shape``, ``precision`` ...).
    """

    def __init__(
        self, input_shape: Sequence[int] = (3, 96, 96), *, use_group_norm: bool = True,
        **options: Any,
    ) -> None:
        self.use_group_norm = use_group_norm
        super().__init__(input_shape, **options)

    def build_backbone(self, in_channels: int) -> nn.Module:
        """ResNet-18 children up to ``layer4`` (stride 32)."""
        resnet = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        backbone = nn.Sequential(*list(resnet.children())[:-2])  # drop avgpool and fc
        if self.use_group_norm:
            _replace_batchnorm_with_groupnorm(backbone)
        return backbone


class MultiImageObsEncoder(nn.Module):
    """Encode several camera streams over ``T`` observation steps into one feature vector.

    With ``share_encoder`` one :class:`ImageEncoder` processes all cameras in a single
    batch; otherwise each camera has its own. Features are concatenated in ``image_keys``
    order: ``out[..., k * F:(k + 1) * F]`` belongs to camera ``image_keys[k]``.

    Args:
        image_keys: observation keys of the cameras (all of shape ``input_shape``).
        input_shape: ``(C, H, W)`` of each image.
        share_encoder: one encoder for all cameras (True) or one per camera.
        backbone: encoder name, one of ``rlox_dp.networks.encoders.IMAGE_ENCODERS``
            (``"resnet18"``: the paper's; ``"compact"``: a small conv net, ~10x cheaper).
        **encoder_kwargs: forwarded to the encoder's constructor.
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        input_shape: Sequence[int] = (3, 96, 96),
        share_encoder: bool = True,
        backbone: str = "resnet18",
        **encoder_kwargs: object,
    ) -> None:
        # imported here: the encoder registry imports this module
        from rlox_dp.networks.encoders import build_image_encoder

        super().__init__()
        self.image_keys = tuple(image_keys)
        if not self.image_keys or len(set(self.image_keys)) != len(self.image_keys):
            raise ValueError(f"image_keys must be non-empty and unique, got {list(image_keys)}")
        self.share_encoder = share_encoder
        n_encoders = 1 if share_encoder else len(self.image_keys)
        self.encoders = nn.ModuleList(
            build_image_encoder(backbone, input_shape, **encoder_kwargs) for _ in range(n_encoders)
        )
        self.input_shape = self.encoders[0].input_shape

    @property
    def output_dim(self) -> int:
        """``n_cams * feature_dim``."""
        return len(self.image_keys) * self.encoders[0].feature_dim

    def forward(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``{key: (B, T, C, H, W)}`` -> ``(B, T, n_cams * feature_dim)``.

        Keys of ``obs`` outside ``image_keys`` are ignored. ``generator`` drives random crops.
        """
        missing = [k for k in self.image_keys if k not in obs]
        if missing:
            raise KeyError(f"obs is missing image keys {missing}; it has {sorted(obs)}")
        first = obs[self.image_keys[0]]
        lead = tuple(first.shape[:2])
        for key in self.image_keys:
            shape = tuple(obs[key].shape)
            if len(shape) != 5 or shape[:2] != lead or shape[2:] != self.input_shape:
                raise ValueError(
                    f"obs[{key!r}] must have shape (B, T, {', '.join(map(str, self.input_shape))}) "
                    f"with the same (B, T) = {lead} for every camera, got {shape}"
                )
        batch, steps = lead
        if self.share_encoder:
            images = (obs[self.image_keys[0]] if len(self.image_keys) == 1 else  # no copy
                      torch.stack([obs[k] for k in self.image_keys], dim=2))  # (B, T, N, C, H, W)
            features = self.encoders[0](images.reshape(-1, *self.input_shape), generator)
            return features.reshape(batch, steps, self.output_dim)
        features = [
            encoder(obs[key].reshape(-1, *self.input_shape), generator).reshape(batch, steps, -1)
            for key, encoder in zip(self.image_keys, self.encoders, strict=True)
        ]
        return torch.cat(features, dim=-1)
