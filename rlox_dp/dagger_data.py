"""DAgger's data: visited episodes, their labels as new episodes, the zarr layout, aggregation.

A label taken at step ``t`` of a visited episode becomes an episode of its own
(:func:`labelled_episodes`): the ``n_obs_steps - 1`` visited steps before ``t`` (observations and
executed actions), then the expert's chunk from the state at ``t`` (its observations and
actions). Stored (:func:`append_labelled`) in the zarr replay-buffer layout, rounds in order,
with ``data/sim_state`` (the simulator state before each action) and one provenance entry per
episode in the ``metadata`` attribute (``source`` ``"expert_labelled"``, ``round``,
``rollout_seed``, ``step``, ``expert_drove``, ``label_length``). Observations are stored in the
env's dataset layout (:attr:`EnvSpec.dataset_columns`; PushT: the human dataset's ``data/state``
``(N, 5)`` float64, ``data/keypoint``, ``data/img`` for images), so the env's own loader gives back
exactly the observations the policy saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlox_dp.buffers import Demonstrations
from rlox_dp.buffers.loaders import load_demonstrations, save_demonstrations

__all__ = ["VisitedEpisode", "aggregate", "append_labelled", "concat", "episodes_to_demonstrations",
           "labelled_episodes", "load_labelled", "rounds_prefix"]


class VisitedEpisode:
    """One rollout episode: what was observed and executed, and the labels taken on the way."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.obs: list[dict[str, np.ndarray]] = []
        self.actions: list[np.ndarray] = []
        self.sim_states: list[np.ndarray] = []
        self.labels: list[tuple[int, Any, bool]] = []  # (step, ExpertChunk, expert drove)
        self.plan: np.ndarray | None = None  # the expert's actions being executed
        self.plan_start = 0

    @property
    def t(self) -> int:
        """Steps taken so far: the index of the next step."""
        return len(self.actions)


def labelled_episodes(rollout: VisitedEpisode, n_obs_steps: int, round_index: int) -> list[dict[str, Any]]:
    """Each label of ``rollout`` as an episode: the ``n_obs_steps - 1`` visited steps before the
    labelled state, then the expert's chunk (observations ``(L, ...)``, actions ``(L, D_act)``,
    sim states ``(L, D_state)``), with its provenance."""
    def before(items: list[np.ndarray], past: range, like: np.ndarray) -> np.ndarray:
        """The visited entries at steps ``past`` stacked like ``like`` ``(L, ...)``, then ``like``."""
        head = np.stack([items[i] for i in past]) if len(past) else np.empty((0, *like.shape[1:]))
        return np.concatenate([head.astype(like.dtype), like])

    episodes = []
    for t, chunk, drove in rollout.labels:
        past = range(max(0, t - (n_obs_steps - 1)), t)
        episodes.append({
            "obs": {k: before([o[k] for o in rollout.obs], past, v) for k, v in chunk.observations.items()},
            "action": before(rollout.actions, past, chunk.actions),
            "sim_state": before(rollout.sim_states, past, chunk.sim_states),
            "provenance": {"source": "expert_labelled", "round": round_index, "rollout_seed": rollout.seed,
                           "step": t, "expert_drove": drove, "label_length": len(chunk.actions)},
        })
    return episodes


def episodes_to_demonstrations(episodes: list[dict[str, Any]], env_id: str) -> Demonstrations:
    """Labelled episodes -> :class:`Demonstrations` in the env's dataset layout (module docstring)."""
    from rlox_dp.envs import env_spec

    sim = np.concatenate([e["sim_state"] for e in episodes])
    seen = {k: np.concatenate([e["obs"][k] for e in episodes]) for k in episodes[0]["obs"]}
    observations = env_spec(env_id).dataset_observations(sim, seen)
    observations["sim_state"] = sim
    lengths = [len(e["action"]) for e in episodes]
    return Demonstrations(
        observations=observations, actions=np.concatenate([e["action"] for e in episodes]),
        episode_ends=np.cumsum(lengths).astype(np.int64),
        metadata={"source": "dagger", "env_id": env_id,
                  "provenance": [e["provenance"] for e in episodes]},
    )


def rounds_prefix(demos: Demonstrations, max_round: int) -> Demonstrations | None:
    """The episodes of rounds ``<= max_round`` (stored in round order: a prefix), None if none."""
    n = sum(p["round"] <= max_round for p in demos.metadata["provenance"])
    if n == 0:
        return None
    end = int(demos.episode_ends[n - 1])
    return Demonstrations(observations={k: v[:end] for k, v in demos.observations.items()},
                          actions=demos.actions[:end], episode_ends=demos.episode_ends[:n],
                          metadata={**demos.metadata, "provenance": demos.metadata["provenance"][:n]})


def concat(parts: list[Demonstrations], metadata: dict[str, Any]) -> Demonstrations:
    """Episodes of ``parts`` one after the other (the observation keys of ``parts[0]``).

    Raises:
        ValueError: a part's per-step shape of an observation key or of the actions differs from
            the first part's (e.g. labels stored by a version whose simulator state was longer).
    """
    for key in [*parts[0].observations, None]:
        shapes = [(p.actions if key is None else p.observations[key]).shape[1:] for p in parts]
        if len(set(shapes)) > 1:
            raise ValueError(f"{'actions' if key is None else f'observation {key!r}'}: per-step shapes differ "
                             f"between the demonstrations aggregated ({shapes}); were the labelled episodes "
                             "written by another rlox_dp version or env?")
    offsets = np.cumsum([0] + [p.n_steps for p in parts[:-1]])
    return Demonstrations(
        observations={k: np.concatenate([p.observations[k] for p in parts]) for k in parts[0].observations},
        actions=np.concatenate([p.actions for p in parts]),
        episode_ends=np.concatenate([o + p.episode_ends for o, p in zip(offsets, parts, strict=True)]),
        metadata=metadata,
    )


def load_labelled(path: Path, env_id: str, obs_keys: list[str], obs_mode: str | None,
                  max_round: int) -> Demonstrations | None:
    """The labelled episodes of rounds ``<= max_round`` in ``path``, observed as the policy does
    (read by the env's own demonstration loader, :meth:`EnvSpec.load_demonstrations`: for PushT
    computed from ``data/state`` in ``obs_mode``)."""
    from rlox_dp.envs import env_spec

    if not path.exists():
        return None
    return rounds_prefix(env_spec(env_id).load_demonstrations(path, obs_mode, obs_keys), max_round)


def append_labelled(path: Path, episodes: list[dict[str, Any]], env_id: str, keep_round: int) -> None:
    """Write ``path`` (atomically): its episodes of rounds ``<= keep_round``, then ``episodes``."""
    new = episodes_to_demonstrations(episodes, env_id)
    old = rounds_prefix(load_demonstrations(path), keep_round) if path.exists() else None
    if old is not None:
        new = concat([old, new], {**new.metadata, "provenance": old.metadata["provenance"] + new.metadata["provenance"]})
    save_demonstrations(new, path, overwrite=True, channels_last_keys=["img"])


def aggregate(base: Demonstrations, labelled: Demonstrations | None, base_source: str) -> Demonstrations:
    """``base`` then ``labelled`` episodes; ``metadata["provenance"]`` has one entry per episode
    (``{"source": base_source, "round": 0}`` for the base episodes, the labelled ones' own)."""
    provenance = [{"source": base_source, "round": 0}] * base.n_episodes
    if labelled is not None:
        provenance += list(labelled.metadata["provenance"])
    return concat([base] + ([labelled] if labelled is not None else []),
                   {**base.metadata, "provenance": provenance})
