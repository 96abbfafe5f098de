"""Image layout convention: rlox_dp images are channel-first ``(C, H, W)`` uint8 or float.

Cameras and many datasets produce channel-last ``(H, W, C)`` arrays; read as channel-first, a
``(64, 64, 3)`` image would become 64 channels of 64x3 pixels and train without an error. The
checks here refuse such shapes, in env spaces (``ObservationEncoder``) and in data
(``DemonstrationBuffer``), with a message that says how to convert.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IMAGE_CHANNELS", "check_channels_first", "looks_channels_last"]

#: channel counts of camera images (grey, RGB, RGBA)
IMAGE_CHANNELS = (1, 3, 4)


def looks_channels_last(shape: Sequence[int]) -> bool:
    """True when a 3-D image ``shape`` reads as ``(H, W, C)``: last size 1/3/4, first one not."""
    return len(shape) == 3 and shape[-1] in IMAGE_CHANNELS and shape[0] not in IMAGE_CHANNELS


def check_channels_first(shape: Sequence[int], name: str) -> None:
    """Refuse a channel-last ``(H, W, C)`` image shape, which would be read as ``C = H`` channels.

    Raises:
        ValueError: naming ``name``, the shape, and how to convert (``np.moveaxis(x, -1, -3)``).
    """
    shape = tuple(int(s) for s in shape)
    if looks_channels_last(shape):
        raise ValueError(
            f"{name} has shape {shape}, which looks channel-last (H, W, C) = {shape}; rlox_dp "
            f"expects channel-first (C, H, W) = {(shape[2], shape[0], shape[1])} images. Convert "
            "the data with np.moveaxis(x, -1, -3) (or load it with channels_last_keys=[...]) and "
            "the env with gymnasium.wrappers.TransformObservation / a transposing wrapper"
        )
