"""Noise schedules of the DDPM forward process ``q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)``.

A :class:`NoiseSchedule` is a pure function of its betas: every table is computed once, in
float64, when it is built and nothing changes afterwards. Notation, with ``t`` in
``[0, T)`` (0-based, as in diffusers and the original Diffusion Policy code)::

    beta_t                       noise added at step t          betas[t]
    alpha_t   = 1 - beta_t                                      alphas[t]
    ab_t      = prod_{s <= t} alpha_s                           alphas_cumprod[t]
    ab_{t-1}  (1 for t = 0)                                     alphas_cumprod_prev[t]
    snr_t     = ab_t / (1 - ab_t)                               snr[t]

Precision: the tables stay float64 (on the CPU unless moved with :meth:`NoiseSchedule.to`);
each helper gathers its ``(B,)`` coefficients from them and casts those to the dtype of ``x``,
so float32 inputs give float32 outputs without float32 round-off inside ``1 - ab_t``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rlox_dp.registry import Registry

__all__ = [
    "PRIOR_MISMATCH_THRESHOLD",
    "SCHEDULES",
    "SCHEDULE_REGISTRY",
    "NoiseSchedule",
    "PriorMismatchWarning",
    "available_schedules",
    "make_schedule",
]

PRIOR_MISMATCH_THRESHOLD: float = 1e-2
"""Largest ``alphas_cumprod[-1]`` accepted without a :class:`PriorMismatchWarning`.

