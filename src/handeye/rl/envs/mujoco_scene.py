"""The MuJoCo side of the CPU backend, free of torch so that worker processes start fast.

The scene is gymnasium-robotics's Shadow hand + block (``manipulate_block.xml``) with the goal cube removed
(the goal is an observation, never drawn), the floor made visual-only (Isaac Lab's hand hangs far above its
ground, so a dropped cube keeps falling until it is FALL_DIST away) and two fixed cameras aimed at the cube.
``HandBatch`` steps and renders k environments; ``SimPool`` spreads ``num_envs`` over worker processes, each
with its own EGL context, so rendering uses every core. Given an ``embed`` function, each worker also embeds
its own renders: rendering and embedding then keep every core busy, where workers would otherwise idle while
one process embeds all views. All randomness is drawn by the caller, so results do not depend on how envs are
split over workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from dataclasses import dataclass

import numpy as np

# Cameras aimed at the cube resting on the palm: (name, position, look-at point).
LOOK_AT = (1.0, 0.9, 0.17)
CAMERAS = (
    ("front", (1.0, 0.62, 0.36), LOOK_AT),
    ("side", (1.27, 0.86, 0.30), LOOK_AT),
)
FINGERTIP_SITES = ("robot0:S_fftip", "robot0:S_mftip", "robot0:S_rftip", "robot0:S_lftip", "robot0:S_thtip")
OBJECT_JOINT = "object:joint"


def lookat_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> list[float]:
    """MuJoCo camera ``xyaxes`` (right, up) for a camera at ``pos`` looking at ``target``."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return [*right, *np.cross(right, forward)]


def build_model(frame_skip_dt: float | None = None):
    """The compiled ``mujoco.MjModel`` of the scene, with cheap visuals (FIELD_NOTES: ~4x faster on llvmpipe)."""
    from handeye.sim.assets import load_hand_spec

    spec = load_hand_spec("manipulate_block.xml")
    spec.delete(spec.body("target"))
    floor = spec.geom("floor0")
    floor.contype = floor.conaffinity = 0
    for name, pos, target in CAMERAS:
        spec.worldbody.add_camera(name=name, pos=list(pos), xyaxes=lookat_xyaxes(pos, target), fovy=40)
    model = spec.compile()
    model.vis.quality.offsamples = 0  # no MSAA; must be set before the Renderer is created
    model.mat_reflectance[:] = 0
    return model


@dataclass(frozen=True)
class SceneInfo:
    """Constants of the scene the torch side needs (numpy arrays, float64)."""

    joint_lower: np.ndarray  # (24,) hand joint limits
    joint_upper: np.ndarray  # (24,)
    default_joint_pos: np.ndarray  # (24,)
    object_spawn_pos: np.ndarray  # (3,)
    object_rest_quat: np.ndarray  # (4,) (w, x, y, z): the cube's orientation in the model
    substeps: int  # physics steps per policy step
    physics_dt: float


def scene_info(control_dt: float) -> SceneInfo:
    model = build_model()
    hand = _hand_joints(model)
    cube = model.jnt_qposadr[model.joint(OBJECT_JOINT).id]  # free joint: position (3), quaternion (4)
    return SceneInfo(
        joint_lower=model.jnt_range[hand, 0].copy(),
        joint_upper=model.jnt_range[hand, 1].copy(),
        default_joint_pos=model.qpos0[model.jnt_qposadr[hand]].copy(),
        object_spawn_pos=model.body("object").pos.copy(),
        object_rest_quat=model.qpos0[cube + 3:cube + 7].copy(),
        substeps=max(1, round(control_dt / model.opt.timestep)),
        physics_dt=float(model.opt.timestep),
    )


def _hand_joints(model) -> np.ndarray:
    return np.array([i for i in range(model.njnt) if model.joint(i).name.startswith("robot0:")])


