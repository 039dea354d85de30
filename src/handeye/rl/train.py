"""Stage `rl`: PPO (rsl-rl's OnPolicyRunner) on the two-camera cube reorientation task, through a frozen encoder.

    handeye rl --encoder imagenet --seed 0 [--backend mujoco|isaaclab] [--resume]
    torchrun --nproc_per_node N -m handeye rl ...     # N ranks, each with rl.env.num_envs envs (rl/runner.py)

writes ``out/rl/<encoder>_s<seed>/``: ``live/`` (dvclive metrics, one step per PPO iteration, bit-for-bit
repeatable), ``timings.json`` (wall clock: the one output that cannot repeat), ``checkpoints/model_<it>.pt``,
``policy.pt`` (final actor + resolved config) and ``run_manifest.json`` (with the world size). The folder is
built as ``.<name>.partial`` beside it and renamed into place when training ends; ``--resume`` continues from
the last checkpoint of that partial folder (or of a finished run, to train it further), on any world size.
The trainer and the run folder's life cycle live in ``handeye.rl.runner``, shared with the Isaac Lab backend.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from handeye import distributed, repro
from handeye.config import PARAMS_FILE, load_config
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.rl.config import RLConfig, run_name
from handeye.rl.envs import BACKENDS
from handeye.rl.runner import finish_run, policy_state, run_config, start_run, train_policy

ISAACLAB_HINT = ("the isaaclab backend runs only inside the Isaac Lab image on a GPU machine: build and run "
                 "docker/Dockerfile.isaaclab (see README)")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise HandEyeError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)} "
                           f"(mujoco runs here on the CPU; {ISAACLAB_HINT})")


def run_rl(cfg: RLConfig, resume: bool = False, encoder=None, world: World | None = None) -> Path:
    """Train one policy; -> the finished run folder. ``encoder``: an ``Encoder`` to use instead of loading
    ``cfg.encoder`` (tests). world: this process's rank, by default as torchrun sets it (world size 1 without
    torchrun): every rank steps its own ``cfg.env.num_envs`` MuJoCo envs (and ``cfg.env.workers`` render
    processes) on the CPU, seeded ``cfg.seed + rank``; rank 0 alone writes the run folder."""
    check_backend(cfg.backend)
    if cfg.backend == "isaaclab":
        from handeye.rl.envs.isaaclab import run_isaaclab

        return run_isaaclab(cfg, resume)
    world = world or distributed.world_from_env()
    device = distributed.device_for(world, "cpu")  # MuJoCo steps on the CPU, and PPO beside it (gloo)
    with distributed.process_group(world, device):
        return train_mujoco(cfg, resume, encoder, world)


def train_mujoco(cfg: RLConfig, resume: bool, encoder, world: World) -> Path:
    problem = None
    try:  # a rank's missing encoder or EGL stops every rank (none waits for one that left)
        if encoder is None:
            from handeye.models.encoders import load_encoder

            encoder = load_encoder(cfg.encoder)
        from handeye.sim.assets import require_egl

        require_egl()
    except HandEyeError as e:
        problem = str(e)
    distributed.agree(world, problem)
    config = run_config(cfg)
    distributed.check_same(world, config, "rl parameters")
    final = Path(cfg.out_dir) / run_name(cfg.encoder, cfg.seed)
    ckpt = start_run(world, final, resume)
    # seed + rank: each rank's envs draw other start poses, goals and action noise; rank 0 is the
    # single-process run, and PPO starts every rank from rank 0's weights (rsl-rl broadcasts them)
    repro.seed_everything(cfg.seed + world.rank, threads=cfg.threads)

    from handeye.rl.envs.mujoco_env import MujocoCubeEnv

    env = MujocoCubeEnv(cfg.env, encoder, seed=cfg.seed + world.rank)
    try:
        runner = train_policy(cfg, env, world, final, ckpt, config)
        policy = policy_state(runner, env, config, encoder)
    finally:
        env.close()
    return finish_run(world, final, policy, config, cfg.seed, "cpu")


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="encoder: registry name (random, imagenet, ego_frozen, ...) or checkpoint")
    p.add_argument("--backend", help=f"simulator: {' or '.join(BACKENDS)} (default: params rl.backend)")
    p.add_argument("--seed", type=int, help="seed (default: params rl.seed)")
    p.add_argument("--iterations", type=int, help="PPO iterations (default: params rl.iterations)")
    p.add_argument("--out-dir", dest="out_dir", help="parent folder of the run (default: out/rl)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file")


def main(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("encoder", "backend", "seed", "iterations", "out_dir")}
    cfg = load_config(RLConfig, "rl", args.params, overrides)
    start = time.perf_counter()
    world = distributed.world_from_env()
    out = run_rl(cfg, resume=args.resume, world=world)
    if not world.is_main:
        return 0
    print(f"rl: {cfg.encoder} seed {cfg.seed}: {cfg.iterations} iterations in "
          f"{time.perf_counter() - start:.0f} s -> {out}")
    return 0
