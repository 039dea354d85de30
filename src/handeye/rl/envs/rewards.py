"""Isaac Lab's in-hand reorientation reward, as one pure torch function shared by both backends.

Terms, constants and the quaternion convention (w, x, y, z) follow Isaac Lab's Shadow hand repose-cube task
(`direct/inhand_manipulation`), so that a curve means the same on MuJoCo and on Isaac Lab. Term names are
those of its manager-based twin.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

DIST_REWARD_SCALE = -10.0  # track_pos_l2: per metre between the cube and its in-hand position
ROT_REWARD_SCALE = 1.0  # track_orientation_inv_l2: weight of 1 / (|rot_dist| + ROT_EPS)
ROT_EPS = 0.1  # bounds the orientation reward at 1 / ROT_EPS = 10 per step
ACTION_PENALTY_SCALE = -0.0002  # action_l2: per unit of sum(a^2)
SUCCESS_TOLERANCE = 0.1  # rad; within it the goal counts as reached and is resampled
REACH_GOAL_BONUS = 250.0  # success_bonus
FALL_DIST = 0.24  # m from the in-hand position: the cube has fallen, the episode ends
IN_HAND_Z_OFFSET = -0.04  # in-hand position = the cube's spawn position lowered by 4 cm
# rad: a near goal (EnvConfig.goal_max_angle) lies at least this far from where it is drawn. One drawn inside
# SUCCESS_TOLERANCE pays the bonus at once: a reset would then pay it for nothing, and PPO learns to drop the
# cube to be reset (measured: the position term fell from -0.18 to -0.49 per step in 60 iterations).
GOAL_MIN_ANGLE = 2 * SUCCESS_TOLERANCE

TERMS = ("track_orientation_inv_l2", "success_bonus", "track_pos_l2", "action_l2")


class Reward(NamedTuple):
    total: torch.Tensor  # (N,)
    terms: dict[str, torch.Tensor]  # name -> (N,), summing to total
    success: torch.Tensor  # (N,) bool: goal orientation reached this step
    fell: torch.Tensor  # (N,) bool: cube at least FALL_DIST from the in-hand position
    rot_dist: torch.Tensor  # (N,) rad


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """q: (..., 4) as (w, x, y, z)."""
    return torch.cat((q[..., :1], -q[..., 1:]), dim=-1)


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack((
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ), dim=-1)


def rotation_distance(q: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Angle (rad, in [0, pi]) of the rotation from ``goal`` to ``q``; (N, 4), (N, 4) -> (N,)."""
    diff = quat_mul(q, quat_conjugate(goal))
    return 2.0 * torch.asin(torch.clamp(torch.linalg.vector_norm(diff[..., 1:4], dim=-1), max=1.0))


def compute_reward(object_pos: torch.Tensor, object_quat: torch.Tensor, in_hand_pos: torch.Tensor,
                   goal_quat: torch.Tensor, actions: torch.Tensor) -> Reward:
    """object_pos, in_hand_pos: (N, 3); object_quat, goal_quat: (N, 4) (w, x, y, z); actions: (N, A)."""
    goal_dist = torch.linalg.vector_norm(object_pos - in_hand_pos, dim=-1)
    rot_dist = rotation_distance(object_quat, goal_quat)
    success = rot_dist.abs() <= SUCCESS_TOLERANCE
    terms = {
        "track_orientation_inv_l2": ROT_REWARD_SCALE / (rot_dist.abs() + ROT_EPS),
        "success_bonus": success.to(goal_dist.dtype) * REACH_GOAL_BONUS,
        "track_pos_l2": DIST_REWARD_SCALE * goal_dist,
        "action_l2": ACTION_PENALTY_SCALE * actions.square().sum(-1),
    }
    total = sum(terms[name] for name in TERMS)
    return Reward(total, terms, success, goal_dist >= FALL_DIST, rot_dist)


def random_quat(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Isaac Lab's ``randomize_rotation``: rotate by U(-pi, pi) about x, then U(-pi, pi) about y. (n, 4)."""
    angles = (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * torch.pi
    half = angles / 2
    qx = torch.stack((half[:, 0].cos(), half[:, 0].sin(), torch.zeros(n), torch.zeros(n)), dim=-1)
    qy = torch.stack((half[:, 1].cos(), torch.zeros(n), half[:, 1].sin(), torch.zeros(n)), dim=-1)
    return quat_mul(qx, qy)


def nearby_quat(q: torch.Tensor, max_angle: float, generator: torch.Generator | None = None,
                min_angle: float = 0.0) -> torch.Tensor:
    """``q`` turned by an angle U(min_angle, max_angle) about a uniformly random axis: (n, 4) -> (n, 4)."""
    n = q.shape[0]
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True).clamp_min(1e-9)
    half = (min_angle + torch.rand(n, 1, generator=generator) * (max_angle - min_angle)) / 2
    return quat_mul(torch.cat((half.cos(), half.sin() * axis), dim=-1), q)