class HandBatch:
    """k copies of the scene: ``step`` (physics), ``reset`` (set given envs' state), ``render`` (both cameras)."""

    def __init__(self, n: int, image_size: int, substeps: int, render: bool = True):
        import mujoco

        self._mj = mujoco
        self.model = build_model()
        self.data = [mujoco.MjData(self.model) for _ in range(n)]
        self.substeps = substeps
        m = self.model
        hand = _hand_joints(m)
        self.hand_q = m.jnt_qposadr[hand]
        self.hand_v = m.jnt_dofadr[hand]
        self.obj_q = m.jnt_qposadr[m.joint(OBJECT_JOINT).id]
        self.obj_body = m.body("object").id
        self.tips = np.array([m.site(s).id for s in FINGERTIP_SITES])
        lo, hi = m.actuator_ctrlrange.T
        self.ctrl_center, self.ctrl_half = (hi + lo) / 2, (hi - lo) / 2
        self.renderer = None
        if render:
            self.renderer = mujoco.Renderer(m, image_size, image_size)
            flags = self.renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                flags[flag] = 0
        for d in self.data:
            mujoco.mj_forward(m, d)

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """actions: (k, 20) in [-1, 1] -> state after ``substeps`` physics steps."""
        ctrl = self.ctrl_center + np.clip(actions, -1.0, 1.0) * self.ctrl_half
        for d, c in zip(self.data, ctrl, strict=True):
            d.ctrl[:] = c
            self._mj.mj_step(self.model, d, nstep=self.substeps)
        return self.state()

    def reset(self, ids: np.ndarray, hand_qpos: np.ndarray, object_pos: np.ndarray,
              object_quat: np.ndarray) -> None:
        """Put envs ``ids`` at rest in the given poses; position targets hold the hand where it is."""
        for i, q, p, r in zip(ids, hand_qpos, object_pos, object_quat, strict=True):
            d = self.data[i]
            self._mj.mj_resetData(self.model, d)
            d.qpos[self.hand_q] = q
            d.qpos[self.obj_q:self.obj_q + 3] = p
            d.qpos[self.obj_q + 3:self.obj_q + 7] = r
            self._mj.mj_forward(self.model, d)
            d.ctrl[:] = np.clip(d.actuator_length, *self.model.actuator_ctrlrange.T)

    def render(self) -> np.ndarray:
        """-> uint8 (k, num_cameras, H, W, 3)."""
        out = []
        for d in self.data:
            for name, _, _ in CAMERAS:
                self.renderer.update_scene(d, camera=name)
                out.append(self.renderer.render())
        h, w = out[0].shape[:2]
        return np.stack(out).reshape(len(self.data), len(CAMERAS), h, w, 3)

    def state(self) -> dict[str, np.ndarray]:
        """Hand joints, cube pose and velocity (world frame), fingertip positions; float64 arrays (k, ...)."""
        vel = np.zeros(6)
        rows = []
        for d in self.data:
            self._mj.mj_objectVelocity(self.model, d, self._mj.mjtObj.mjOBJ_BODY, self.obj_body, vel, 0)
            rows.append(np.concatenate([
                d.qpos[self.hand_q], d.qvel[self.hand_v], d.qpos[self.obj_q:self.obj_q + 7],
                vel[3:], vel[:3], d.site_xpos[self.tips].ravel(),
            ]))
        s = np.stack(rows)
        n = len(self.hand_q)
        return {"hand_qpos": s[:, :n], "hand_qvel": s[:, n:2 * n], "object_pos": s[:, 2 * n:2 * n + 3],
                "object_quat": s[:, 2 * n + 3:2 * n + 7], "object_linvel": s[:, 2 * n + 7:2 * n + 10],
                "object_angvel": s[:, 2 * n + 10:2 * n + 13], "fingertip_pos": s[:, 2 * n + 13:]}

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


def _views(batch: HandBatch, render: bool, embed) -> np.ndarray | None:
    """A batch's views for ``reset_render``: nothing, the images, or their embeddings."""
    if not render:
        return None
    images = batch.render()
    return images if embed is None else embed(images)


