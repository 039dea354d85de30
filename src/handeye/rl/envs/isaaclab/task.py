"""Isaac Lab task (imports Isaac Lab: only inside docker/Dockerfile.isaaclab): the Shadow hand vision
repose-cube task with two cameras, our frozen encoder instead of its online-trained CNN, and the shared reward.

Extends Isaac Lab 2.x ``isaaclab_tasks.direct.shadow_hand`` (3.0: ``Isaac-Reorient-Cube-Shadow-Camera``):
scene, physics (dt 1/120, decimation 2), resets and goal sampling are inherited from ``InHandManipulationEnv``;
we replace the cameras (one TiledCamera over two prims per env, Isaac Lab issue #1070), the observations
(``base.policy_obs`` / ``base.privileged_obs``) and the reward (``rewards.compute_reward``).
"""

from __future__ import annotations

import torch

# isort: split
import isaaclab.sim as sim_utils
from isaaclab.assets import Articulation, RigidObject
from isaaclab.scene import InteractiveSceneCfg
from isaaclab.sensors import TiledCamera, TiledCameraCfg
from isaaclab.utils import configclass
from isaaclab_tasks.direct.inhand_manipulation.inhand_manipulation_env import InHandManipulationEnv
from isaaclab_tasks.direct.shadow_hand.shadow_hand_env_cfg import ShadowHandEnvCfg

from handeye.rl.envs import rewards
from handeye.rl.envs.base import (
    NUM_CAMERAS,
    PRIVILEGED_DIM,
    PROPRIO_DIM,
    observation_groups,
    policy_obs,
    privileged_obs,
)
from handeye.rl.envs.isaaclab.views import CAMERA_PATHS, CAMERA_PRIM, CAMERAS, look_at_quat, split_views

PINHOLE = {"focal_length": 24.0, "focus_distance": 400.0, "horizontal_aperture": 20.955,
           "clipping_range": (0.1, 20.0)}


@configclass
class HandEyeVisionEnvCfg(ShadowHandEnvCfg):
    scene: InteractiveSceneCfg = InteractiveSceneCfg(num_envs=1225, env_spacing=2.0, replicate_physics=True)
    # One sensor over both camera prims of every env (spawn=None: _setup_scene spawns the prims).
    tiled_camera: TiledCameraCfg = TiledCameraCfg(prim_path=CAMERA_PATHS, spawn=None, data_types=["rgb"],
                                                  width=120, height=120)
    encoder_spec: str = "imagenet"
    encoder_bf16: bool = True
    embed_dim: int = 0  # set from the loaded encoder before the env is built
    observation_space: int = 0  # set by configure()
    state_space: int = 0

    def configure(self, embed_dim: int) -> HandEyeVisionEnvCfg:
        self.embed_dim = embed_dim
        self.observation_space = NUM_CAMERAS * embed_dim + PROPRIO_DIM
        self.state_space = self.observation_space + PRIVILEGED_DIM
        return self


class HandEyeVisionEnv(InHandManipulationEnv):
    cfg: HandEyeVisionEnvCfg

    def __init__(self, cfg: HandEyeVisionEnvCfg, render_mode: str | None = None, encoder=None, **kwargs):
        super().__init__(cfg, render_mode, **kwargs)
        self.encoder = encoder
        self.episode_sums = {name: torch.zeros(self.num_envs, device=self.device) for name in rewards.TERMS}

    def _setup_scene(self):
        self.hand = Articulation(self.cfg.robot_cfg)
        self.object = RigidObject(self.cfg.object_cfg)
        for index, (eye, target) in enumerate(CAMERAS):
            cam = sim_utils.PinholeCameraCfg(**PINHOLE)
            cam.func(f"/World/envs/env_0/{CAMERA_PRIM.format(index=index)}", cam, translation=eye,
                     orientation=look_at_quat(eye, target))
        self.scene.clone_environments(copy_from_source=False)
        self._tiled_camera = TiledCamera(self.cfg.tiled_camera)
        self.scene.articulations["robot"] = self.hand
        self.scene.rigid_objects["object"] = self.object
        self.scene.sensors["tiled_camera"] = self._tiled_camera
        light = sim_utils.DomeLightCfg(intensity=2000.0, color=(0.75, 0.75, 0.75))
        light.func("/World/Light", light)

    def _embed(self) -> torch.Tensor:
        images = split_views(self._tiled_camera.data.output["rgb"], self.num_envs)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                    enabled=self.cfg.encoder_bf16):
            return self.encoder.embed(images).float().to(self.device)

    def _get_observations(self) -> dict:
        tips = self.fingertip_pos.view(self.num_envs, -1, 3)
        policy = policy_obs(self._embed(), self.hand_dof_pos, self.hand_dof_lower_limits,
                            self.hand_dof_upper_limits, self.hand_dof_vel, self.goal_rot, tips, self.in_hand_pos,
                            self.actions, self.cfg.vel_obs_scale)
        privileged = privileged_obs(self.object_pos, self.object_rot, self.object_linvel, self.object_angvel,
                                    self.goal_rot, self.in_hand_pos, self.cfg.vel_obs_scale)
        return observation_groups(policy, privileged)

    def _get_rewards(self) -> torch.Tensor:
        r = rewards.compute_reward(self.object_pos, self.object_rot, self.in_hand_pos, self.goal_rot, self.actions)
        log = self.extras.setdefault("log", {})
        for name, value in r.terms.items():
            self.episode_sums[name] += value
            log[f"Reward/{name}"] = value.mean()
        log["Reward/total"] = r.total.mean()
        self.successes += r.success.float()
        goal_ids = r.success.nonzero().squeeze(-1)
        if len(goal_ids):
            self._reset_target_pose(goal_ids)
        return r.total

    def _reset_idx(self, env_ids):
        if env_ids is not None and len(env_ids) and self.common_step_counter > 0:
            log = self.extras.setdefault("log", {})
            for name, sums in self.episode_sums.items():
                log[f"Episode_Reward/{name}"] = sums[env_ids] / self.max_episode_length_s
            log["Episode/success_rate"] = (self.successes[env_ids] > 0).float()
            log["Episode/successes"] = self.successes[env_ids].clone()
        super()._reset_idx(env_ids)
        ids = slice(None) if env_ids is None else env_ids
        for sums in self.episode_sums.values():
            sums[ids] = 0.0
