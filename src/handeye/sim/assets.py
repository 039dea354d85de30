"""Where the Shadow hand MJCF lives: gymnasium-robotics ships it (its env code fails under mujoco 4, its
assets load fine; FIELD_NOTES), so we read the XML files and build our own scenes with ``mujoco.MjSpec``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from handeye.errors import HandEyeError


def hand_asset_dir() -> Path:
    """Folder holding ``manipulate_block.xml``, ``robot.xml``, ``shared.xml`` of the Shadow hand."""
    # find_spec, not import: importing gymnasium_robotics registers every env and prints warnings.
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise HandEyeError("gymnasium-robotics is not installed; it provides the Shadow hand assets "
                           "(run `make setup`)")
    path = Path(spec.submodule_search_locations[0]) / "envs" / "assets" / "hand"
    if not (path / "robot.xml").is_file():
        raise HandEyeError(f"Shadow hand assets not found under {path}")
    return path


def load_hand_spec(scene: str = "manipulate_block.xml"):
    """An editable ``mujoco.MjSpec`` of a gymnasium-robotics hand scene (hand, and for
    ``manipulate_block.xml`` the cube ``object`` and the translucent goal cube ``target``)."""
    import mujoco

    return mujoco.MjSpec.from_file(str(hand_asset_dir() / scene))


def require_egl() -> None:
    """Fail with a one-line fix when offscreen rendering cannot start (no EGL on this machine)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    try:
        ctx = mujoco.GLContext(16, 16)
        ctx.make_current()
        ctx.free()
    except Exception as e:
        raise HandEyeError(f"MuJoCo cannot render offscreen with MUJOCO_GL={os.environ['MUJOCO_GL']} ({e}); "
                           "install Debian's libegl1 libegl-mesa0 libgl1-mesa-dri (make setup does)") from None
