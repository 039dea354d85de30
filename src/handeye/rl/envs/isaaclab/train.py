"""``handeye rl --backend isaaclab`` inside the Isaac Lab container: the same Runner, log writer and run folder
as the MuJoCo backend (``handeye.rl.runner``), with Isaac Lab's env wrapped by its own ``RslRlVecEnvWrapper``.

Several GPUs: ``torchrun --nproc_per_node N -m handeye rl --backend isaaclab ...`` (docker/README.md). This
follows Isaac Lab's ``train.py --distributed``: rank r simulates, embeds and trains on cuda:LOCAL_RANK with
``num_envs`` envs, and rsl-rl averages the gradients over nccl. Seeds are ``seed + rank`` (Isaac Lab adds the
local rank, which repeats seeds across nodes; on one node the two agree). Isaac Lab is imported only inside
``train``; the rest of this module is pure and tested on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handeye import distributed, repro
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.rl.config import run_name
from handeye.rl.runner import finish_run, policy_state, run_config, start_run, train_policy

TASK_ID = "HandEye-Reorient-Cube-Shadow-TwoCam-v0"  # the gym id train() registers our task under


MUJOCO_ONLY = ("goal_max_angle", "start_max_angle")  # EnvConfig's task variants that Isaac Lab's task lacks


def check_task(cfg) -> None:
    """Refuse, before Isaac Sim starts, settings that only the MuJoCo task reads."""
    variants = [f"rl.env.{k}" for k in MUJOCO_ONLY if getattr(cfg.env, k) is not None]
    if variants:
        raise HandEyeError(f"{', '.join(variants)}: a task variant of the mujoco backend only; set it to null "
                           f"to train on Isaac Lab's task")


def env_cfg_overrides(cfg, world: World) -> dict[str, Any]:
    """Our RLConfig.env and this rank's place in the launch -> Isaac Lab env cfg fields (dotted paths)."""
    return {"scene.num_envs": cfg.env.num_envs, "episode_length_s": cfg.env.episode_length_s,
            "tiled_camera.width": cfg.env.image_size, "tiled_camera.height": cfg.env.image_size,
            "encoder_spec": cfg.encoder, "encoder_bf16": cfg.env.encoder_bf16, "seed": cfg.seed + world.rank,
            "sim.device": f"cuda:{world.local_rank}"}


def apply_overrides(env_cfg, overrides: dict[str, Any]) -> None:
    """Set each dotted field (``scene.num_envs``) on the nested config objects of ``env_cfg``."""
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        target = env_cfg
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, leaf):
            raise HandEyeError(f"the Isaac Lab env cfg has no field {key}; this Isaac Lab version does not match "
                               f"docker/Dockerfile.isaaclab's")
        setattr(target, leaf, value)


def train(cfg, resume: bool = False) -> Path:
    check_task(cfg)
    world = distributed.world_from_env()
    device = distributed.device_for(world, "cuda")  # cuda:LOCAL_RANK, or one line saying why not
    from isaaclab.app import AppLauncher

    # distributed: Kit renders on this rank's GPU (AppLauncher reads LOCAL_RANK); must start before other
    # isaaclab imports
    app = AppLauncher(headless=True, enable_cameras=True, distributed=world.distributed).app
    try:
        with distributed.process_group(world, device):
            return train_on_gpu(cfg, resume, world, device)
    finally:
        app.close()


def train_on_gpu(cfg, resume: bool, world: World, device) -> Path:
    import gymnasium as gym
    from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper

    from handeye.models.encoders import load_encoder
    from handeye.rl.envs.isaaclab.task import HandEyeVisionEnv, HandEyeVisionEnvCfg

    problem = None
    try:  # one rank's missing encoder stops every rank
        encoder = load_encoder(cfg.encoder, device=str(device))
    except HandEyeError as e:
        problem = str(e)
    distributed.agree(world, problem)
    config = run_config(cfg)
    distributed.check_same(world, config, "rl parameters")
    final = Path(cfg.out_dir) / run_name(cfg.encoder, cfg.seed)
    ckpt = start_run(world, final, resume)

    gym.register(id=TASK_ID, entry_point=HandEyeVisionEnv, disable_env_checker=True)
    env_cfg = HandEyeVisionEnvCfg().configure(encoder.embed_dim)
    apply_overrides(env_cfg, env_cfg_overrides(cfg, world))
    repro.seed_everything(cfg.seed + world.rank, threads=cfg.threads)
    env = RslRlVecEnvWrapper(gym.make(TASK_ID, cfg=env_cfg, encoder=encoder))
    try:
        runner = train_policy(cfg, env, world, final, ckpt, config, device=str(device))
        policy = policy_state(runner, env, config, encoder)
    finally:
        env.close()
    return finish_run(world, final, policy, config, cfg.seed, str(device))
