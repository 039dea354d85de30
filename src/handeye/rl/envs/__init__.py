"""Vision-based in-hand cube reorientation: one interface (base.py), the shared reward (rewards.py), a MuJoCo
backend (mujoco_env.py, CPU) and an Isaac Lab backend (isaaclab/, GPU; imported only inside its container)."""

from __future__ import annotations

BACKENDS = ("mujoco", "isaaclab")
