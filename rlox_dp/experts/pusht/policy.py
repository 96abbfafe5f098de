"""The PushT MPC expert as an evaluation policy for batches of PushT envs."""

from __future__ import annotations

import numpy as np

from rlox_dp.envs.pusht import _pusht_core, make_pusht_env
from rlox_dp.experts.pusht.geometry import block_geometry, block_pose_from_keypoints
from rlox_dp.experts.pusht.model import PushTModel
from rlox_dp.experts.pusht.planner import EpisodePlanner, PushTMPCConfig

__all__ = ["PushTMPCExpert"]


class PushTMPCExpert:
    """The MPC planner as an :class:`~rlox_dp.evaluation.EvalPolicy` for PushT env batches.

    The envs must come from :func:`~rlox_dp.envs.pusht.make_pusht_env` (``gym_pusht/PushT-v0``
    with gym-pusht's default physics and ``obs_mode`` ``"state"`` or ``"keypoints"``, e.g.
    ``rollout(expert, PUSHT_ENV_ID, seeds, env_kwargs={"obs_mode": "keypoints"})``): the block
    pose is read from the observation (float32, so plans differ slightly from
    :func:`~rlox_dp.experts.pusht.dataset.solve_episode`'s), the agent's velocity is integrated
    from its own targets (zero after a reset). Each env's planner is created at its first action after :meth:`reset`;
    random numbers are drawn from ``rng`` in env order, so actions depend on ``n_envs`` as well
    as the seeds.

    Args:
        obs_mode: ``"state"`` or ``"keypoints"`` (images do not give the block pose).
        config: planner settings.
        rng: generator (or seed) of the planners' samples.
    """

    def __init__(
        self,
        obs_mode: str = "keypoints",
        config: PushTMPCConfig | None = None,
        rng: np.random.Generator | int = 0,
    ) -> None:
        if obs_mode not in ("state", "keypoints"):
            raise ValueError(f"obs_mode: expected 'state' or 'keypoints', got {obs_mode!r}")
        self.obs_mode, self.config = obs_mode, PushTMPCConfig() if config is None else config
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        env = make_pusht_env("state")
        env.reset(seed=0)
        core = _pusht_core(env)
        self.model, self.geometry = PushTModel(core), block_geometry(core)
        env.close()
        self._planners: list[EpisodePlanner | None] = []
        self._velocities = np.zeros((0, 2))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the plans of the envs where ``env_mask`` ``(n_envs,)`` is True (all if None)."""
        if env_mask is None:
            self._planners = []
            return
        mask = np.asarray(env_mask)
        if self._planners and (mask.dtype != np.bool_ or mask.shape != (len(self._planners),)):
            raise ValueError(
                f"env_mask: expected a bool array of shape ({len(self._planners)},), "
                f"got {mask.dtype} {mask.shape}"
            )
        for i in np.flatnonzero(mask) if self._planners else ():
            self._planners[i] = None

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Targets ``(n_envs, 2)`` float32 for ``obs["state"]`` ``(n_envs, 6 or 20)``."""
        dim = {"state": 6, "keypoints": 20}[self.obs_mode]
        if "state" not in obs:
            raise KeyError(f"obs: expected key 'state', got keys {sorted(obs)}")
        vec = np.asarray(obs["state"], dtype=np.float64)
        if vec.ndim != 2 or vec.shape[1] != dim:
            raise ValueError(
                f"obs['state']: expected shape (n_envs, {dim}) for obs_mode "
                f"{self.obs_mode!r}, got {vec.shape}"
            )
        if self.obs_mode == "state":
            agent, pose = (
                vec[:, 0:2],
                np.concatenate([vec[:, 2:4], np.arctan2(vec[:, 4:5], vec[:, 5:6])], 1),
            )
        else:
            agent, pose = vec[:, 18:20], block_pose_from_keypoints(vec[:, :18].reshape(-1, 9, 2))
        if len(self._planners) != len(vec):
            self._planners, self._velocities = [None] * len(vec), np.zeros((len(vec), 2))
        actions = np.empty((len(vec), 2), dtype=np.float32)
        for i, planner in enumerate(self._planners):
            if planner is None:
                planner = self._planners[i] = EpisodePlanner(
                    self.model, self.geometry, self.config, self.rng, agent[i]
                )
                self._velocities[i] = 0.0
            state = {
                "agent_pos": agent[i],
                "agent_vel": self._velocities[i].copy(),
                "block_pos": pose[i, :2],
                "block_vel": np.zeros(2),
                "block_angle": np.array(pose[i, 2]),
                "block_angvel": np.array(0.0),
            }
            actions[i] = planner.act(state)
            vels, _ = self.model.agent_paths(
                agent[i], state["agent_vel"], actions[i].astype(np.float64)[None, None]
            )
            self._velocities[i] = vels[-1, 0]
        return actions
