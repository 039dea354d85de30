"""The demo's MuJoCo scene and its renderer: the Shadow hand over a table, one object per noun class, a few
distractors, a tiltable light and an egocentric (head-mounted) free camera behind the forearm.

Everything is posed kinematically (``mj_kinematics``, no physics): the demo needs pictures of hand
configurations and held objects, not dynamics, and posing is far cheaper than simulating. Held objects are
placed at a grip point computed from the fingertips or the palm. Shadows, reflections, skybox and MSAA are
off: they cost ~4x on the CPU renderer (FIELD_NOTES) and add nothing a 96 px frame can show.
"""

from __future__ import annotations

import numpy as np

from handeye.sim.assets import load_hand_spec, require_egl
from handeye.sim.demo_shots import JOINTS, MAX_DISTRACTORS, NOUNS, TABLE_PATTERNS, VERBS, Look, Shot

TABLE_Z = 0.08                              # table top height; the forearm mount sits at z = 0.17
MOUNT_POS = np.array([1.0, 1.25, 0.17])
MOUNT_EULER = (1.5708, 0.0, 3.14159)         # robot.xml's mount: forearm along -y, palm up
HIDDEN = np.array([-5.0, -5.0, -1.0])        # unused objects wait here, under the table and out of view
# Grip points in the palm body's frame (its z runs along the fingers, -y out of the palm).
PALM_GRIP = np.array([0.01, -0.012, 0.045])
POWER_GRIP = np.array([0.01, -0.03, 0.07])


def _geom_type(kind: str) -> int:
    import mujoco

    return int(getattr(mujoco.mjtGeom, f"mjGEOM_{kind.upper()}"))


def _quat(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, float), angle)
    return q


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mulQuat(q, a, b)
    return q


def _half_height(kind: str, size: tuple[float, float, float]) -> float:
    """Of an upright primitive: MuJoCo's size means radius and half-length for round shapes."""
    return {"sphere": size[0], "capsule": size[0] + size[1], "cylinder": size[1]}.get(kind, size[2])


def _smooth(a: float) -> float:
    return a * a * (3 - 2 * a)


