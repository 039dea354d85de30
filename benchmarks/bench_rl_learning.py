"""Does PPO learn on the MuJoCo task with given settings? Seconds a run instead of minutes: no cameras.

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_rl_learning.py [--profile demo-long] [--seeds 0 1 2]
        [--terms track_pos_l2 ...] [--embeddings zeros|pose] [--budgets 150 300 ...] [--set KEY=VALUE ...]

The envs step their physics in this process and render nothing; the policy sees zero embeddings where the
cameras' would be, and everything else as in ``handeye rl`` (rewards, resets, the critic's privileged state,
rsl-rl's PPO, the profile's rl settings with --set's). That keeps what the learning dynamics depend on
but the images, at ~50x the speed. With ``--embeddings pose`` the zeros become camera-like inputs (BlindPool).
With ``--terms``, PPO is given the sum of those reward terms only (every term is still logged).

Each seed trains twice from the same start: with the settings (``learnt``), and with learning rate 0
(``fixed``: the initial policy, its normalisers still updating), the reference measured in the same run. Printed
per reward term (per step): the means of the first and the last ``--window`` iterations of both, and two
differences as mean +- 95% CI over the seeds: the learnt runs' last window minus their first (how far a reward
curve rises) and learnt - fixed over the last window; a setting learns a term only where an interval lies above 0.
With ``--budgets``, both differences are also printed as if the runs had stopped after each of those numbers of
iterations: the shortest budget at which a setting learns, read off one long run per seed.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TQDM_DISABLE", "1")  # a bar per run would bury the table

import numpy as np
import torch
import yaml

from handeye import repro
from handeye.config import load_config, resolve_profile
from handeye.distributed import World
from handeye.rl.config import RLConfig
from handeye.rl.envs import rewards
from handeye.rl.envs.mujoco_env import MujocoCubeEnv
from handeye.rl.envs.mujoco_scene import SimPool
from handeye.rl.figures import read_metric
from handeye.rl.runner import run_config, start_run, train_policy, work_folder
from handeye.rl.table import seed_band

BLIND_DIM = 8  # per camera: zeros in place of an encoder's embedding
POSE_DIM = 96  # per camera, --embeddings pose: the demo ViTs' width
METRICS = ("Reward/track_orientation_inv_l2", "Reward/track_pos_l2", "Reward/success_bonus", "Reward/total")
BUDGET_METRICS = ("Reward/track_orientation_inv_l2", "Reward/track_pos_l2", "Reward/total")


class BlindPool(SimPool):
    """SimPool in this process without renders; ``reset_render`` gives zero embeddings, or with ``pose`` what
    stands in for a camera's: a fixed random map of what it sees (the cube's pose, the hand's joints), as wide
    as a demo ViT's. They carry the cube's orientation, entangled over 2 x 96 inputs as an encoder's are."""

    def __init__(self, num_envs: int, substeps: int, pose: bool = False):
        super().__init__(num_envs, image_size=8, substeps=substeps, workers=0, render=False)
        self.pose = pose
        self.projection = 2.0 * np.random.default_rng(123).normal(size=(2, 3 + 4 + 24, POSE_DIM)).astype(np.float32)

    def reset_render(self, *poses):
        _, state = super().reset_render(*poses)
        if not self.pose:
            return np.zeros((self.num_envs, 2, BLIND_DIM), np.float32), state
        # cm-scale positions: the cube moves by centimetres, as much as its quaternion's entries change
        seen = np.concatenate([20 * state["object_pos"], state["object_quat"], state["hand_qpos"]], -1)
        return np.tanh(np.einsum("ni,cid->ncd", seen.astype(np.float32), self.projection)), state


class BlindCubeEnv(MujocoCubeEnv):
    """The MuJoCo task without cameras, rewarding the sum of ``terms``."""

    def __init__(self, cfg, terms: tuple[str, ...], seed: int, pose: bool = False):
        self.terms, self.pose = terms, pose
        super().__init__(cfg, encoder=None, seed=seed)

    def make_sim(self, substeps: int) -> SimPool:
        return BlindPool(self.num_envs, substeps, self.pose)

    def step(self, actions: torch.Tensor):
        obs, _, dones, extras = super().step(actions)
        return obs, sum(self.reward.terms[t] for t in self.terms).float(), dones, extras