Sampling starts from ``N(0, I)`` but training saw ``x_{T-1} ~ N(sqrt(ab) x_0, (1 - ab) I)``.
For unit-variance (normalized) data the expected per-dimension KL between the two is
``-log(1 - ab) / 2 ~= ab / 2``, and the signal left in ``x_{T-1}`` has standard deviation
``sqrt(ab)``. At ``ab = 1e-2`` that is 10% of the data's std and 0.005 nats per dimension
(0.16 nats for a 16-step, 2-D action chunk): above it the mismatch is no longer negligible.
Linear 1e-4..0.02 gives ab ~ 0.6 at T=50, ~0.36 at T=100 (both warn) and 4e-5 at T=1000.
"""

_COSINE_S = 0.008  # offset s of Nichol & Dhariwal (2021), eq. 17
_MAX_BETA = 0.999  # beta clip of Nichol & Dhariwal (2021) and diffusers' betas_for_alpha_bar

# Tables moved together by ``NoiseSchedule.to``.
_TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "snr",
    "_sqrt_ab",
    "_sqrt_one_minus_ab",
    "_sqrt_recip_ab",
    "_sqrt_recipm1_ab",
)


class PriorMismatchWarning(UserWarning):
    """The schedule leaves too much signal at ``t = T-1`` for the ``N(0, I)`` prior to match.

    Emitted when ``alphas_cumprod[-1] > PRIOR_MISMATCH_THRESHOLD`` (see that constant).
    """


def _cosine_betas(num_train_timesteps: int) -> Tensor:
    """``(T,)`` float64 betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    ``ab(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2`` for
    ``t = 0..T``, ``betas[i] = 1 - ab(i + 1) / ab(i)`` clipped at 0.999 (only the last beta,
    where ``f(T) ~ 0``, is affected for any T).
    """
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((steps + _COSINE_S) / (1 + _COSINE_S) * (math.pi / 2)) ** 2
    alpha_bar = f / f[0]
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=_MAX_BETA)


class NoiseSchedule:
    """Immutable tables of a discrete-time variance-preserving diffusion, built from betas.

    All tables are float64 tensors of shape ``(T,)`` on :attr:`device`; see the module docstring
    for the notation. Helpers take ``t`` as a ``(B,)`` integer tensor (values in ``[0, T)``) and
    broadcast its coefficients over the trailing dimensions of ``x`` of shape ``(B, ...)``; they
    return tensors with the dtype and device of ``x``. Tables on another device than ``x`` are
    copied on each call: call :meth:`to` once (e.g. ``schedule = schedule.to("cuda")``) to avoid
    that copy. ``t`` is range-checked when it lives on the CPU (checking a GPU tensor would
    synchronize the device).

    Args:
        betas: ``(T,)`` values in the open interval (0, 1), T >= 1.

    Warns:
        PriorMismatchWarning: if ``alphas_cumprod[-1] > PRIOR_MISMATCH_THRESHOLD``.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    snr: Tensor

    def __init__(self, betas: Tensor | np.ndarray | Sequence[float]) -> None:
        self._build(betas)
        self._warn_if_prior_mismatch(stacklevel=3)

    def _build(self, betas: Tensor | np.ndarray | Sequence[float]) -> None:
        """Validate ``(T,)`` betas and compute every table in float64 on the CPU."""
        b = torch.as_tensor(betas, dtype=torch.float64).detach().to("cpu").clone()
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D sequence (T,); got shape {tuple(b.shape)}"
            )
        if not bool(torch.isfinite(b).all()) or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(
                f"betas must all lie in the open interval (0, 1); got min {b.min().item():.6g}, "
                f"max {b.max().item():.6g}"
            )
        alphas = 1.0 - b
        # ab = prod(alphas) in log space, so that 1 - ab keeps full precision where ab ~ 1.
        log_ab = torch.cumsum(torch.log1p(-b), dim=0)
        ab, one_minus_ab = log_ab.exp(), -torch.expm1(log_ab)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        tables = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "snr": ab / one_minus_ab,
            "_sqrt_ab": ab.sqrt(),
            "_sqrt_one_minus_ab": one_minus_ab.sqrt(),
            "_sqrt_recip_ab": (1.0 / ab).sqrt(),
            "_sqrt_recipm1_ab": (one_minus_ab / ab).sqrt(),
        }
        for name, value in tables.items():
            object.__setattr__(self, name, value)

    def _warn_if_prior_mismatch(self, stacklevel: int) -> None:
        """Warn (at the caller ``stacklevel`` frames up) if ``alphas_cumprod[-1]`` is too large."""
        ab_last = self.alphas_cumprod[-1].item()
        if ab_last > PRIOR_MISMATCH_THRESHOLD:
            warnings.warn(
                f"alphas_cumprod[-1] = {ab_last:.4g} with T = {self.num_train_timesteps} (threshold "
                f"{PRIOR_MISMATCH_THRESHOLD:g}): x_(T-1) still carries sqrt(alphas_cumprod[-1]) = "
                f"{math.sqrt(ab_last):.0%} of the clean signal, so sampling from N(0, I) does not "
                "match what the model was trained on. Use more steps (num_train_timesteps), a larger beta_end, or the 'cosine' / "
                "'squaredcos_cap_v2' schedule.",
                PriorMismatchWarning,
                stacklevel=stacklevel,
            )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"NoiseSchedule is immutable; cannot set {name!r} (build a new one)")

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of diffusion steps the model is trained on."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        """Device holding the tables."""
        return self.betas.device

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.num_train_timesteps}, beta[0]={self.betas[0].item():.4g}, "
            f"beta[-1]={self.betas[-1].item():.4g}, "
            f"alphas_cumprod[-1]={self.alphas_cumprod[-1].item():.4g}, device={self.device})"
        )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float64) -> NoiseSchedule:
        """Return a copy whose tables live on ``device`` (``self`` is unchanged).

        Args:
            device: target device.
            dtype: table dtype; keep float64 unless the device lacks it (Apple MPS: float32).
        """
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype}")
        new = object.__new__(NoiseSchedule)
        for name in _TABLES:
            object.__setattr__(new, name, getattr(self, name).to(device=device, dtype=dtype))
        return new

    # ----------------------------------------------------------------- helpers
    def _coef(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Gather ``table[t]`` as ``(B, 1, ..., 1)`` with x's dtype and device; x is ``(B, ...)``."""
        t = self._check_t(t, "t")
        if x.ndim < 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                f"x must have shape (B, ...) with B = len(t) = {t.shape[0]}; got {tuple(x.shape)}"
            )
        if table.device != x.device:
            table = table.to(x.device)
        coef = table[t.to(table.device)].to(x.dtype)
        return coef.reshape(coef.shape + (1,) * (x.ndim - 1))

    def _check_t(self, t: Tensor, name: str) -> Tensor:
        """Validate a ``(B,)`` integer timestep tensor; return it as int64."""
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a (B,) integer torch.Tensor; got {type(t).__name__}")
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.ndim != 1:
            raise TypeError(
                f"{name} must be a (B,) integer tensor; got dtype {t.dtype}, shape {tuple(t.shape)}"
            )
        if t.device.type == "cpu" and t.numel() > 0:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.num_train_timesteps:
                raise ValueError(
                    f"{name} must lie in [0, {self.num_train_timesteps - 1}]; got range [{lo}, {hi}]"
                )
        return t.long()

    @staticmethod
    def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
        if a.shape != b.shape:
            raise ValueError(
                f"{names} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
            )

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``.

        Args:
            x0: ``(B, ...)`` clean data.
            noise: ``(B, ...)`` standard normal noise, same shape as x0.
            t: ``(B,)`` integer timesteps.

        Returns:
            ``(B, ...)`` noisy data ``x_t``.
        """
        self._check_same_shape(x0, noise, "x0 and noise")
        return (
            self._coef(self._sqrt_ab, t, x0) * x0
            + self._coef(self._sqrt_one_minus_ab, t, x0) * noise
        )

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Invert :meth:`add_noise` for ``x0``: ``(x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``.

        Args: ``x_t``, ``eps``: ``(B, ...)``; ``t``: ``(B,)``. Returns ``(B, ...)``.
        """
        self._check_same_shape(x_t, eps, "x_t and eps")
        return (
            self._coef(self._sqrt_recip_ab, t, x_t) * x_t
            - self._coef(self._sqrt_recipm1_ab, t, x_t) * eps
        )

    def predict_eps(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """Invert :meth:`add_noise` for the noise: ``(x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``.

        Args: ``x_t``, ``x0``: ``(B, ...)``; ``t``: ``(B,)``. Returns ``(B, ...)``.
        """
        self._check_same_shape(x_t, x0, "x_t and x0")
        return (x_t - self._coef(self._sqrt_ab, t, x_t) * x0) / self._coef(
            self._sqrt_one_minus_ab, t, x_t
        )


BetasFn = Callable[[int, float, float], Tensor]
"""``(num_train_timesteps T, beta_start, beta_end) -> (T,) float64 betas``; arguments checked."""

_DEFAULT_BETA_RANGE = (1e-4, 2e-2)


def _linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """``(T,)`` float64 betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def _cosine_schedule_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """:func:`_cosine_betas`; refuses a beta range other than the defaults instead of ignoring it."""
    if (beta_start, beta_end) != _DEFAULT_BETA_RANGE:
        raise ValueError(
            f"beta_start/beta_end only apply to the 'linear' schedule; got beta_start="
            f"{beta_start}, beta_end={beta_end} with a cosine schedule (leave them at 1e-4 / 2e-2)"
        )
    return _cosine_betas(num_train_timesteps)


#: schedule name -> :data:`BetasFn`, built into a :class:`NoiseSchedule` by :func:`make_schedule`.
SCHEDULE_REGISTRY: Registry[BetasFn] = Registry("noise schedule")
SCHEDULE_REGISTRY.register("linear", _linear_betas)
SCHEDULE_REGISTRY.register("cosine", _cosine_schedule_betas)
SCHEDULE_REGISTRY.register("squaredcos_cap_v2", _cosine_schedule_betas)

SCHEDULES: tuple[str, ...] = tuple(SCHEDULE_REGISTRY.names())
"""The built-in schedules (:func:`available_schedules` also lists ones registered later)."""


def available_schedules() -> list[str]:
    """Names accepted by :func:`make_schedule` (any case), in registration order."""
    return SCHEDULE_REGISTRY.names()


def make_schedule(
    name: str,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
) -> NoiseSchedule:
    """Build a named :class:`NoiseSchedule`.

    - ``"linear"``: betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020).
    - ``"cosine"``: Nichol & Dhariwal (2021), ``ab(t) = f(t) / f(0)``,
      ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2``, s = 0.008, betas clipped at 0.999.
    - ``"squaredcos_cap_v2"``: diffusers' name (default of the original Diffusion Policy repo
      and LeRobot) for the same schedule. diffusers builds it with ``betas_for_alpha_bar``,
      ``beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999)``, without dividing by ``f(0)``; the
      ratio cancels that factor, so the betas are identical to ``"cosine"`` (up to float
      round-off; diffusers then stores them in float32). It is kept as an alias so that
      configs written for diffusers / LeRobot load unchanged.

    ``beta_start`` and ``beta_end`` only shape the linear schedule; the cosine schedules reject
    values other than the defaults instead of ignoring them.

    Other schedules: ``SCHEDULE_REGISTRY.register(name, betas_fn)`` with a :data:`BetasFn`.

    Args:
        name: one of :func:`available_schedules` (any case).
        num_train_timesteps: T >= 1.
        beta_start: first beta of the linear schedule, ``0 < beta_start <= beta_end``.
        beta_end: last beta of the linear schedule, ``beta_end < 1``.

    Raises:
        ValueError: unknown name or out-of-range argument (the message names it).

    Warns:
        PriorMismatchWarning: see :data:`PRIOR_MISMATCH_THRESHOLD`.
    """
    betas_fn = SCHEDULE_REGISTRY.get(name)
    if isinstance(num_train_timesteps, bool) or not isinstance(
        num_train_timesteps, (int, np.integer)
    ):
        raise TypeError(
            f"num_train_timesteps must be an int; got {type(num_train_timesteps).__name__}"
        )
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1; got {num_train_timesteps}")
    if not (0.0 < beta_start < 1.0):
        raise ValueError(f"beta_start must lie in (0, 1); got {beta_start}")
    if not (0.0 < beta_end < 1.0):
        raise ValueError(f"beta_end must lie in (0, 1); got {beta_end}")
    if beta_start > beta_end:
        raise ValueError(
            f"beta_start must be <= beta_end; got beta_start={beta_start}, beta_end={beta_end}"
        )
    betas = betas_fn(int(num_train_timesteps), beta_start, beta_end)
    schedule = object.__new__(NoiseSchedule)
    schedule._build(betas)
    schedule._warn_if_prior_mismatch(stacklevel=3)  # attribute the warning to our caller
    return schedule
