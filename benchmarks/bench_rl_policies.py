"""What a learner has to beat on the MuJoCo task: the per-step rewards of fixed policies, all in one run.

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_rl_policies.py [--steps 240] [--goal-max-angle 0.5]

Policies: ``zero`` (action 0: every actuator at the middle of its range), ``hold`` (the targets the hand had
at its last reset, i.e. keep the start pose), each with Gaussian action noise of std 0 and --std (PPO's
initial policy is ``zero`` with noise std ``rl.init_noise_std``). Printed per policy: the orientation reward
per step over time (means of 20-step windows), its mean, the position term, the total reward per step and the
successes; the ratio is each policy's orientation reward to ``zero``'s in the same run. A PPO run has learnt
something only where its orientation reward rises above these.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from handeye import repro
from handeye.config import PARAMS_FILE, load_config
from handeye.models.encoders import load_encoder
from handeye.rl.config import RLConfig
from handeye.rl.envs import rewards
from handeye.rl.envs.mujoco_env import MujocoCubeEnv

WINDOW = 20


def current_targets(env: MujocoCubeEnv) -> torch.Tensor:
    """The actions that reproduce each env's present actuator targets: (N, 20)."""
    sim = env.sim.local
    ctrl = np.stack([d.ctrl for d in sim.data])
    return torch.from_numpy((ctrl - sim.ctrl_center) / sim.ctrl_half).float()


def rollout(env: MujocoCubeEnv, policy: str, std: float, steps: int) -> dict[str, list[float] | int]:
    g = torch.Generator().manual_seed(0)
    target = current_targets(env) if policy == "hold" else torch.zeros(env.num_envs, env.num_actions)
    rot, pos, total, successes = [], [], [], 0
    for _ in range(steps):
        _, reward, dones, extras = env.step(target + std * torch.randn(target.shape, generator=g))
        if policy == "hold" and dones.any():
            ended = dones.bool()
            target[ended] = current_targets(env)[ended]
        rot.append(float(extras["log"]["Reward/track_orientation_inv_l2"]))
        pos.append(float(extras["log"]["Reward/track_pos_l2"]))
        total.append(float(reward.mean()))
        successes += round(float(extras["log"]["Reward/success_bonus"]) * env.num_envs / rewards.REACH_GOAL_BONUS)
    return {"rot": rot, "pos": pos, "total": total, "successes": successes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--std", type=float, default=1.0, help="action noise of the noisy policies")
    parser.add_argument("--goal-max-angle", type=float, default=None, help="rad; default: any orientation")
    parser.add_argument("--episode-s", type=float, default=2.0)
    parser.add_argument("--envs", type=int, default=16)
    args = parser.parse_args()

    cfg = load_config(RLConfig, "rl", PARAMS_FILE)
    env_cfg = replace(cfg.env, num_envs=args.envs, episode_length_s=args.episode_s, workers=0,
                      goal_max_angle=args.goal_max_angle)
    torch.set_num_threads(cfg.threads)
    cpu = repro.cpu_description()
    where = f"within {args.goal_max_angle} rad" if args.goal_max_angle else "anywhere"
    print(f"{cpu['model']} ({', '.join(cpu['flags'] or [])}); {args.envs} envs x {args.steps} steps, {args.episode_s} s episodes, "
          f"goals {where}; orientation reward per step, {WINDOW}-step windows")
    results = {}
    for policy in ("zero", "hold"):
        for std in (0.0, args.std):
            env = MujocoCubeEnv(env_cfg, load_encoder("random"), seed=0)
            try:
                results[policy, std] = rollout(env, policy, std, args.steps)
            finally:
                env.close()
    reference = np.mean(results["zero", 0.0]["rot"])
    for (policy, std), r in results.items():
        windows = " ".join(f"{np.mean(r['rot'][i:i + WINDOW]):.2f}" for i in range(0, args.steps, WINDOW))
        print(f"{policy:4s} std {std:.1f}: orientation {np.mean(r['rot']):.3f} ({np.mean(r['rot']) / reference:.2f}x "
              f"zero), position {np.mean(r['pos']):.3f}, total {np.mean(r['total']):.3f}, successes {r['successes']}; windows {windows}")


if __name__ == "__main__":
    main()