def with_settings(section: dict, pairs: list[str]) -> dict:
    """A copy of the rl ``section`` with each KEY=VALUE set ("env.goal_max_angle=0.5"); RLConfig then refuses
    unknown keys and coerces the values."""
    out = copy.deepcopy(section)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"bench_rl_learning: '{pair}' is not KEY=VALUE")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def train(cfg: RLConfig, terms: tuple[str, ...], root: Path, pose: bool) -> dict[str, list[float]]:
    """One blind PPO run -> metric -> its value per iteration."""
    repro.seed_everything(cfg.seed, threads=cfg.threads)
    env = BlindCubeEnv(cfg.env, terms, cfg.seed, pose)
    final = root / f"{'fixed' if cfg.learning_rate == 0 else 'learnt'}_s{cfg.seed}"
    try:
        train_policy(cfg, env, World(), final, start_run(World(), final, resume=False), run_config(cfg))
    finally:
        env.close()
    curves = {m: read_metric(work_folder(final), m) for m in (*METRICS, "Policy/mean_std")}
    return {m: [c[i] for i in sorted(c)] for m, c in curves.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo-long", help="settings: this profile's rl section")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--window", type=int, default=10, help="iterations averaged at each end")
    parser.add_argument("--terms", nargs="+", choices=rewards.TERMS, default=list(rewards.TERMS),
                        help="reward terms PPO is given (default: all, the task's reward)")
    parser.add_argument("--embeddings", choices=("zeros", "pose"), default="zeros",
                        help="in the cameras' place: zeros, or a fixed random map of the cube's pose and the joints")
    parser.add_argument("--budgets", type=int, nargs="+", default=[], metavar="N",
                        help="also print both differences as if the runs had stopped after N iterations, for each N")
    parser.add_argument("--set", dest="settings", nargs="+", default=[], metavar="KEY=VALUE",
                        help="rl settings over the profile's, e.g. env.goal_max_angle=0.5")
    args = parser.parse_args()

    section = with_settings(resolve_profile(args.profile).get("rl") or {}, args.settings)
    cfg = load_config(RLConfig, "rl", {"rl": section})
    cfg = replace(cfg, iterations=args.iterations, env=replace(cfg.env, workers=0))
    terms = tuple(args.terms)
    cpu = repro.cpu_description()
    print(f"{cpu['model']} ({', '.join(cpu['flags'] or [])}); profile {args.profile} + {' '.join(args.settings) or '-'}; "
          f"{cfg.env.num_envs} envs x {cfg.num_steps_per_env} steps x {cfg.iterations} iterations, "
          f"seeds {args.seeds}; PPO rewarded with {' + '.join(terms)}; embeddings: {args.embeddings}")
    runs: dict[tuple[str, int], dict[str, list[float]]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pose = args.embeddings == "pose"
        for seed in args.seeds:
            runs["learnt", seed] = train(replace(cfg, seed=seed), terms, Path(tmp), pose)
            runs["fixed", seed] = train(replace(cfg, seed=seed, learning_rate=0.0, schedule="fixed"), terms,
                                        Path(tmp), pose)
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; per-step means of the first -> last "
          f"{args.window} iterations, averaged over seeds")
    w = args.window
    for metric in METRICS:
        ends = {kind: [(np.mean(runs[kind, s][metric][:w]), np.mean(runs[kind, s][metric][-w:])) for s in args.seeds]
                for kind in ("learnt", "fixed")}
        line = "  ".join(f"{kind} {np.mean([e[0] for e in v]):.3f} -> {np.mean([e[1] for e in v]):.3f}"
                         for kind, v in ends.items())
        if len(args.seeds) > 1:
            # how far each learnt curve rises, then how far it ends above the initial policy's (same run)
            rises, gains = differences(runs, args.seeds, metric, w)
            line += f"  learnt end - start {band(rises)}  learnt - fixed {band(gains)}"
        print(f"{metric.split('/')[1]:25s} {line}")
    if len(args.seeds) > 1:
        for budget in (b for b in args.budgets if w <= b <= cfg.iterations):
            for m in BUDGET_METRICS:
                rises, gains = differences(runs, args.seeds, m, w, budget)
                print(f"after {budget:4d} iterations, {m.split('/')[1]:25s} learnt end - start {band(rises)}  "
                      f"learnt - fixed {band(gains)}")
    stds = [runs["learnt", s]["Policy/mean_std"][-1] for s in args.seeds]
    print(f"{'policy std at the end':25s} learnt {np.mean(stds):.3f} (starts at {cfg.init_noise_std})")


def differences(runs: dict, seeds: list[int], metric: str, window: int,
                budget: int | None = None) -> tuple[list[float], list[float]]:
    """Per seed, over the first ``budget`` iterations (None: all): the learnt curve's last ``window`` mean minus its
    first (how far it rises), and minus the fixed curve's last ``window`` mean (how far it ends above the initial
    policy, measured in the same run)."""
    learnt = [np.asarray(runs["learnt", s][metric][:budget]) for s in seeds]
    fixed = [np.asarray(runs["fixed", s][metric][:budget]) for s in seeds]
    rises = [float(c[-window:].mean() - c[:window].mean()) for c in learnt]
    gains = [float(lc[-window:].mean() - fc[-window:].mean()) for lc, fc in zip(learnt, fixed, strict=True)]
    return rises, gains


def band(values: list[float]) -> str:
    """Mean +- 95% CI over seeds, and whether the interval lies above or below 0."""
    mean, half = seed_band(values)
    verdict = "learns" if mean - half > 0 else "worse" if mean + half < 0 else "no clear change"
    return f"{mean:+.3f} +- {half:.3f} ({verdict})"


if __name__ == "__main__":
    main()