class DemoScene:
    """Renders ``Shot``s to uint8 frames ``(T, size, size, 3)``. One instance per process (it owns a GL
    context); build it after forking."""

    def __init__(self, size: int):
        require_egl()  # sets MUJOCO_GL=egl unless chosen otherwise
        import mujoco

        self.mj = mujoco
        self.model = self._build().compile()
        self.model.vis.quality.offsamples = 0
        self.model.vis.global_.fovy = 50.0
        self.data = mujoco.MjData(self.model)
        self.renderer = mujoco.Renderer(self.model, size, size)
        for flag in ("SHADOW", "REFLECTION", "SKYBOX"):
            self.renderer.scene.flags[getattr(mujoco.mjtRndFlag, f"mjRND_{flag}")] = 0
        self.camera = mujoco.MjvCamera()
        m = self.model
        names = tuple(m.joint(i).name.removeprefix("robot0:") for i in range(m.njnt))
        assert names == JOINTS, f"unexpected Shadow hand joints {names}"
        self.lo, self.hi = m.jnt_range[:, 0].copy(), m.jnt_range[:, 1].copy()
        self.mocap = {m.body(i).name: int(m.body_mocapid[i])
                      for i in range(m.nbody) if m.body_mocapid[i] >= 0}
        self.palm = m.body("robot0:palm").id
        self.tips = {f: m.site(f"robot0:S_{f}tip").id for f in ("ff", "mf", "th")}
        self.table_geom = m.geom("floor0").id
        self.table_mats = [m.material(f"table_{p}").id for p in TABLE_PATTERNS]
        self.hand_mat = m.material("robot0:MatViz").id
        self.noun_geoms = [[g for g in range(m.ngeom) if m.geom_bodyid[g] == m.body(f"noun_{i}").id]
                           for i in range(len(NOUNS))]
        self.noun_size0 = m.geom_size.copy()
        self.noun_pos0 = m.geom_pos.copy()
        self.distractor_geoms = [m.body(f"distractor_{i}").geomadr[0] for i in range(MAX_DISTRACTORS)]

    def _build(self):
        mj = self.mj
        spec = load_hand_spec("manipulate_block.xml")
        for name in ("object", "target"):
            spec.delete(spec.body(name))
        spec.body("robot0:hand mount").mocap = True
        table = spec.geom("floor0")
        table.pos, table.size = [1.0, 1.0, TABLE_Z], [1.5, 1.5, 0.1]
        for pattern in TABLE_PATTERNS:
            mat = spec.add_material(name=f"table_{pattern}", specular=0.1, shininess=0.2)
            checker = pattern == "checker"
            if pattern != "plain":
                spec.add_texture(
                    name=f"tex_{pattern}", type=mj.mjtTexture.mjTEXTURE_2D, width=64, height=64,
                    builtin=mj.mjtBuiltin.mjBUILTIN_CHECKER if checker else mj.mjtBuiltin.mjBUILTIN_FLAT,
                    mark=mj.mjtMark.mjMARK_NONE if checker else mj.mjtMark.mjMARK_EDGE,
                    rgb1=[1, 1, 1], rgb2=[0.6, 0.6, 0.6], markrgb=[0.4, 0.4, 0.4])
                mat.textures[mj.mjtTextureRole.mjTEXROLE_RGB] = f"tex_{pattern}"
        table.material = "table_plain"
        world = spec.worldbody
        for i, noun in enumerate(NOUNS):
            body = world.add_body(name=f"noun_{i}", mocap=True, pos=HIDDEN)
            for part in noun.parts:
                body.add_geom(type=_geom_type(part.kind), size=list(part.size), pos=list(part.pos),
                              contype=0, conaffinity=0)
        for i in range(MAX_DISTRACTORS):
            body = world.add_body(name=f"distractor_{i}", mocap=True, pos=HIDDEN)
            body.add_geom(type=_geom_type("box"), size=[0.02] * 3, contype=0, conaffinity=0)
        return spec

    # --- look: everything that stays fixed during a shot ---------------------------------------------
    def _apply_look(self, look: Look, noun: int) -> None:
        m = self.model
        m.geom_matid[self.table_geom] = self.table_mats[TABLE_PATTERNS.index(look.table_pattern)]
        mat = m.geom_matid[self.table_geom]
        m.mat_rgba[mat, :3] = look.table_rgb
        m.mat_texrepeat[mat] = look.table_repeat
        m.light_dir[0] = np.asarray(look.light_dir) / np.linalg.norm(look.light_dir)
        m.light_diffuse[0] = look.light_rgb
        m.light_ambient[0] = look.ambient
        m.vis.headlight.ambient[:] = 0.5 * look.ambient
        m.vis.headlight.diffuse[:] = 0.25
        m.mat_rgba[self.hand_mat, :3] = look.hand_rgb
        for g in self.noun_geoms[noun]:
            m.geom_rgba[g] = (*look.object_rgb, 1.0)
            m.geom_size[g] = self.noun_size0[g] * look.object_scale
            m.geom_pos[g] = self.noun_pos0[g] * look.object_scale
        for k in range(MAX_DISTRACTORS):
            g = self.distractor_geoms[k]
            if k < len(look.distractors):
                d = look.distractors[k]
                m.geom_type[g] = _geom_type(d.kind)
                m.geom_size[g] = d.size
                m.geom_rgba[g] = (*d.rgb, 1.0)
        self.mount_quat = _mul(self._euler_quat(MOUNT_EULER), _mul(_quat((0, 0, 1), look.roll),
                                                                    _quat((1, 0, 0), look.yaw)))
        # Where the palm rests with the mount at MOUNT_POS: the forearm's local z points at the fingers.
        rot = np.zeros(9)
        self.mj.mju_quat2Mat(rot, self.mount_quat)
        self.rest = MOUNT_POS + rot.reshape(3, 3) @ np.array([0.0, 0.0, 0.33])

    def _euler_quat(self, euler: tuple[float, float, float]) -> np.ndarray:
        q = np.zeros(4)
        self.mj.mju_euler2Quat(q, np.asarray(euler, float), "xyz")
        return q

    def _place_static(self, look: Look) -> None:
        d = self.data
        for name, mid in self.mocap.items():
            if name.startswith(("noun_", "distractor_")):
                d.mocap_pos[mid] = HIDDEN
        for k, dis in enumerate(look.distractors):
            mid = self.mocap[f"distractor_{k}"]
            z = TABLE_Z + _half_height(dis.kind, dis.size)
            d.mocap_pos[mid] = (self.rest[0] + dis.xy[0], self.rest[1] + dis.xy[1], z)
            d.mocap_quat[mid] = _quat((0, 0, 1), 7.0 * dis.xy[0])

    def _table_point(self, look: Look, uv: tuple[float, float], z: float) -> np.ndarray:
        """The point at height ``z`` seen at image coordinates ``uv`` (in [-1, 1], y up) by the shot's
        camera (MuJoCo free camera: forward = (cos el cos az, cos el sin az, sin el))."""
        az, el = np.radians(look.azimuth), np.radians(look.elevation)
        forward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        up = np.array([-np.sin(el) * np.cos(az), -np.sin(el) * np.sin(az), np.cos(el)])
        right = np.cross(forward, up)
        eye = self.rest + np.asarray(look.lookat) - look.distance * forward
        half = np.tan(np.radians(self.model.vis.global_.fovy) / 2)
        ray = forward + half * (uv[0] * right + uv[1] * up)
        return eye + ray * (z - eye[2]) / ray[2]

    # --- per frame ----------------------------------------------------------------------------------
    def _grip_pose(self, grip: str) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        palm_rot = d.xmat[self.palm].reshape(3, 3)
        if grip in ("pinch", "tripod"):
            tips = ["ff", "th"] if grip == "pinch" else ["ff", "mf", "th"]
            pos = np.mean([d.site_xpos[self.tips[t]] for t in tips], axis=0)
        else:
            pos = d.xpos[self.palm] + palm_rot @ (PALM_GRIP if grip == "palm" else POWER_GRIP)
        # Object z along the palm normal (flat things lie flat on the palm).
        return pos, _mul(d.xquat[self.palm], _quat((1, 0, 0), np.pi / 2))

    def render(self, shot: Shot, fps: float) -> np.ndarray:
        """shot -> uint8 frames (shot.num_frames, size, size, 3)."""
        mj, m, d, look = self.mj, self.model, self.data, shot.look
        self._apply_look(look, shot.noun)
        self._place_static(look)
        noun = NOUNS[shot.noun]
        radius = noun.radius * look.object_scale
        table_pos = self._table_point(look, shot.rest_uv, TABLE_Z + radius)
        table_quat = _quat((0, 0, 1), 5.0 * shot.rest_uv[0])
        obj = self.mocap[f"noun_{shot.noun}"]
        obj_pos, obj_quat = table_pos, table_quat
        wob = np.asarray(shot.wobble)
        frames = np.empty((shot.num_frames, *self.renderer_shape, 3), np.uint8)
        q_prev, t = np.asarray(shot.start), 0
        for phase in shot.phases:
            grip = VERBS[phase.verb].grip
            q_target = np.asarray(phase.joints)
            from_pos, from_quat = obj_pos, obj_quat
            for k in range(phase.frames):
                sec = t / fps
                a = _smooth(min(1.0, (k + 1) / phase.ramp)) if phase.ramp else 1.0
                q = (1 - a) * q_prev + a * q_target + 0.04 * np.sin(2 * np.pi * 0.8 * sec + wob)
                d.qpos[:] = np.clip(q, self.lo, self.hi)
                drift = shot.drift * np.sin(2 * np.pi * np.array([0.31, 0.23, 0.37]) * sec + wob[:3])
                d.mocap_pos[self.mocap["robot0:hand mount"]] = MOUNT_POS + drift * [1.0, 1.0, 0.5]
                d.mocap_quat[self.mocap["robot0:hand mount"]] = self.mount_quat
                mj.mj_kinematics(m, d)
                if grip is not None:
                    goal_pos, goal_quat = self._grip_pose(grip)
                else:
                    goal_pos, goal_quat = from_pos.copy(), from_quat
                    goal_pos[2] = TABLE_Z + radius  # put down where it is
                obj_pos = (1 - a) * from_pos + a * goal_pos
                obj_quat = goal_quat if a > 0.5 else from_quat
                d.mocap_pos[obj], d.mocap_quat[obj] = obj_pos, obj_quat
                mj.mj_kinematics(m, d)
                frames[t] = self._shoot(look, sec, wob)
                t += 1
            q_prev = q_target
        return frames

    @property
    def renderer_shape(self) -> tuple[int, int]:
        return self.renderer.height, self.renderer.width

    def _shoot(self, look: Look, sec: float, wob: np.ndarray) -> np.ndarray:
        cam = self.camera
        cam.lookat[:] = self.rest + np.asarray(look.lookat)
        cam.distance = look.distance
        cam.azimuth = look.azimuth + look.shake * np.sin(2 * np.pi * 0.4 * sec + wob[3])
        cam.elevation = look.elevation + look.shake * np.sin(2 * np.pi * 0.3 * sec + wob[4])
        self.renderer.update_scene(self.data, cam)
        return self.renderer.render()

    def close(self) -> None:
        self.renderer.close()
