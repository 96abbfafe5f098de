"""Training windows over demonstrations, sampled uniformly with vectorized gathers.

Windowing follows the original Diffusion Policy ``SequenceSampler``. A window whose first
observation step is ``s`` (``To = n_obs_steps``, ``H = horizon``, ``Ta = n_action_steps``)::

    step:      s   s+1  ...  s+To-1  ...  s+H-1
    obs:       o   o    ...  o                       (To observations)
    action:    a   a    ...  a       ...  a          (H actions, action[0] taken at step s)
    executed:                a ... (Ta actions from step s+To-1)

Indices outside the episode ``[0, L)`` are clamped to its edge (edge replication);
``action_is_pad`` marks the replicated actions. Starts run from ``-(To - 1)`` (pad before)
to ``L - H + (Ta - 1) - drop_n_last_frames`` (pad after); an episode too short for that
range still yields the single window starting at ``-(To - 1)``. Every window of every
episode is one row of a flat table, so sampling is uniform over windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rlox_dp.buffers.demonstrations import Batch, Demonstrations
from rlox_dp.buffers.normalizer import Normalizer, NormMode, first_nonfinite_row
from rlox_dp.image_layout import check_channels_first
from rlox_dp.window import Window

__all__ = ["DemonstrationBuffer", "validate_demonstrations"]

ACTION_KEY = "action"


def _is_real_numeric(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)


def validate_demonstrations(demos: Demonstrations, channels_last_keys: Sequence[str] = ()) -> None:
    """Check shapes, episode boundaries and finiteness of ``demos``; raise ValueError if wrong.

    ``channels_last_keys`` names image keys deliberately stored ``(N, H, W, C)`` (the human
    PushT dataset's ``img`` layout, written by :func:`save_demonstrations`); they skip the
    channel-first check. Training data never does (the buffer validates without it).

    Checks: at least one observation key; ``actions`` is ``(N, D_act)`` real numeric;
    every observation is ``(N, ...)``, images channel-first ``(N, C, H, W)`` (a channel-last
    ``(N, H, W, C)`` image is refused, see :mod:`rlox_dp.image_layout`); ``episode_ends`` is a non-empty 1-D integer array,
    positive, strictly increasing, with ``episode_ends[-1] == N``; ``rewards`` is ``(N,)``
    and ``episode_seeds`` ``(E,)`` when given; no NaN/inf in observations or actions (the
    error names the key, the step and the episode).
    """
    if not isinstance(demos, Demonstrations):
        raise TypeError(f"demos must be a Demonstrations, got {type(demos).__name__}")
    actions = demos.actions
    if not isinstance(actions, np.ndarray) or actions.ndim != 2 or not _is_real_numeric(actions):
        got = f"shape {actions.shape}, dtype {actions.dtype}" if isinstance(actions, np.ndarray) else type(actions).__name__
        raise ValueError(f"actions must be a real numeric array of shape (N, D_act), got {got}")
    n = actions.shape[0]
    if n == 0:
        raise ValueError("demonstrations are empty: actions has N = 0 steps")
    if not demos.observations:
        raise ValueError("observations must hold at least one key, got an empty dict")
    for key, obs in demos.observations.items():
        if not isinstance(obs, np.ndarray) or obs.ndim < 1 or not _is_real_numeric(obs):
            raise ValueError(f"observations[{key!r}] must be a real numeric array (N, ...), got {obs!r:.80}")
        if obs.ndim == 4 and key not in channels_last_keys:
            check_channels_first(obs.shape[1:], f"observations[{key!r}] (per step)")
        if obs.shape[0] != n:
            raise ValueError(
                f"observations[{key!r}] has {obs.shape[0]} steps but actions has N = {n}"
            )
    ends = demos.episode_ends
    if not isinstance(ends, np.ndarray) or ends.ndim != 1 or ends.size == 0 or not np.issubdtype(ends.dtype, np.integer):
        raise ValueError(f"episode_ends must be a non-empty 1-D integer array, got {ends!r:.80}")
    if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        raise ValueError(f"episode_ends must be positive and strictly increasing, got {ends.tolist()[:10]}...")
    if ends[-1] != n:
        raise ValueError(f"episode_ends[-1] must equal the number of steps N = {n}, got {int(ends[-1])}")
    if demos.rewards is not None and np.shape(demos.rewards) != (n,):
        raise ValueError(f"rewards must have shape ({n},), got {np.shape(demos.rewards)}")
    if demos.episode_seeds is not None and np.shape(demos.episode_seeds) != (ends.size,):
        raise ValueError(f"episode_seeds must have shape ({ends.size},), got {np.shape(demos.episode_seeds)}")
    for key, arr in [(ACTION_KEY, actions), *demos.observations.items()]:
        row = first_nonfinite_row(arr)
        if row is not None:
            episode = int(np.searchsorted(ends, row, side="right"))
            start = int(ends[episode - 1]) if episode > 0 else 0
            raise ValueError(
                f"{key!r} contains NaN or inf at step {row} (episode {episode}, step {row - start} "
                "within the episode)"
            )


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _is_uint8_image(x: np.ndarray, chunk: int = 1024) -> bool:
    """True when ``x`` is uint8, or float/int holding only integers in 0..255 (checked in chunks)."""
    if x.dtype == np.uint8:
        return True
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        if block.min() < 0 or block.max() > 255:
            return False
        if np.issubdtype(block.dtype, np.floating) and not np.array_equal(block, np.round(block)):
            return False
    return True


def _to_tensor(x: np.ndarray, dtype: type) -> torch.Tensor:
    """``x`` as a CPU tensor of numpy ``dtype``; shares memory when no conversion is needed."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


class DemonstrationBuffer:
    """Normalized demonstrations on ``device``, served as fixed-length training windows.

    Args:
        demos: the episodes (validated here).
        window: the policy's :class:`~rlox_dp.window.Window` (``policy_config.window``):
            ``To`` observations and ``H`` actions per window; ``Ta`` (actions executed per
            inference) sets the padding after the episode end (``Ta - 1``); the last
            ``drop_n_last_frames`` starts of each episode are removed (LeRobot).
        normalization: per-key :data:`NormMode` overrides. Defaults: ``"image"`` for
            observation keys with ``ndim >= 4`` (``(N, C, H, W)``), ``"min_max"`` otherwise
            (including ``"action"``).
        normalizer: a fitted normalizer (e.g. from a checkpoint) used instead of fitting; its
            keys and shapes must match the data. Mutually exclusive with ``normalization``.
        device: where the data lives and batches are produced.

    Storage: every key is normalized once here and kept as float32 on ``device``, except
    image keys in mode ``"image"`` holding integers 0..255, which stay uint8 ``(N, C, H, W)``
    and become float ``[0, 1]`` per batch. On the CPU, a uint8 image array of ``demos`` is
    used without a copy (PushT: 0.7 GB), so do not modify it while the buffer is in use.
    """

    def __init__(
        self,
        demos: Demonstrations,
        window: Window,
        *,
        normalization: Mapping[str, NormMode] | None = None,
        normalizer: Normalizer | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(window, Window):
            raise TypeError(f"window must be a rlox_dp.Window (a policy config's .window), got {window!r}")
        self._window = window
        self._n_obs_steps, self._horizon = window.n_obs_steps, window.horizon
        self._n_action_steps, self._drop = window.n_action_steps, window.drop_n_last_frames
        validate_demonstrations(demos)
        if ACTION_KEY in demos.observations:
            raise ValueError(f"observation key {ACTION_KEY!r} clashes with the action key; rename it")
        if normalization is not None and normalizer is not None:
            raise ValueError("pass either normalization (modes to fit) or normalizer (fitted), not both")
        self._device = torch.device(device)
        self._obs_shapes = {k: tuple(v.shape[1:]) for k, v in demos.observations.items()}
        self._action_dim = int(demos.actions.shape[1])

        raw = {**demos.observations, ACTION_KEY: demos.actions}
        if normalizer is None:
            modes: dict[str, NormMode] = {
                k: ("image" if len(s) >= 3 else "min_max") for k, s in self._obs_shapes.items()
            }
            modes[ACTION_KEY] = "min_max"
            unknown = sorted(set(normalization or {}) - set(modes))
            if unknown:
                raise ValueError(f"normalization names unknown keys {unknown}; data keys are {sorted(modes)}")
            modes.update(normalization or {})
            normalizer = Normalizer.fit(raw, modes).to(self._device)
        else:
            expected = {k: list(v.shape[1:]) for k, v in raw.items()}
            got = {k: e["shape"] for k, e in normalizer.spec().items()}
            if got != expected:
                raise ValueError(f"normalizer keys/shapes {got} do not match the data {expected}")
        self._normalizer = normalizer

        # Keys kept raw as uint8 and normalized per batch; everything else normalized now.
        self._uint8_keys = {
            k for k, s in self._obs_shapes.items()
            if len(s) >= 3 and normalizer.mode(k) == "image" and _is_uint8_image(raw[k])
        }
        self._data: dict[str, torch.Tensor] = {}
        for key, arr in raw.items():
            if key in self._uint8_keys:
                self._data[key] = _to_tensor(arr, np.uint8).to(self._device)
            else:
                self._data[key] = normalizer.normalize(key, _to_tensor(arr, np.float32).to(self._device))

        # Flat window table: global index of the first step, and the episode bounds [lo, hi).
        ends = demos.episode_ends.astype(np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        lengths = ends - starts
        min_start = -(self._n_obs_steps - 1)
        max_start = lengths - self._horizon + (self._n_action_steps - 1) - self._drop
        counts = np.maximum(max_start, min_start) - min_start + 1
        episode = np.repeat(np.arange(ends.size), counts)
        offset_in_episode = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        first = starts[episode] + min_start + offset_in_episode
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.long, device=self._device)  # noqa: E731
        self._win_first = as_tensor(first)
        self._win_lo = as_tensor(starts[episode])
        self._win_hi = as_tensor(ends[episode])
        self._episode_of_window = as_tensor(episode)
        self._obs_offsets = torch.arange(self._n_obs_steps, device=self._device)
        self._act_offsets = torch.arange(self._horizon, device=self._device)

    # ----------------------------------------------------------------- properties
    @property
    def num_windows(self) -> int:
        """Number of distinct training windows over all episodes."""
        return int(self._win_first.shape[0])

    def __len__(self) -> int:
        return self.num_windows

    @property
    def normalizer(self) -> Normalizer:
        """The normalizer applied to stored data; save it with the policy."""
        return self._normalizer

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Observation keys, in the order of ``demos.observations``."""
        return tuple(self._obs_shapes)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Observation key -> feature shape (without N or T)."""
        return dict(self._obs_shapes)

    @property
    def action_dim(self) -> int:
        """``D_act``."""
        return self._action_dim

    @property
    def window_spec(self) -> Window:
        """The :class:`~rlox_dp.window.Window` the training windows are cut with."""
        return self._window

    @property
    def n_obs_steps(self) -> int:
        """``To``."""
        return self._n_obs_steps

    @property
    def horizon(self) -> int:
        """``H``."""
        return self._horizon

    @property
    def n_action_steps(self) -> int:
        """``Ta``."""
        return self._n_action_steps

    @property
    def device(self) -> torch.device:
        """Device holding the data and the produced batches."""
        return self._device

    @property
    def storage_nbytes(self) -> dict[str, int]:
        """Bytes held per stored key (observations and ``"action"``; not the window table).

        A uint8 image key holds one byte per pixel and channel: windows index into it, nothing is
        copied per window and no float copy of the images is kept.
        """
        return {key: data.numel() * data.element_size() for key, data in self._data.items()}

    def stored(self, key: str) -> torch.Tensor:
        """The stored ``(N, ...)`` tensor of ``key`` (uint8 images, else normalized float32)."""
        if key not in self._data:
            raise KeyError(f"no stored key {key!r}; the buffer holds {sorted(self._data)}")
        return self._data[key]

    @property
    def episode_of_window(self) -> torch.Tensor:
        """``(num_windows,)`` long: the episode each window comes from."""
        return self._episode_of_window

    # ------------------------------------------------------------------- batches
    def window(self, indices: torch.Tensor) -> Batch:
        """Gather windows by index.

        Args:
            indices: ``(B,)`` long in ``[0, num_windows)``.

        Returns:
            :class:`Batch` with obs ``(B, To, *obs_shape)`` float32, action ``(B, H, D_act)``
            float32 and action_is_pad ``(B, H)`` bool, all on ``device``.
        """
        indices = torch.as_tensor(indices, device=self._device)
        if indices.ndim != 1 or indices.dtype != torch.long:
            raise ValueError(f"indices must be a 1-D long tensor (B,), got {tuple(indices.shape)} {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_windows):
            raise IndexError(f"window indices must lie in [0, {self.num_windows}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self._gather(indices)

    def _gather(self, indices: torch.Tensor) -> Batch:
        """:meth:`window` without input checks (no device sync): ``indices`` (B,) long, valid."""
        first = self._win_first[indices].unsqueeze(1)
        lo = self._win_lo[indices].unsqueeze(1)
        hi = self._win_hi[indices].unsqueeze(1) - 1
        obs_idx = torch.clamp(first + self._obs_offsets, min=lo, max=hi)
        act_raw = first + self._act_offsets
        obs = {}
        for key in self._obs_shapes:
            x = self._take(key, obs_idx)
            obs[key] = self._normalizer.normalize(key, x) if key in self._uint8_keys else x
        return Batch(
            obs=obs,
            action=self._take(ACTION_KEY, torch.clamp(act_raw, min=lo, max=hi)),
            action_is_pad=(act_raw < lo) | (act_raw > hi),
        )

    def _take(self, key: str, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (B, T) of stored ``key`` -> ``(B, T, *shape)``.

        ``index_select`` on flat indices: on CPU it is several times faster than advanced
        indexing with a 2-D index, and does not stall on a busy machine.
        """
        data = self._data[key]
        return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])

    def shard_size(self, rank: int = 0, world_size: int = 1) -> int:
        """Number of windows in shard ``rank`` (windows ``rank, rank + world_size, ...``)."""
        world_size = _check_int("world_size", world_size, 1)
        rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")
        return len(range(rank, self.num_windows, world_size))

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Batch:
        """Sample ``batch_size`` windows uniformly (with replacement) from this rank's shard.

        Shards are strided (rank ``r`` owns windows ``r, r + world_size, ...``): disjoint,
        covering, equal up to one window. Random numbers come from ``generator`` (on its own
        device; the global torch RNG if None).

        Returns:
            :class:`Batch` as in :meth:`window`, with ``B = batch_size``.
        """
        batch_size = _check_int("batch_size", batch_size, 1)
        n_local = self.shard_size(rank, world_size)
        if n_local == 0:
            raise ValueError(f"rank {rank} of world_size {world_size} has no windows ({self.num_windows} in total)")
        rng_device = generator.device if generator is not None else torch.device("cpu")
        local = torch.randint(n_local, (batch_size,), generator=generator, device=rng_device)
        return self._gather(rank + local.to(self._device) * world_size)

    def __repr__(self) -> str:
        return (
            f"DemonstrationBuffer(num_windows={self.num_windows}, obs_shapes={self._obs_shapes}, "
            f"action_dim={self._action_dim}, n_obs_steps={self._n_obs_steps}, horizon={self._horizon}, "
            f"n_action_steps={self._n_action_steps}, device={self._device})"
        )
