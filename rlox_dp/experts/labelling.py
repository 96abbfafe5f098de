"""Expert labels at the states a learner visits (DAgger): restore a state, let the expert act.

Interface (:class:`ExpertLabeller`): ``capture(env)`` reads the simulator state of a running env
as a float64 vector ``(D_state,)``; ``label(states, seed)`` returns, for each state ``(B, D_state)``,
an :class:`ExpertChunk`: the expert's next ``horizon`` actions from that state (fewer when the env
terminates first), with the observation before each action and the simulator states. Labels
are computed in copies of the env: a copy is reset (a fresh simulator), the state restored, and
the expert acts from there, so a label is exactly what the expert does from that state.

How each built-in expert labels (:func:`get_labeller`):

* SB3 experts (``Pendulum-v1``, ``MountainCarContinuous-v0``, ``InvertedDoublePendulum-v5``):
  :class:`RolloutLabeller` rolls the deterministic policy forward in the restored copy.
* The bimodal env's scripted expert: the same, with ``mode="nearest"`` (it keeps to the side of
  the labelled state's x, so a state right of the axis is labelled with the right-hand path).
* The PushT MPC expert (:class:`PushTMPCLabeller`): a fresh planner (samples seeded by ``seed``
  and the state's index) plans every step from the exact physical state of the restored copy.

State per env (:class:`StateAccess`, :data:`STATE_ACCESS`; register others with
:func:`register_state_access`):

* ``Pendulum-v1``: ``env.unwrapped.state`` = (theta, theta_dot).
* ``MountainCarContinuous-v0``: ``env.unwrapped.state`` = (position, velocity), with its dtype
  (float64 after a reset, float32 after a step: the next step's arithmetic depends on it).
* ``InvertedDoublePendulum-v5`` (MuJoCo): ``qpos``, ``qvel`` (restored with ``set_state``), the
  solver's ``qacc_warmstart`` and the simulation time.
* ``rlox_dp/BimodalPoint-v0``: the point's position.
* ``gym_pusht/PushT-v0``: agent position and velocity, block position, velocity, angle and angular
  velocity, set in a freshly reset env (a new pymunk space, no contact caches; the angle before
  the position, as :func:`~rlox_dp.envs.pusht.set_pusht_state`). A state does not carry pymunk's
  contact caches (the impulses it warm-starts its solver with): from a state with a contact (the
  agent on the block, the block against a wall), the original env and the copy may drift apart
  by fractions of a pixel; without contacts they agree bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from rlox_dp.envs.bimodal import BIMODAL_ENV_ID
from rlox_dp.envs.factory import STATE_KEY, make_env
from rlox_dp.evaluation import EvalPolicy
from rlox_dp.experts.bimodal import BimodalPointExpert
from rlox_dp.experts.registry import EXPERTS, get_expert
from rlox_dp.registry import Registry

__all__ = [
    "STATE_ACCESS",
    "ExpertChunk",
    "ExpertLabeller",
    "LabellingError",
    "PushTMPCLabeller",
    "RolloutLabeller",
    "StateAccess",
    "get_labeller",
    "register_state_access",
]

#: time limit of the env copies that labels are rolled out in (labels never reach it).
_COPY_TIME_LIMIT = 10**6


class LabellingError(ValueError):
    """An env whose states no expert can label: no expert, or no way to restore its state."""


class ExpertChunk(NamedTuple):
    """What the expert does from one state, ``L <= horizon`` steps.

    Attributes:
        actions: ``(L, D_act)`` the expert's actions, in the env's action dtype.
        observations: key -> ``(L, *obs_shape)``, the observation before each action
            (``[0]`` is the observation of the labelled state).
        sim_states: ``(L, D_state)`` float64 simulator state before each action.
        terminated: the env terminated after the last action (then ``L`` may be < horizon).
    """

    actions: np.ndarray
    observations: dict[str, np.ndarray]
    sim_states: np.ndarray
    terminated: bool


@dataclass(frozen=True)
class StateAccess:
    """Read and write the simulator state of one env id (see the module docstring).

    Attributes:
        capture: ``env -> (D_state,)`` float64, the state of a running env.
        restore: ``(env, state)``: put a freshly reset env into ``state``.
        observe: ``env -> obs dict``: the observation the env (as made by
            :func:`~rlox_dp.envs.factory.make_env`) emits in its current state.
    """

    capture: Callable[[gym.Env], np.ndarray]
    restore: Callable[[gym.Env, np.ndarray], None]
    observe: Callable[[gym.Env], dict[str, np.ndarray]]


def _classic_capture(env: gym.Env) -> np.ndarray:
    state = np.asarray(env.unwrapped.state)
    return np.concatenate([[1.0 if state.dtype == np.float32 else 0.0], state.astype(np.float64)])


def _classic_restore(env: gym.Env, state: np.ndarray) -> None:
    env.unwrapped.state = np.asarray(state[1:], dtype=np.float32 if state[0] == 1.0 else np.float64)


def _mujoco_capture(env: gym.Env) -> np.ndarray:
    """``(nq + 3 nv + 1,)``: qpos, qvel, qacc_warmstart, qfrc_constraint, time. After ``mj_step``
    the constraint forces are those of the step's start (the state before integration), and
    observations read them (InvertedDoublePendulum: the cart at its rail limit), so they are part
    of what a restore must reproduce; the next step recomputes them from qpos and qvel."""
    data = env.unwrapped.data
    return np.concatenate([data.qpos, data.qvel, data.qacc_warmstart, data.qfrc_constraint,
                           [data.time]]).astype(np.float64)


def _mujoco_restore(env: gym.Env, state: np.ndarray) -> None:
    core = env.unwrapped
    nq, nv = core.model.nq, core.model.nv
    if state.shape != (nq + 3 * nv + 1,):
        raise LabellingError(f"state: expected a MuJoCo state of shape ({nq + 3 * nv + 1},) (qpos, qvel, "
                             f"qacc_warmstart, qfrc_constraint, time), got {state.shape}")
    core.set_state(state[:nq], state[nq : nq + nv])  # runs mj_forward: fresh constraint forces
    core.data.qacc_warmstart[:] = state[nq + nv : nq + 2 * nv]
    core.data.qfrc_constraint[:] = state[nq + 2 * nv : nq + 3 * nv]  # the step's, as observed
    core.data.time = float(state[-1])


def _bimodal_restore(env: gym.Env, state: np.ndarray) -> None:
    env.unwrapped._position = np.array(state, dtype=np.float64)


def _pusht_capture(env: gym.Env) -> np.ndarray:
    from rlox_dp.envs.pusht import _pusht_core
    from rlox_dp.experts.pusht.model import sim_state

    sim = sim_state(_pusht_core(env))
    return np.concatenate([np.ravel(sim[k]) for k in _PUSHT_STATE_KEYS]).astype(np.float64)


#: order of :func:`~rlox_dp.experts.pusht.model.sim_state`'s entries in a PushT state vector
#: ``(10,)``: agent x, y, vx, vy, block x, y, vx, vy, angle (radians, not wrapped), angular velocity.
_PUSHT_STATE_KEYS = ("agent_pos", "agent_vel", "block_pos", "block_vel", "block_angle", "block_angvel")


def pusht_raw_state(sim_states: np.ndarray) -> np.ndarray:
    """PushT state vectors ``(..., 10)`` -> dataset rows ``(..., 5)`` float64 (agent x, y, block
    x, y, angle in [0, 2 pi)): what :func:`~rlox_dp.envs.pusht.load_pusht_demonstrations` reads."""
    s = np.asarray(sim_states, dtype=np.float64)
    return np.concatenate([s[..., 0:2], s[..., 4:6], s[..., 8:9] % (2 * np.pi)], -1)


def _pusht_restore(env: gym.Env, state: np.ndarray) -> None:
    from rlox_dp.envs.pusht import _pusht_core, set_pusht_state

    set_pusht_state(env, np.array([state[0], state[1], state[4], state[5], state[8]]))
    core = _pusht_core(env)
    core.agent.velocity = (float(state[2]), float(state[3]))
    core.block.velocity = (float(state[6]), float(state[7]))
    core.block.angular_velocity = float(state[9])


def _box_observe(raw: Callable[[Any], np.ndarray]) -> Callable[[gym.Env], dict[str, np.ndarray]]:
    return lambda env: {STATE_KEY: np.asarray(raw(env.unwrapped))}


def _pusht_observe(env: gym.Env) -> dict[str, np.ndarray]:
    from rlox_dp.envs.pusht import observe_pusht

    return observe_pusht(env)


#: env id -> :class:`StateAccess` (lookup ignores case; see :class:`~rlox_dp.registry.Registry`).
STATE_ACCESS: Registry[StateAccess] = Registry("state access")


def register_state_access(env_id: str, access: StateAccess) -> None:
    """Let DAgger label states of ``env_id`` (with its expert from the expert registry).

    Raises:
        DuplicateNameError: ``env_id`` (in any case) already has another state access.
    """
    STATE_ACCESS.register(env_id, access)


for _env_id, _access in {
    "Pendulum-v1": StateAccess(_classic_capture, _classic_restore,
                               _box_observe(lambda core: core._get_obs())),
    "MountainCarContinuous-v0": StateAccess(
        _classic_capture, _classic_restore,
        _box_observe(lambda core: np.array(core.state, dtype=np.float32))),
    "InvertedDoublePendulum-v5": StateAccess(_mujoco_capture, _mujoco_restore,
                                             _box_observe(lambda core: core._get_obs())),
    BIMODAL_ENV_ID: StateAccess(lambda env: np.array(env.unwrapped._position, dtype=np.float64),
                                _bimodal_restore,
                                _box_observe(lambda core: core._position.astype(np.float32))),
    "gym_pusht/PushT-v0": StateAccess(_pusht_capture, _pusht_restore, _pusht_observe),
}.items():
    register_state_access(_env_id, _access)


class ExpertLabeller(ABC):
    """Labels states of one env with the expert's next ``horizon`` actions (module docstring).

    Args:
        env_id, env_kwargs: the env (as :func:`~rlox_dp.envs.factory.make_env`).
        horizon: actions per label (>= 1).
    """

    def __init__(self, env_id: str, horizon: int, env_kwargs: Mapping[str, Any] | None = None) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
        if env_id not in STATE_ACCESS:
            raise LabellingError(_no_access_message(env_id))
        self.env_id, self.horizon, self.env_kwargs = env_id, int(horizon), dict(env_kwargs or {})
        self.access = STATE_ACCESS.get(env_id)
        self._copies: list[gym.Env] = []

    def capture(self, env: gym.Env) -> np.ndarray:
        """The simulator state ``(D_state,)`` float64 of ``env`` (a running env of this id)."""
        return self.access.capture(env)

    def restore(self, env: gym.Env, state: np.ndarray) -> dict[str, np.ndarray]:
        """Reset ``env``, put it into ``state`` and return its observation there."""
        env.reset(seed=0)
        self.access.restore(env, np.asarray(state, dtype=np.float64))
        return self.access.observe(env)

    def _copy(self, i: int) -> gym.Env:
        """The ``i``-th env copy (created on first use)."""
        while len(self._copies) <= i:
            self._copies.append(make_env(self.env_id, env_kwargs=self.env_kwargs,
                                         max_episode_steps=_COPY_TIME_LIMIT))
        return self._copies[i]

    def _check_states(self, states: np.ndarray) -> np.ndarray:
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or not np.all(np.isfinite(states)):
            raise ValueError(f"states: expected a finite (B, D_state) array, got shape {states.shape}")
        return states

    @abstractmethod
    def label(self, states: np.ndarray, seed: int = 0) -> list[ExpertChunk]:
        """One :class:`ExpertChunk` per row of ``states`` ``(B, D_state)``; ``seed`` seeds any
        randomness of the expert (the labels are a function of ``states`` and ``seed``)."""

    def close(self) -> None:
        """Close the env copies."""
        for env in self._copies:
            env.close()
        self._copies = []


class RolloutLabeller(ExpertLabeller):
    """Labels by rolling an :class:`~rlox_dp.evaluation.EvalPolicy` expert forward.

    Args:
        make_expert: ``seed -> expert``, called once per :meth:`label` call (a deterministic
            expert may ignore the seed and return itself).
        batch_size: env copies stepped in lockstep (one batched expert call per step). The
            default 1 makes a label bit for bit what the expert does acting on that state alone
            (a network's batched forward pass may round the last bit differently).
        env_id, horizon, env_kwargs: see :class:`ExpertLabeller`.
    """

    def __init__(self, env_id: str, make_expert: Callable[[int], EvalPolicy], horizon: int,
                 env_kwargs: Mapping[str, Any] | None = None, batch_size: int = 1) -> None:
        super().__init__(env_id, horizon, env_kwargs)
        self.make_expert, self.batch_size = make_expert, int(batch_size)

    def label(self, states: np.ndarray, seed: int = 0) -> list[ExpertChunk]:
        states = self._check_states(states)
        expert = self.make_expert(int(seed))
        out: list[ExpertChunk] = []
        for start in range(0, len(states), self.batch_size):
            out += self._label_batch(expert, states[start : start + self.batch_size])
        return out

    def _label_batch(self, expert: EvalPolicy, states: np.ndarray) -> list[ExpertChunk]:
        envs = [self._copy(i) for i in range(len(states))]
        obs = [self.restore(env, s) for env, s in zip(envs, states, strict=True)]
        steps: list[list[tuple[dict, np.ndarray, np.ndarray]]] = [[] for _ in envs]
        active, terminated = [True] * len(envs), [False] * len(envs)
        expert.reset(None)
        for _ in range(self.horizon):
            batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
            actions = np.asarray(expert.select_action(batch))
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                action = actions[i].astype(env.action_space.dtype)
                steps[i].append((obs[i], action, self.capture(env)))
                obs[i], _, term, trunc, _ = env.step(action)
                if term or trunc:
                    active[i], terminated[i] = False, bool(term)
            if not any(active):
                break
        return [_chunk(s, t) for s, t in zip(steps, terminated, strict=True)]


def _chunk(steps: list[tuple[dict, np.ndarray, np.ndarray]], terminated: bool) -> ExpertChunk:
    """Stack ``(obs, action, sim_state)`` steps into an :class:`ExpertChunk`."""
    return ExpertChunk(actions=np.stack([a for _, a, _ in steps]),
                       observations={k: np.stack([o[k] for o, _, _ in steps]) for k in steps[0][0]},
                       sim_states=np.stack([s for _, _, s in steps]), terminated=terminated)


class PushTMPCLabeller(ExpertLabeller):
    """The PushT MPC expert planning from exactly restored states (any observation mode).

    Args:
        horizon: actions per label.
        env_kwargs: PushT env options (``obs_mode``: ``"state"``, ``"keypoints"`` or ``"image"``).
        config: planner settings (:class:`~rlox_dp.experts.pusht.PushTMPCConfig`).
    """

    def __init__(self, horizon: int, env_kwargs: Mapping[str, Any] | None = None,
                 config: Any = None) -> None:
        from rlox_dp.envs.pusht import PUSHT_ENV_ID
        from rlox_dp.experts.pusht import PushTMPCExpert

        super().__init__(PUSHT_ENV_ID, horizon, env_kwargs)
        self.expert = PushTMPCExpert("state", config)  # its model and geometry; obs unused

    def label(self, states: np.ndarray, seed: int = 0) -> list[ExpertChunk]:
        from rlox_dp.envs.pusht import _pusht_core
        from rlox_dp.experts.pusht.model import sim_state
        from rlox_dp.experts.pusht.planner import EpisodePlanner

        states, env, out = self._check_states(states), self._copy(0), []
        for b, state in enumerate(states):
            obs = self.restore(env, state)
            core = _pusht_core(env)
            planner = EpisodePlanner(self.expert.model, self.expert.geometry, self.expert.config,
                                      np.random.default_rng([int(seed), b]), np.array(core.agent.position))
            steps, terminated = [], False
            for _ in range(self.horizon):
                action = planner.act(sim_state(core))
                steps.append((obs, action, self.capture(env)))
                obs, _, terminated, _, _ = env.step(action)
                if terminated:
                    break
            out.append(_chunk(steps, bool(terminated)))
        return out


def _no_access_message(env_id: str) -> str:
    if env_id in EXPERTS:
        return (f"env {env_id!r}: its expert cannot label visited states, because rlox_dp cannot "
                "restore a simulator state of this env; register one with "
                "rlox_dp.experts.labelling.register_state_access")
    return (f"env {env_id!r} has no expert that can label states (DAgger needs one); labelling "
            f"experts exist for {sorted(STATE_ACCESS)}")


def get_labeller(env_id: str, horizon: int, *, env_kwargs: Mapping[str, Any] | None = None,
                 expert: EvalPolicy | None = None, cache_dir: Any = None, progress: bool = True,
                 expert_seed: int = 0, mpc_config: Any = None) -> ExpertLabeller:
    """The labeller of ``env_id``'s built-in expert (or of ``expert``, acting on this env).

    Args:
        env_id, env_kwargs: the env.
        horizon: actions per label.
        expert: label with this policy instead of the built-in expert (not for PushT).
        cache_dir, progress, expert_seed: for :func:`~rlox_dp.experts.registry.get_expert` (SB3
            experts are trained on first use and cached).
        mpc_config: PushT planner settings.

    Raises:
        LabellingError: ``env_id`` has no expert, or its states cannot be restored.
    """
    from rlox_dp.envs.pusht import PUSHT_ENV_ID

    if env_id not in STATE_ACCESS:
        raise LabellingError(_no_access_message(env_id))
    if env_id == PUSHT_ENV_ID:
        if expert is not None:
            raise ValueError("expert: PushT states are labelled by the built-in MPC expert; "
                             "pass mpc_config to change its settings")
        return PushTMPCLabeller(horizon, env_kwargs, mpc_config)
    if expert is None and env_id == BIMODAL_ENV_ID:
        return RolloutLabeller(env_id, lambda seed: BimodalPointExpert(seed, mode="nearest"),
                               horizon, env_kwargs)
    if expert is None:
        expert = get_expert(env_id, cache_dir=cache_dir, progress=progress, seed=expert_seed)
    fixed = expert
    return RolloutLabeller(env_id, lambda seed: fixed, horizon, env_kwargs)