def _worker(conn, n: int, image_size: int, substeps: int, render: bool, embed) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    # llvmpipe rasterises with a thread per core by default; one thread per worker process keeps the
    # workers from competing for the same cores (set before Mesa loads).
    os.environ["LP_NUM_THREADS"] = "1"
    if embed is not None:
        # `embed` was unpickled before this function ran, so torch (and triton) loaded before Mesa's llvmpipe
        # below: the reverse order segfaults. One torch thread per worker, as for llvmpipe above.
        import torch

        torch.set_num_threads(1)
    batch = HandBatch(n, image_size, substeps, render)
    conn.send("ready")
    while True:
        cmd, payload = conn.recv()
        if cmd == "step":
            conn.send(batch.step(payload))
        elif cmd == "reset_render":
            ids, *poses = payload
            batch.reset(ids, *poses)
            conn.send((_views(batch, render, embed), batch.state()))
        elif cmd == "close":
            batch.close()
            conn.send("closed")
            # Skip the interpreter's teardown, which with torch loaded takes ~0.5-1 s: the renderer is closed
            # and nothing else this process holds needs a clean exit.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


class SimPool:
    """``num_envs`` environments over ``workers`` processes (0: in this process), one API either way.

    embed: None, or a picklable function applied to the views where they are rendered (in each worker),
    uint8 (k, 2, H, W, 3) -> (k, 2, ...) (for the env: their embeddings); each worker calls it on its own envs,
    so it must treat each env alone for results not to depend on the number of workers.
    """

    def __init__(self, num_envs: int, image_size: int, substeps: int, workers: int = 2, render: bool = True,
                 embed=None):
        self.num_envs = num_envs
        self.render_enabled = render
        self.embed = embed
        self.chunks = [c for c in np.array_split(np.arange(num_envs), max(1, workers)) if len(c)]
        self.local = None
        self.conns, self.procs = [], []
        if workers == 0:
            self.local = HandBatch(num_envs, image_size, substeps, render)
            return
        # spawn: the parent has torch's thread pools and an EGL context may exist; fork would copy both.
        ctx = mp.get_context("spawn")
        for chunk in self.chunks:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, len(chunk), image_size, substeps, render, embed),
                               daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            try:
                conn.recv()
            except EOFError:
                self.close()
                raise RuntimeError("a MuJoCo worker process died while starting (see its traceback above)") from None

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        if self.local is not None:
            return self.local.step(actions)
        for conn, chunk in zip(self.conns, self.chunks, strict=True):
            conn.send(("step", actions[chunk]))
        return _concat([conn.recv() for conn in self.conns])

    def reset_render(self, ids: np.ndarray, hand_qpos: np.ndarray, object_pos: np.ndarray,
                     object_quat: np.ndarray) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Reset envs ``ids`` (global indices) to the given poses, then render every env.
        -> (views of every env: uint8 (num_envs, 2, H, W, 3), or ``embed`` of them, or None without rendering;
        state of every env)."""
        if self.local is not None:
            self.local.reset(ids, hand_qpos, object_pos, object_quat)
            return _views(self.local, self.render_enabled, self.embed), self.local.state()
        for conn, chunk in zip(self.conns, self.chunks, strict=True):
            mine = np.isin(ids, chunk)
            conn.send(("reset_render", (ids[mine] - chunk[0], hand_qpos[mine], object_pos[mine],
                                        object_quat[mine])))
        replies = [conn.recv() for conn in self.conns]
        views = np.concatenate([r[0] for r in replies]) if self.render_enabled else None
        return views, _concat([r[1] for r in replies])

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        # Ask every worker before waiting for any: closing them one at a time took ~1 s each.
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except BrokenPipeError:
                pass
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                conn.recv()
            except (BrokenPipeError, EOFError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []


def _concat(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in states]) for k in states[0]}
