"""The environment interface both backends implement: rsl_rl's ``VecEnv`` with HandEye's observation groups.

The task is Isaac Lab's vision-based Shadow hand cube reorientation with two cameras. A backend holds
``num_envs`` environments stepped in lockstep; observations are embeddings of both views from a frozen encoder
plus proprioception and the goal. Rewards come from ``handeye.rl.envs.rewards.compute_reward`` on both backends.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from rsl_rl.env import VecEnv

from handeye.rl.config import EnvConfig  # part of this interface, defined apart: torch-free
from handeye.rl.envs import rewards

NUM_CAMERAS = 2
NUM_ACTIONS = 20  # actuated joints of the Shadow hand (24 joints, the distal ones are coupled)
NUM_HAND_JOINTS = 24
NUM_FINGERTIPS = 5
# Sizes of the non-image parts of the observation groups (see CubeReorientEnv); tests check the env against them.
PROPRIO_DIM = 2 * NUM_HAND_JOINTS + 4 + 3 * NUM_FINGERTIPS + NUM_ACTIONS  # 87
PRIVILEGED_DIM = 3 + 4 + 3 + 3 + 4 + 3  # 20


def obs_groups(critic_images: bool = True) -> dict[str, list[str]]:
    """rsl_rl ``obs_groups``: the actor sees what a robot would; the critic also sees the simulator's state, and
    the camera embeddings unless ``critic_images`` is False: then its inputs are 107 dims instead of 2 * D + 107
    (docs/performance.md: what PPO's learning depends on)."""
    return {"actor": ["policy"], "critic": ["policy" if critic_images else "proprio", "privileged"]}


class CubeReorientEnv(VecEnv):
    """``num_envs`` Shadow hands each holding a cube, to be turned to a goal orientation.

    Observations (``get_observations()`` and ``step()``) are a ``TensorDict`` of batch size ``(num_envs,)``:

    - ``"policy"``: ``(num_envs, 2 * D + PROPRIO_DIM)`` = embedding of camera 0 (D), of camera 1 (D), hand joint
      positions scaled to [-1, 1] (24), joint velocities x ``vel_obs_scale`` (24), goal quaternion (4),
      fingertip positions relative to the in-hand position (15), last actions (20). D = encoder.embed_dim.
    - ``"proprio"``: ``(num_envs, PROPRIO_DIM)`` = ``"policy"`` without the embeddings (for a critic that does not
      read the cameras, ``obs_groups``).
    - ``"privileged"``: ``(num_envs, PRIVILEGED_DIM)`` = cube position relative to the in-hand position (3),
      cube quaternion (4), linear velocity (3), angular velocity x ``vel_obs_scale`` (3), quaternion from goal
      to cube (4), in-hand position (3). Only the critic reads it (``obs_groups``).

    Actions: ``(num_envs, 20)`` in [-1, 1] (clipped), mapped linearly onto each actuator's joint range
    (Isaac Lab's absolute position targets).

    ``step`` returns ``(obs, rewards (num_envs,), dones (num_envs,) long, extras)``. An env is done when its cube
    fell (``rewards.FALL_DIST``) or its episode timed out; done envs are reset before ``obs`` is built, so
    ``obs`` of a done env is the first observation of its next episode. A goal reached (``success``) gives the
    bonus and a new goal without ending the episode. ``extras``:

    - ``"time_outs"``: ``(num_envs,)`` bool, done because of the time limit (PPO bootstraps these).
    - ``"log"``: scalars or tensors averaged by rsl_rl's logger each iteration:
      ``Reward/<term>`` and ``Reward/total`` (per env step, every step),
      ``Episode_Reward/<term>`` (episode sum / episode_length_s, for the episodes that ended, as Isaac Lab),
      ``Episode/success_rate`` (ended episodes that reached at least one goal),
      ``Episode/successes`` (goals reached per ended episode).
    """

    cfg: EnvConfig
    num_cameras: int = NUM_CAMERAS

    @abstractmethod
    def close(self) -> None:
        """Release worker processes and rendering contexts."""


def policy_obs(embeddings: torch.Tensor, joint_pos: torch.Tensor, joint_lower: torch.Tensor,
               joint_upper: torch.Tensor, joint_vel: torch.Tensor, goal_quat: torch.Tensor,
               fingertip_pos: torch.Tensor, in_hand_pos: torch.Tensor, actions: torch.Tensor,
               vel_obs_scale: float) -> torch.Tensor:
    """The ``policy`` group, built the same way by both backends.
    embeddings: (N * 2, D) env-major (env 0 cam 0, env 0 cam 1, ...); fingertip_pos: (N, 5, 3) -> (N, 2D + 87)."""
    n = joint_pos.shape[0]
    return torch.cat([
        embeddings.reshape(n, -1),
        (2 * joint_pos - joint_upper - joint_lower) / (joint_upper - joint_lower),
        vel_obs_scale * joint_vel, goal_quat, (fingertip_pos - in_hand_pos[:, None]).reshape(n, -1), actions,
    ], dim=-1)


def observation_groups(policy: torch.Tensor, privileged: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both backends' observation groups from ``policy_obs`` and ``privileged_obs``."""
    return {"policy": policy, "proprio": policy[:, -PROPRIO_DIM:], "privileged": privileged}


def privileged_obs(object_pos: torch.Tensor, object_quat: torch.Tensor, object_linvel: torch.Tensor,
                   object_angvel: torch.Tensor, goal_quat: torch.Tensor, in_hand_pos: torch.Tensor,
                   vel_obs_scale: float) -> torch.Tensor:
    """The ``privileged`` group (critic only), both backends: (N, 20)."""
    return torch.cat([
        object_pos - in_hand_pos, object_quat, object_linvel, vel_obs_scale * object_angvel,
        rewards.quat_mul(object_quat, rewards.quat_conjugate(goal_quat)), in_hand_pos,
    ], dim=-1)
