"""CPU backend: N Shadow hands in MuJoCo, two cameras each, observed through a frozen encoder.

Physics, rendering and embedding run in ``mujoco_scene`` worker processes (each embeds both views of its envs
in one batched encoder call per step); this side draws every random number (one seeded generator, so results
do not depend on the worker split), computes rewards with the shared ``rewards.compute_reward`` and resets envs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict

from handeye.errors import HandEyeError
from handeye.models.encoders import Encoder
from handeye.rl.envs import rewards
from handeye.rl.envs.base import (
    NUM_ACTIONS,
    CubeReorientEnv,
    EnvConfig,
    observation_groups,
    policy_obs,
    privileged_obs,
)
from handeye.rl.envs.mujoco_scene import SimPool, scene_info


class MujocoCubeEnv(CubeReorientEnv):
    """The ``CubeReorientEnv`` interface on MuJoCo (see base.py for observations, rewards and extras)."""

    def __init__(self, cfg: EnvConfig, encoder: Encoder, seed: int = 0, device: str = "cpu"):
        if cfg.goal_max_angle is not None and cfg.goal_max_angle <= rewards.GOAL_MIN_ANGLE:
            raise HandEyeError(f"rl.env.goal_max_angle {cfg.goal_max_angle} must exceed {rewards.GOAL_MIN_ANGLE} rad, "
                               f"the least angle at which a near goal is drawn (or be null: goals anywhere)")
        self.cfg = cfg
        self.encoder = encoder
        self.num_envs = cfg.num_envs
        self.num_actions = NUM_ACTIONS
        self.device = torch.device(device)
        self.max_episode_length = math.ceil(cfg.episode_length_s / cfg.control_dt)
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

        info = scene_info(cfg.control_dt)
        self.joint_lower = torch.from_numpy(info.joint_lower).float()
        self.joint_upper = torch.from_numpy(info.joint_upper).float()
        self.default_joint_pos = torch.from_numpy(info.default_joint_pos).float()
        self.spawn_pos = torch.from_numpy(info.object_spawn_pos).float()
        self.rest_quat = torch.from_numpy(info.object_rest_quat).float()
        self.in_hand_pos = (self.spawn_pos + torch.tensor([0.0, 0.0, rewards.IN_HAND_Z_OFFSET])).expand(
            self.num_envs, 3).contiguous()

        n = self.num_envs
        self.goal_quat = rewards.random_quat(n, self.generator)
        self.actions = torch.zeros(n, NUM_ACTIONS)
        self.episode_sums = {name: torch.zeros(n) for name in rewards.TERMS}
        self.episode_successes = torch.zeros(n)

        self.sim = self.make_sim(info.substeps)
        embeddings, state = self._reset(torch.arange(n))
        self.obs = self._observe(embeddings, state)

    # --- VecEnv -------------------------------------------------------------------------------------------
    def get_observations(self) -> TensorDict:
        return self.obs

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        self.actions = actions.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
        state = _to_torch(self.sim.step(self.actions.double().numpy()))
        self.episode_length_buf += 1

        r = rewards.compute_reward(state["object_pos"], state["object_quat"], self.in_hand_pos,
                                   self.goal_quat, self.actions)
        self.reward = r  # this step's terms, for whoever trains on a part of them (benchmarks)
        time_outs = (self.episode_length_buf >= self.max_episode_length) & ~r.fell
        dones = r.fell | time_outs
        success_ids = (r.success & ~dones).nonzero().squeeze(-1)
        self.goal_quat[success_ids] = self._draw_goals(self.goal_quat[success_ids])

        log = self._log(r, dones)
        embeddings, state = self._reset(dones.nonzero().squeeze(-1))
        self.obs = self._observe(embeddings, state)
        extras = {"time_outs": time_outs, "log": log}
        return self.obs, r.total.float(), dones.long(), extras

    def close(self) -> None:
        self.sim.close()

    # --- internals ----------------------------------------------------------------------------------------
    def make_sim(self, substeps: int) -> SimPool:
        """The envs' physics, renders and embeddings: SimPool's ``reset_render`` must give (N, 2, D) embeddings."""
        cfg = self.cfg
        return SimPool(self.num_envs, cfg.image_size, substeps, workers=cfg.workers,
                       embed=ViewEmbedder(self.encoder, cfg.encoder_bf16, cfg.embed_batch))

    def _log(self, r: rewards.Reward, dones: torch.Tensor) -> dict[str, torch.Tensor]:
        log = {f"Reward/{name}": v.mean() for name, v in r.terms.items()}
        log["Reward/total"] = r.total.mean()
        for name, v in r.terms.items():
            self.episode_sums[name] += v
        self.episode_successes += r.success.float()
        ended = dones.nonzero().squeeze(-1)
        if len(ended):
            # Isaac Lab's convention: episode sums per second of the episode time limit.
            for name in rewards.TERMS:
                log[f"Episode_Reward/{name}"] = self.episode_sums[name][ended] / self.cfg.episode_length_s
            log["Episode/success_rate"] = (self.episode_successes[ended] > 0).float()
            log["Episode/successes"] = self.episode_successes[ended].clone()
        return log

    def _reset(self, ids: torch.Tensor):
        """Draw start poses and goals for envs ``ids`` (Isaac Lab's randomisation), reset them, render and embed
        all -> (embeddings (N, 2, D), state)."""
        m, g, cfg = len(ids), self.generator, self.cfg
        pos = self.spawn_pos + cfg.reset_position_noise * (torch.rand(m, 3, generator=g) * 2 - 1)
        quat = self._draw_starts(m)
        delta_max = self.joint_upper - self.default_joint_pos
        delta_min = self.joint_lower - self.default_joint_pos
        noise = torch.rand(m, len(self.default_joint_pos), generator=g) * 2 - 1
        rand_delta = delta_min + (delta_max - delta_min) * 0.5 * noise
        joints = (self.default_joint_pos + cfg.reset_dof_pos_noise * rand_delta).clamp(self.joint_lower,
                                                                                       self.joint_upper)
        self.goal_quat[ids] = self._draw_goals(quat)
        self.episode_length_buf[ids] = 0
        self.actions[ids] = 0.0
        for v in self.episode_sums.values():
            v[ids] = 0.0
        self.episode_successes[ids] = 0.0
        embeddings, state = self.sim.reset_render(ids.numpy(), joints.double().numpy(), pos.double().numpy(),
                                                  quat.double().numpy())
        return torch.from_numpy(embeddings), _to_torch(state)

    def _draw_starts(self, m: int) -> torch.Tensor:
        """The cube's start orientations for m envs: (m, 4)."""
        if self.cfg.start_max_angle is None:
            return rewards.random_quat(m, self.generator)
        return rewards.nearby_quat(self.rest_quat.expand(m, 4), self.cfg.start_max_angle, self.generator)

    def _draw_goals(self, near: torch.Tensor) -> torch.Tensor:
        """Goals for envs whose cube is (or should be) at orientations ``near`` (m, 4)."""
        if self.cfg.goal_max_angle is None:
            return rewards.random_quat(len(near), self.generator)
        return rewards.nearby_quat(near, self.cfg.goal_max_angle, self.generator, min_angle=rewards.GOAL_MIN_ANGLE)

    def _observe(self, embeddings: torch.Tensor, state: dict[str, torch.Tensor]) -> TensorDict:
        s, scale = state, self.cfg.vel_obs_scale
        policy = policy_obs(embeddings.flatten(0, 1), s["hand_qpos"], self.joint_lower, self.joint_upper,
                            s["hand_qvel"], self.goal_quat, s["fingertip_pos"].view(self.num_envs, -1, 3),
                            self.in_hand_pos, self.actions, scale)
        privileged = privileged_obs(s["object_pos"], s["object_quat"], s["object_linvel"], s["object_angvel"],
                                    self.goal_quat, self.in_hand_pos, scale)
        return TensorDict(observation_groups(policy, privileged), batch_size=[self.num_envs])


def embed_images(encoder: Encoder, images: torch.Tensor, bf16: bool, batch: int) -> torch.Tensor:
    """uint8 (M, 3, H, W) -> float32 (M, D), in chunks of ``batch``, under bf16 autocast if ``bf16``."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        out = torch.cat([encoder.embed(chunk) for chunk in images.split(batch)])
    return out.float().clone()  # a normal tensor, usable outside inference mode


@dataclass(frozen=True)
class ViewEmbedder:
    """``SimPool``'s ``embed``, pickled with the encoder into each render worker. One batch per worker instead
    of one for all envs: the encoder must give each image the same bits in any batch (the demo ViTs do)."""

    encoder: Encoder
    bf16: bool
    batch: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (k, 2, H, W, 3) -> float32 (k, 2, D); one encoder batch, env-major (env0 cam0, env0 cam1, ...)."""
        flat = torch.from_numpy(images).flatten(0, 1).permute(0, 3, 1, 2)
        return embed_images(self.encoder, flat, self.bf16, self.batch).unflatten(0, images.shape[:2]).numpy()


def _to_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).float() for k, v in state.items()}
