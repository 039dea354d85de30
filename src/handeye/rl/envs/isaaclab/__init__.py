"""GPU backend: Isaac Lab's Shadow hand vision repose-cube task with two cameras and our frozen encoder.

Runs only where Isaac Lab is installed (docker/Dockerfile.isaaclab, a GPU with RTX rendering): ``task.py``
imports Isaac Lab and is never imported elsewhere; ``train.py`` imports it inside ``train`` only, and trains
with ``handeye.rl.runner`` (never ``handeye.rl.train``, which imports this package). ``views.py`` and the rest of
``train.py`` are the pure parts (camera poses, splitting the tiled camera's output into the two views,
observation layout, the env cfg overrides of a rank), tested on the CPU.
"""

from __future__ import annotations

import importlib.util

from handeye.errors import HandEyeError


def require_isaaclab() -> None:
    if importlib.util.find_spec("isaaclab") is None or importlib.util.find_spec("isaaclab_tasks") is None:
        raise HandEyeError("Isaac Lab is not installed here; the isaaclab backend runs only inside the image "
                           "built from docker/Dockerfile.isaaclab on a GPU machine (use --backend mujoco on the CPU)")


def run_isaaclab(cfg, resume: bool = False):
    """``handeye rl --backend isaaclab``: train through Isaac Lab's rsl-rl wrapper (inside its container)."""
    require_isaaclab()
    from handeye.rl.envs.isaaclab.train import train

    return train(cfg, resume)
