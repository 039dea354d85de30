"""RL pipeline throughput, all in one run: env steps/s for physics only, physics + rendering (1 and 2 worker
processes), + the frozen encoder (the full env step: the workers embed their own renders), and a full PPO
iteration (rollout + update).

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_rl.py [--steps 24] [--encoder random:vit_demo_patch8_64]

Envs, image size, torch threads and bf16 default to the demo's params.yaml `rl` section. Targets: the full env
step >= 0.6x the render-only rate (2 workers); rendering over 2 worker processes >= 1.5x one process. Every
rate is the best of --repeat interleaved runs; the machine's load average is printed beside them because
other processes on the same cores change every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from handeye import repro
from handeye.config import PARAMS_FILE, load_config
from handeye.rl.config import RLConfig
from handeye.rl.envs.mujoco_scene import SimPool, scene_info


def sim_rate(envs: int, steps: int, image_size: int, workers: int, render: bool) -> float:
    """Env steps/s of physics (+ rendering) through SimPool, as the env drives it (step, then render)."""
    info = scene_info(1 / 60)
    pool = SimPool(envs, image_size, info.substeps, workers=workers, render=render)
    none = (np.zeros(0, int), np.zeros((0, 24)), np.zeros((0, 3)), np.zeros((0, 4)))
    rng = np.random.default_rng(0)
    try:
        pool.reset_render(*none)
        start = time.perf_counter()
        for _ in range(steps):
            pool.step(rng.uniform(-1, 1, (envs, 20)))
            pool.reset_render(*none)
        return envs * steps / (time.perf_counter() - start)
    finally:
        pool.close()


def env_rate(env, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(torch.rand(env.num_envs, env.num_actions, generator=g) * 2 - 1)
    return env.num_envs * steps / (time.perf_counter() - start)


def ppo_rate(env, steps: int, tmp: Path) -> float:
    """Env steps/s of whole PPO iterations (rsl-rl rollout + update, logging off)."""
    from handeye.rl.runner import Runner, train_cfg

    cfg = RLConfig(num_steps_per_env=steps, actor_hidden_dims=[64, 64], critic_hidden_dims=[64, 64])
    with contextlib.redirect_stdout(io.StringIO()):  # rsl-rl prints its models
        runner = Runner(env, train_cfg(cfg, env.num_envs, tmp / "live", tmp / "t.json", False), log_dir=None)
        start = time.perf_counter()
        runner.learn(1)
        return env.num_envs * steps / (time.perf_counter() - start)


def main() -> None:
    demo = load_config(RLConfig, "rl", PARAMS_FILE)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=demo.env.num_envs)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--image-size", type=int, default=demo.env.image_size)
    p.add_argument("--encoder", default="random:vit_demo_patch8_64", help="encoder spec (load_encoder)")
    p.add_argument("--threads", type=int, default=demo.threads, help="torch threads in the main process")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--encoder-bf16", action=argparse.BooleanOptionalAction, default=demo.env.encoder_bf16,
                   help="embed under bf16 autocast (slow on CPUs without native bf16 math)")
    args = p.parse_args()
    repro.seed_everything(0, threads=args.threads)
    from handeye.models.encoders import load_encoder
    from handeye.rl.envs.base import EnvConfig
    from handeye.rl.envs.mujoco_env import MujocoCubeEnv

    encoder = load_encoder(args.encoder)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    import tempfile

    start_s = float("inf")  # env construction: the workers load torch and the encoder before they render
    for _ in range(args.repeat):
        keep("physics only (1 process)", sim_rate(args.envs, args.steps * 4, args.image_size, 0, False))
        keep("physics + rendering, 1 worker", sim_rate(args.envs, args.steps, args.image_size, 1, True))
        keep("physics + rendering, 2 workers", sim_rate(args.envs, args.steps, args.image_size, 2, True))
        start = time.perf_counter()
        env = MujocoCubeEnv(EnvConfig(num_envs=args.envs, workers=2, image_size=args.image_size,
                                      encoder_bf16=args.encoder_bf16), encoder)
        start_s = min(start_s, time.perf_counter() - start)
        try:
            keep("+ encoder (full env step), 2 workers", env_rate(env, args.steps))
            with tempfile.TemporaryDirectory() as tmp:
                keep("full PPO iteration, 2 workers", ppo_rate(env, args.steps, Path(tmp)))
        finally:
            env.close()

    print(f"{args.envs} envs, 2 cameras {args.image_size}x{args.image_size}, encoder {encoder.name} "
          f"(dim {encoder.embed_dim}{', bf16' if args.encoder_bf16 else ''}), torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, rate in best.items():
        print(f"  {name:40s} {rate:8.1f} env steps/s")
    print(f"  {'env start, 2 workers':40s} {start_s:8.1f} s")
    render2 = best["physics + rendering, 2 workers"]
    print(f"  2 workers / 1 worker rendering:          {render2 / best['physics + rendering, 1 worker']:.2f}x "
          f"(target >= 1.5x)")
    print(f"  full env step / render-only (2 workers): {best['+ encoder (full env step), 2 workers'] / render2:.2f}x "
          f"(target >= 0.6x)")
    print(f"  PPO iteration / render-only (2 workers): {best['full PPO iteration, 2 workers'] / render2:.2f}x")


if __name__ == "__main__":
    main()
