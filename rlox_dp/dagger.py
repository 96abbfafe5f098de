"""DAgger (Ross, Gordon & Bagnell 2011) with the built-in experts, for every registered algorithm.

    trainer = Trainer("diffusion", env="gym_pusht/PushT-v0", demos="pusht.zarr", config={"obs": "keypoints"})
    DAgger(trainer, {"rounds": 4, "episodes": 50, "steps_per_round": 5000}, out_dir="runs/dagger").run()
    DAgger.resume("runs/dagger").run()             # after an interruption: continues at the next round
    Trainer(..., config={"dagger_rounds": 4, "dagger_episodes": 50}).train()  # the same, in <log_dir>/dagger

Round 0 trains on the given demonstrations (``initial_steps``). Each round ``r = 1..rounds`` then

1. rolls out ``episodes`` episodes (reset seeds ``first_seed + (r-1) * episodes + j``, disjoint
   from the evaluation seeds) with a mixture of the policy and the expert: at every
   ``label_every``-th step (default: the policy's ``n_action_steps``, where it replans) the
   simulator state is captured and labelled by the expert (:mod:`rlox_dp.experts.labelling`: its
   next ``label_horizon`` actions from that state, default the policy's ``horizon``); with
   probability ``beta_r = beta * beta_decay ** (r - 1)`` the env then executes the expert's
   label for the next ``label_every`` steps instead of the policy's actions (the policy still
   sees every observation, so its queues stay in step);
2. turns every label into a new episode, aggregated with all earlier ones: the ``n_obs_steps - 1``
   steps before the labelled state as visited (observations and executed actions), then the
   expert's chunk from the state (its observations and actions), so the training window that
   starts there holds exactly the observations the policy saw and the expert's actions from that
   state, and later windows follow the expert's own trajectory;
3. trains ``steps_per_round`` more gradient steps on demonstrations + all labelled episodes
   (normalized with the statistics of the round-0 data), evaluates, and saves.

``out_dir`` holds ``dagger.json`` (config, per-round history with the labelling cost), the
labelled episodes ``labelled.zarr`` (zarr replay-buffer layout; PushT: the human dataset's layout,
``data/state`` ``(N, 5)``, so ``load_pusht_demonstrations`` reads it; every env: ``data/sim_state``
and per-episode provenance in the ``metadata`` attribute: source ``"expert_labelled"``, round,
rollout seed, step, whether the expert drove) and ``checkpoints/round_<r>.safetensors``. Resuming
from round ``r`` gives the same result as an uninterrupted run: every round seeds its rollouts and
labels from (seed, round), and the training RNG states are in the checkpoint. A round stopped
while training keeps its collected labels (``dagger.json``'s ``collected``): the resumed run
trains on them instead of asking the expert again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rlox_dp.buffers import Demonstrations
from rlox_dp.buffers.loaders import load_demonstrations, save_demonstrations
from rlox_dp.checkpoint import atomic_write_bytes
from rlox_dp.dagger_config import DAggerConfig
from rlox_dp.dagger_data import (
    VisitedEpisode,
    aggregate,
    append_labelled,
    labelled_episodes,
    load_labelled,
)
from rlox_dp.envs.factory import make_env
from rlox_dp.experts.labelling import ExpertLabeller, LabellingError, get_labeller
from rlox_dp.trainer import Trainer
from rlox_dp.training.callbacks import Callback

__all__ = ["DAgger", "DAggerConfig", "train_with_dagger"]

logger = logging.getLogger("rlox_dp")
STATE_FILE, LABELLED_FILE, BASE_FILE = "dagger.json", "labelled.zarr", "base_demos.npz"


class DAgger:
    """DAgger rounds around a :class:`~rlox_dp.trainer.Trainer` (module docstring).

    Args:
        trainer: built with the demonstrations to start from (a path, ``Demonstrations`` or the
            built-in expert's); its env needs an expert that can label states.
        config: :class:`DAggerConfig` or a dict of its fields.
        out_dir: where rounds are saved (default ``<trainer.log_dir>/dagger``).
        labeller: label with this :class:`~rlox_dp.experts.labelling.ExpertLabeller` (default:
            :func:`~rlox_dp.experts.labelling.get_labeller` for the trainer's env).
    """

    def __init__(self, trainer: Trainer, config: DAggerConfig | Mapping[str, Any] | None = None, *,
                 out_dir: str | os.PathLike | None = None, labeller: ExpertLabeller | None = None,
                 _state: dict[str, Any] | None = None) -> None:
        if trainer.dist.enabled:
            raise ValueError("DAgger runs in one process (its rollouts, labels and files are not "
                             "split between torchrun ranks); start it without torchrun")
        self.trainer = trainer
        self.config = config if isinstance(config, DAggerConfig) else DAggerConfig.from_dict(config or {})
        cfg, policy_cfg = self.config, trainer.config
        self.label_every = cfg.label_every or policy_cfg.n_action_steps
        self.label_horizon = cfg.label_horizon or policy_cfg.horizon
        self.out_dir = Path(out_dir) if out_dir is not None else Path(trainer.log_dir) / "dagger"
        self.labeller = labeller or get_labeller(
            trainer.env_id, self.label_horizon, env_kwargs=trainer.env_kwargs,
            cache_dir=trainer.cache_dir, progress=trainer.progress)
        if self.labeller.horizon != self.label_horizon:
            raise ValueError(f"labeller: its horizon {self.labeller.horizon} differs from the label "
                             f"horizon {self.label_horizon}")
        self.base = trainer.load_demonstrations()
        if _state is None and (self.out_dir / STATE_FILE).exists():
            raise FileExistsError(f"out_dir {str(self.out_dir)!r} holds a DAgger run; continue it with "
                                  "DAgger.resume(out_dir) or choose another out_dir")
        # the trainer's run directory is this run's before anything is written there (out_dir may lie
        # inside it; the rounds' TensorBoard scalars do, also when a resumed round trains nothing)
        trainer.claim_log_dir().release()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = _state or {"completed_round": -1, "history": [], **self._describe_base(self.base)}
        self.labelled = self._load_labelled(self.state["completed_round"])
        self._callbacks: Sequence[Callback] = ()

    def _describe_base(self, base: Demonstrations) -> dict[str, Any]:
        """Where the round-0 demonstrations come from, so that :meth:`resume` finds them again."""
        source = self.trainer.demos_source
        kind = "expert" if base.metadata.get("source") in ("expert", "rollout", "pusht_mpc_expert") else "human"
        if source is None:  # in memory or the built-in expert's: keep a copy with the run
            save_demonstrations(base, self.out_dir / BASE_FILE, overwrite=True)
        return {"base_demos": str(source) if source is not None else None, "base_source": kind,
                "config": self.config.to_dict(), "cache_dir": str(self.trainer.cache_dir or "") or None}

    @classmethod
    def resume(cls, out_dir: str | os.PathLike, *, device: str = "auto", progress: bool = True,
               labeller: ExpertLabeller | None = None) -> DAgger:
        """Continue the DAgger run saved in ``out_dir`` after its last completed round."""
        out_dir = Path(out_dir)
        state = json.loads((out_dir / STATE_FILE).read_text())
        r = state["completed_round"]
        demos = state["base_demos"] or load_demonstrations(out_dir / BASE_FILE)
        trainer = Trainer.load(out_dir / "checkpoints" / f"round_{r:02d}.safetensors", demos=demos,
                               device=device, cache_dir=state["cache_dir"], progress=progress)
        return cls(trainer, DAggerConfig.from_dict(state["config"]), out_dir=out_dir, labeller=labeller,
                   _state=state)

    def beta(self, round_index: int) -> float:
        """Probability that the expert drives a labelled chunk in round ``round_index`` (>= 1)."""
        return self.config.beta * self.config.beta_decay ** (round_index - 1)

    def run(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
        """Train round 0 (if not done) and the remaining rounds; returns the per-round history.
        ``callbacks`` go to every round's :meth:`Trainer.train <rlox_dp.trainer.Trainer.train>`."""
        self._callbacks = callbacks
        cfg = self.config
        if self.state["completed_round"] < 0:
            steps = cfg.initial_steps if cfg.initial_steps is not None else self.trainer.training.total_steps
            self.trainer.set_demonstrations(aggregate(self.base, None, self.state["base_source"]))
            self._train_and_save(0, max(steps, self.trainer.state.step), {"beta": 1.0}, round_start=0)
        for r in range(self.state["completed_round"] + 1, cfg.rounds + 1):
            left = self._labels_left()
            if left is not None and left < self.labeller.horizon:
                logger.info("DAgger: label budget spent (%d of %d expert actions)", cfg.label_budget - left,
                            cfg.label_budget)
                break
            stats = self._collected_or_collect(r)
            data = aggregate(self.base, self.labelled, self.state["base_source"])
            self.trainer.set_demonstrations(data)
            stats["demo_episodes"] = data.n_episodes
            stats["label_actions_outside_range"] = self._outside_action_range()
            self._train_and_save(r, self.trainer.state.step + cfg.steps_per_round, stats,
                                 round_start=self.trainer.state.step)
        return self.state["history"]

    def _collected_or_collect(self, r: int) -> dict[str, Any]:
        """Round ``r``'s rollouts and labels: collected now, or read back when an interrupted run
        had already collected (and saved) them before its training stopped."""
        collected = self.state.get("collected")
        if collected is not None and collected["round"] == r:
            logger.info("DAgger round %d: reusing the %d labels collected before the interruption", r,
                        collected["stats"]["labels"])
            self.labelled = self._load_labelled(r)
            return dict(collected["stats"])
        stats = self._collect(r)
        self.state["collected"] = {"round": r, "stats": stats}
        self._write_state()
        return stats

    def _labels_left(self) -> int | None:
        """Expert actions the label budget still allows the rounds (None: no budget)."""
        if self.config.label_budget is None:
            return None
        return self.config.label_budget - sum(row.get("label_steps", 0) for row in self.state["history"])

    def _write_state(self) -> None:
        """``dagger.json`` (config, history, collected labels) written atomically."""
        atomic_write_bytes(self.out_dir / STATE_FILE, json.dumps(self.state, indent=1).encode())

    def _outside_action_range(self) -> float:
        """Fraction of labelled action values outside the min-max range the policy normalizes
        actions with (fitted on the round-0 data); warns when there are any."""
        normalizer = self.trainer.policy.normalizer
        if self.labelled is None or normalizer.mode("action") != "min_max":
            return 0.0
        actions = torch.as_tensor(self.labelled.actions, dtype=torch.float32, device=self.trainer.device)
        fraction = float((normalizer.normalize("action", actions).abs() > 1 + 1e-5).float().mean())
        if fraction > 0:
            logger.warning("DAgger: %.2f%% of the labelled action values lie outside the range of the round-0 "
                           "actions the policy normalizes with; a policy that clips its samples to "
                           "[-1, 1] (clip_sample) cannot reach them", 100 * fraction)
        return fraction

    def _train_and_save(self, r: int, total_steps: int, stats: dict[str, Any], *, round_start: int) -> None:
        """Train to ``total_steps``, evaluate (CPU time apart), save round ``r``.

        A round-0 trainer resumed from an interrupted run's checkpoint (at a step past
        ``round_start``) trains only the rest: its ``train_cpu_s`` is this process's CPU time per
        step times all the round's steps, and ``resumed_at`` says from which step. When the
        interrupted run had already trained all of them, this process measured nothing and
        ``train_cpu_s`` is None (unknown), not the ~0 s it spent.
        """
        cpu, start = time.process_time(), self.trainer.state.step
        metrics = (self.trainer.train(total_steps, evaluate=False, callbacks=self._callbacks, dagger=False)
                   if total_steps > start else {})
        cpu, trained = time.process_time() - cpu, self.trainer.state.step - start
        row = {"round": r, **stats, "step": self.trainer.state.step, "train_cpu_s": cpu}
        if start > round_start:
            all_steps = self.trainer.state.step - round_start
            row.update(train_cpu_s=cpu * all_steps / trained if trained > 0 else None, resumed_at=start)
        if "loss" in metrics:
            row["loss"] = metrics["loss"]
        if self.config.evaluate:
            cpu = time.process_time()
            row.update(self.trainer.evaluate(), eval_cpu_s=time.process_time() - cpu)
            result = self.trainer.last_eval
            row["eval_episodes"] = {name: values.tolist() for name, values in
                                    [("returns", result.returns), ("successes", result.successes),
                                     ("scores", result.scores)] if values is not None}
        for key, value in row.items():  # the per-round curve in TensorBoard, at the round's last step
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round":
                self.trainer.writer.add_scalar(f"dagger/{key}", value, row["step"])
        self.trainer.writer.flush()
        self.trainer.save(self.out_dir / "checkpoints" / f"round_{r:02d}.safetensors")
        self.state["completed_round"] = r
        self.state["history"].append(row)
        self.state.pop("collected", None)
        self._write_state()
        logger.info("DAgger round %d: %s", r, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in row.items() if k not in ("round", "eval_episodes")))

    def _collect(self, r: int) -> dict[str, float]:
        """Round ``r``'s mixture rollouts and labels; appends them to :attr:`labelled` and saves."""
        cfg, trainer = self.config, self.trainer
        seeds = [cfg.first_seed + (r - 1) * cfg.episodes + j for j in range(cfg.episodes)]
        beta, rng = self.beta(r), np.random.default_rng([trainer.seed, r])
        torch.manual_seed(int(np.random.SeedSequence([trainer.seed, r]).generate_state(1)[0]))
        policy = trainer.eval_policy
        was_training = policy.training
        policy.eval()
        envs = [make_env(trainer.env_id, env_kwargs=trainer.env_kwargs, max_episode_steps=cfg.max_episode_steps)
                for _ in range(min(cfg.n_envs, len(seeds)))]
        pending, done = iter(seeds), []
        running: list[VisitedEpisode | None] = [None] * len(envs)
        obs: list[dict[str, np.ndarray]] = [{}] * len(envs)
        cost = {"label_cpu_s": 0.0, "label_wall_s": 0.0, "labels": 0, "label_steps": 0}
        start_cpu, calls, left, cut = time.process_time(), 0, self._labels_left(), 0
        bar = tqdm(total=len(seeds), desc=f"DAgger round {r}/{cfg.rounds} (beta {beta:.2f})",
                   disable=not trainer.progress, dynamic_ncols=True, leave=False)
        try:
            for i, env in enumerate(envs):
                running[i] = VisitedEpisode(next(pending))
                obs[i], _ = env.reset(seed=running[i].seed)
            policy.reset(None)
            while any(e is not None for e in running):
                fit = None if left is None else (left - cost["label_steps"]) // self.labeller.horizon
                if fit == 0:  # the budget holds no further whole label: stop mid-round
                    cut = sum(e is not None for e in running)
                    done += [e for e in running if e is not None]
                    break
                actions = policy.select_action({k: np.stack([o[k] for o in obs]) for k in obs[0]})
                due = [i for i, e in enumerate(running) if e is not None and e.t % self.label_every == 0][:fit]
                if due:
                    calls += 1
                    self._label(r, calls, [envs[i] for i in due], [obs[i] for i in due],
                                [running[i] for i in due], rng, beta, cost)
                reset = np.zeros(len(envs), dtype=bool)
                for i, (env, ep) in enumerate(zip(envs, running, strict=True)):
                    if ep is None:
                        continue
                    k = ep.t - ep.plan_start
                    action = ep.plan[k] if ep.plan is not None and k < len(ep.plan) else actions[i]
                    ep.obs.append(obs[i])
                    ep.sim_states.append(self.labeller.capture(env))
                    ep.actions.append(np.asarray(action, dtype=env.action_space.dtype))
                    obs[i], _, terminated, truncated, _ = env.step(ep.actions[-1])
                    if terminated or truncated:
                        done.append(ep)
                        bar.update(1)
                        seed = next(pending, None)
                        running[i] = None if seed is None else VisitedEpisode(seed)
                        if seed is not None:
                            obs[i], _ = env.reset(seed=seed)
                            reset[i] = True
                if reset.any():
                    policy.reset(reset)
        finally:
            bar.close()
            for env in envs:
                env.close()
            policy.reset()
            policy.train(was_training)
        episodes = [e for ep in sorted(done, key=lambda e: e.seed)
                    for e in labelled_episodes(ep, trainer.config.n_obs_steps, r)]
        self._save_labelled(episodes)
        steps = sum(ep.t for ep in done)
        return {"beta": beta, "episodes": len(done), "episodes_cut_by_budget": cut, "env_steps": steps,
                "expert_driven_steps": sum(min(self.label_every, len(c.actions)) for ep in done for _, c, d in ep.labels if d),
                **cost, "rollout_cpu_s": time.process_time() - start_cpu - cost["label_cpu_s"]}

    def _label(self, r: int, call: int, envs: list, obs: list, rollouts: list[VisitedEpisode],
               rng: np.random.Generator, beta: float, cost: dict[str, float]) -> None:
        """Label the current states of ``envs``; start the expert's plan where it drives."""
        states = np.stack([self.labeller.capture(env) for env in envs])
        cpu, wall = time.process_time(), time.perf_counter()
        chunks = self.labeller.label(states, seed=int(np.random.SeedSequence([self.trainer.seed, r, call]).generate_state(1)[0]))
        cost["label_cpu_s"] += time.process_time() - cpu
        cost["label_wall_s"] += time.perf_counter() - wall
        for o, ep, chunk in zip(obs, rollouts, chunks, strict=True):
            for key, value in o.items():
                if not np.array_equal(chunk.observations[key][0], value):
                    raise LabellingError(
                        f"env {self.trainer.env_id!r}: restoring a captured state did not reproduce the "
                        f"observation {key!r} (seed {ep.seed}, step {ep.t}); its state access is incomplete")
            drove = bool(rng.random() < beta)
            ep.labels.append((ep.t, chunk, drove))
            ep.plan, ep.plan_start = (chunk.actions[: self.label_every] if drove else None), ep.t
            cost["labels"] += 1
            cost["label_steps"] += len(chunk.actions)

    def _save_labelled(self, episodes: list[dict[str, Any]]) -> None:
        """Append ``episodes`` to ``labelled.zarr`` and reload all of them from it, so that a
        resumed run trains on bit-identical data."""
        if episodes:
            append_labelled(self.out_dir / LABELLED_FILE, episodes, self.trainer.env_id, self.state["completed_round"])
        self.labelled = self._load_labelled(self.state["completed_round"] + 1)

    def _load_labelled(self, max_round: int) -> Demonstrations | None:
        t = self.trainer
        return load_labelled(self.out_dir / LABELLED_FILE, t.env_id, list(t.observation_space.spaces),
                             t.env_kwargs.get("obs_mode"), max_round)


def train_with_dagger(trainer: Trainer, total_steps: int, *, evaluate: bool = True,
                      callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """What :meth:`Trainer.train <rlox_dp.trainer.Trainer.train>` does when the trainer's config has
    ``dagger_<field>`` keys (:attr:`~rlox_dp.trainer.Trainer.dagger_config`): DAgger rounds saved in
    ``<log_dir>/dagger`` (continue an interrupted one with ``DAgger.resume(<log_dir>/dagger)``).
    Round 0 trains ``total_steps`` unless ``dagger_initial_steps`` is set; with ``evaluate`` and
    ``dagger_evaluate=False`` the final policy is evaluated once at the end.

    Returns:
        the last round's numbers (``step``, ``loss``, ``labels``, ``label_cpu_s``, ``eval/...``)
        and ``dagger_rounds`` (rounds completed after round 0).
    """
    config = trainer.dagger_config or DAggerConfig()
    if config.initial_steps is None:
        config = config.replace(initial_steps=total_steps)
    history = DAgger(trainer, config, out_dir=Path(trainer.log_dir) / "dagger").run(callbacks)
    metrics = {k: float(v) for k, v in history[-1].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"}
    if evaluate and not config.evaluate:
        metrics.update(trainer.evaluate())
    return {**metrics, "dagger_rounds": float(len(history) - 1)}

