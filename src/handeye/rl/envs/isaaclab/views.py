"""Pure parts of the Isaac Lab backend (torch only): camera poses, view splitting, observation layout.

Isaac Lab issue #1070: several TiledCamera sensors in one scene overwrite each other's images. We use ONE
TiledCamera whose prim path matches both camera prims of every env (``/World/envs/env_.*/HandEyeCam_.*``), so
the renderer sees a single sensor with 2 x num_envs tiles, env-major (env_0 cam_0, env_0 cam_1, env_1 ...).
"""

from __future__ import annotations

import math

import torch

from handeye.rl.envs.base import NUM_CAMERAS

CAMERA_PRIM = "HandEyeCam_{index}"
CAMERA_PATHS = "/World/envs/env_.*/HandEyeCam_.*"
# Look-at points in the env frame of Isaac Lab's Shadow hand scene: the cube rests near (0, -0.39, 0.56)
# (in_hand_pos + 4 cm); the first view matches the task's own camera position (0, -0.35, 1.0) seen from above,
# the second looks from the side, as our MuJoCo cameras do.
CUBE = (0.0, -0.39, 0.56)
CAMERAS = (((0.0, -0.35, 1.0), CUBE), ((0.35, -0.39, 0.75), CUBE))


def look_at_quat(eye, target, up=(0.0, 0.0, 1.0)) -> tuple[float, float, float, float]:
    """(w, x, y, z) of a USD camera (looks along -z, y up) at ``eye`` looking at ``target``."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    back = eye - target
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    if right.norm() < 1e-9:  # looking straight down: any right vector perpendicular to the view works
        right = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    rot = torch.stack([right, true_up, back], dim=1)  # columns: camera x, y, z in the world
    return matrix_to_quat(rot)


def matrix_to_quat(m: torch.Tensor) -> tuple[float, float, float, float]:
    """3x3 rotation -> (w, x, y, z) with w >= 0."""
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, float(m[2, 1] - m[1, 2]))
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, float(m[0, 2] - m[2, 0]))
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, float(m[1, 0] - m[0, 1]))
    return (w, x, y, z)


def split_views(rgb: torch.Tensor, num_envs: int) -> torch.Tensor:
    """The tiled camera's ``rgb`` (num_envs * 2, H, W, 3|4), float [0, 1] or uint8, env-major ->
    uint8 (num_envs * 2, 3, H, W) in the same order, the encoder's input."""
    if rgb.shape[0] != num_envs * NUM_CAMERAS:
        raise ValueError(f"expected {num_envs * NUM_CAMERAS} tiles, got {rgb.shape[0]}")
    rgb = rgb[..., :3]
    if rgb.dtype != torch.uint8:
        rgb = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
    return rgb.permute(0, 3, 1, 2).contiguous()
