"""``handeye rl --backend isaaclab`` inside the Isaac Lab container: the same Runner, log writer and output
folder as the MuJoCo backend, with Isaac Lab's env wrapped by its own ``RslRlVecEnvWrapper``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from handeye import repro
from handeye.envs.isaaclab import TASK_ID


def env_cfg_overrides(cfg) -> dict:
    """Our RLConfig.env -> Isaac Lab env cfg fields (pure; tested in the container)."""
    return {"scene.num_envs": cfg.env.num_envs, "episode_length_s": cfg.env.episode_length_s,
            "tiled_camera.width": cfg.env.image_size, "tiled_camera.height": cfg.env.image_size,
            "encoder_spec": cfg.encoder, "encoder_bf16": cfg.env.encoder_bf16, "seed": cfg.seed}


def train(cfg, resume: bool = False) -> Path:
    from isaaclab.app import AppLauncher

    app = AppLauncher(headless=True, enable_cameras=True).app  # must start before other isaaclab imports
    try:
        import gymnasium as gym
        from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper

        from handeye.encoders import load_encoder
        from handeye.envs.isaaclab.task import HandEyeVisionEnv, HandEyeVisionEnvCfg
        from handeye.rl import (
            Runner,
            _prepare_folder,
            last_checkpoint,
            run_config,
            run_name,
            train_cfg,
            truncate_metrics,
        )

        gym.register(id=TASK_ID, entry_point=HandEyeVisionEnv, disable_env_checker=True)
        encoder = load_encoder(cfg.encoder, device="cuda:0")
        env_cfg = HandEyeVisionEnvCfg().configure(encoder.embed_dim)
        for key, value in env_cfg_overrides(cfg).items():
            *path, leaf = key.split(".")
            target = env_cfg
            for part in path:
                target = getattr(target, part)
            setattr(target, leaf, value)
        repro.seed_everything(cfg.seed, threads=cfg.threads)
        env = RslRlVecEnvWrapper(gym.make(TASK_ID, cfg=env_cfg, encoder=encoder))

        final = Path(cfg.out_dir) / run_name(cfg.encoder, cfg.seed)
        work = final.with_name(f".{final.name}.partial")
        resuming = _prepare_folder(final, work, resume)
        runner = Runner(env, train_cfg(cfg, env.num_envs, work / "live", work / "timings.json", resuming),
                        log_dir=str(work / "checkpoints"), device=env.unwrapped.device)
        config = run_config(cfg)
        runner.config = config
        runner.quiet()
        if resuming:
            runner.load(str(last_checkpoint(work / "checkpoints")))
            truncate_metrics(work / "live", work / "timings.json", runner.current_learning_iteration)
        runner.learn(max(0, cfg.iterations - runner.current_learning_iteration),
                     init_at_random_ep_len=cfg.init_at_random_ep_len and not resuming)
        repro.atomic_torch_save({"actor_state_dict": runner.alg.get_policy().state_dict(),
                                 "config": config}, work / "policy.pt")
        repro.write_manifest(work, "rl", config, cfg.seed)
        env.close()
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return final
    finally:
        app.close()
