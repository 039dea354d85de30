"""What the demo videos show: the verb (hand configuration) and noun (object) vocabularies, and shots.

A ``Shot`` is a pure description of a few seconds of video: a ``Look`` (every nuisance factor: colours,
lighting, camera, distractors), one object, and a sequence of hand ``Phase``s. Samplers draw shots from a
numpy ``Generator``; ``handeye.sim.demo_scene.DemoScene`` turns a shot into frames. Keeping the description
apart from the renderer makes each video a function of its own seed, whichever process renders it.

Nuisance ranges are scaled by one ``strength`` in [0, 1]: 0 gives one fixed look, 1 the full ranges.
The label must not be readable from pixel statistics (colour, brightness, framing), so object colour,
lighting, table, hand tint, camera pose and clutter are drawn independently of the verb and the noun.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Joint order of the Shadow hand MJCF (gymnasium-robotics robot.xml), without the "robot0:" prefix.
JOINTS = (
    "WRJ1", "WRJ0", "FFJ3", "FFJ2", "FFJ1", "FFJ0", "MFJ3", "MFJ2", "MFJ1", "MFJ0", "RFJ3", "RFJ2", "RFJ1",
    "RFJ0", "LFJ4", "LFJ3", "LFJ2", "LFJ1", "LFJ0", "THJ4", "THJ3", "THJ2", "THJ1", "THJ0",
)


def _finger(f: str, mcp: float, pip: float, dip: float, abduct: float = 0.0) -> dict[str, float]:
    return {f"{f}J3": abduct, f"{f}J2": mcp, f"{f}J1": pip, f"{f}J0": dip}


def _hand(*parts: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in parts:
        out.update(p)
    return out


_CURLED = [_finger(f, 1.5, 1.5, 1.2) for f in ("MF", "RF", "LF")]
_THUMB_ACROSS = {"THJ4": 1.0, "THJ3": 1.2, "THJ1": 0.4, "THJ0": -0.8}


@dataclass(frozen=True)
class Verb:
    name: str
    category: str
    joints: dict[str, float]  # joint angles (rad) of the configuration; absent joints are 0 (straight)
    grip: str | None          # where the object is held: palm, power, pinch, tripod; None: on the table


# Single-frame hand configurations. Pinch and tripod thumb angles were found by least-squares IK on the
# fingertip sites (thumb tip 2.5 cm from the index/middle tips, room for a small object).
VERBS: tuple[Verb, ...] = (
    Verb("hold-flat", "support", {"THJ4": 0.2}, "palm"),
    Verb("grasp", "power", _hand(*[_finger(f, 0.9, 1.0, 0.7) for f in ("FF", "MF", "RF", "LF")],
                                 {"THJ4": 1.0, "THJ3": 1.1, "THJ1": 0.3, "THJ0": -0.4}), "power"),
    Verb("pinch", "precision", _hand(_finger("FF", 0.78, 0.63, 0.37), *[_finger(f, 0.3, 0.3, 0.2)
                                     for f in ("MF", "RF", "LF")],
                                     {"THJ4": 0.67, "THJ3": 0.96, "THJ2": 0.07, "THJ1": 0.15, "THJ0": -0.31}),
         "pinch"),
    Verb("tripod", "precision", _hand(_finger("FF", 0.82, 0.66, 0.39), _finger("MF", 0.77, 0.64, 0.38),
                                      _finger("RF", 1.1, 1.0, 0.8), _finger("LF", 1.1, 1.0, 0.8),
                                      {"THJ4": 0.73, "THJ3": 1.0, "THJ2": 0.09, "THJ1": 0.11, "THJ0": -0.31}),
         "tripod"),
    Verb("point", "gesture", _hand(_finger("FF", 0.0, 0.0, 0.0), *_CURLED, _THUMB_ACROSS), None),
    Verb("spread", "gesture", _hand(_finger("FF", 0, 0, 0, 0.35), _finger("MF", 0, 0, 0, 0.1),
                                    _finger("RF", 0, 0, 0, -0.2), _finger("LF", 0, 0, 0, -0.35),
                                    {"THJ4": 1.0}), None),
    Verb("fist", "gesture", _hand(_finger("FF", 1.5, 1.5, 1.2), *_CURLED, _THUMB_ACROSS), None),
    Verb("hook", "gesture", _hand(*[_finger(f, 0.0, 1.5, 1.3) for f in ("FF", "MF", "RF", "LF")],
                                  {"THJ4": 0.2}), None),
    Verb("relax", "rest", _hand(*[_finger(f, 0.35, 0.45, 0.35) for f in ("FF", "MF", "RF", "LF")],
                                {"THJ4": 0.4, "THJ3": 0.3}), None),
)


@dataclass(frozen=True)
class Part:
    kind: str                         # MuJoCo primitive: box, sphere, cylinder, capsule, ellipsoid
    size: tuple[float, float, float]  # MuJoCo size (half-extents / radius, half-length), metres
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Noun:
    name: str
    category: str
    parts: tuple[Part, ...]
    radius: float  # half-height when lying on the table and distance from the palm when held, metres


NOUNS: tuple[Noun, ...] = (
    Noun("cube", "toy", (Part("box", (0.022, 0.022, 0.022)),), 0.022),
    Noun("ball", "toy", (Part("sphere", (0.026, 0, 0)),), 0.026),
    Noun("can", "container", (Part("cylinder", (0.022, 0.034, 0)),), 0.034),
    Noun("bottle", "container", (Part("capsule", (0.014, 0.045, 0)),), 0.014),
    Noun("plate", "crockery", (Part("cylinder", (0.05, 0.005, 0)),), 0.006),
    Noun("egg", "food", (Part("ellipsoid", (0.018, 0.018, 0.027)),), 0.027),
    Noun("book", "stationery", (Part("box", (0.045, 0.032, 0.009)),), 0.009),
    Noun("mug", "crockery", (Part("cylinder", (0.024, 0.03, 0)), Part("box", (0.006, 0.004, 0.018),
                                                                         (0.03, 0, 0))), 0.03),
)

FINGERTIP_GRIPS = ("pinch", "tripod")  # grips that hold the object scaled down
DISTRACTOR_KINDS = ("box", "cylinder", "sphere", "capsule")
MAX_DISTRACTORS = 6  # distractor bodies the scene holds
TABLE_PATTERNS = ("plain", "checker", "grid")


@dataclass(frozen=True)
class Distractor:
    kind: str
    size: tuple[float, float, float]
    rgb: tuple[float, float, float]
    xy: tuple[float, float]  # offset from the hand's resting point on the table, metres


@dataclass(frozen=True)
class Look:
    """Every nuisance factor of one shot."""

    table_pattern: str                  # one of TABLE_PATTERNS
    table_rgb: tuple[float, float, float]
    table_repeat: float                 # pattern repeats per metre
    light_dir: tuple[float, float, float]
    light_rgb: tuple[float, float, float]
    ambient: float
    hand_rgb: tuple[float, float, float]
    object_rgb: tuple[float, float, float]
    object_scale: float
    distractors: tuple[Distractor, ...]
    azimuth: float                      # camera, degrees (-90: behind the forearm, looking along it)
    elevation: float
    distance: float                     # metres from the look-at point
    lookat: tuple[float, float, float]  # offset of the look-at point from the resting palm, metres
    shake: float                        # head shake amplitude, degrees
    roll: float                         # forearm roll, radians (0: palm up, -pi/2: thumb up)
    yaw: float                          # forearm yaw, radians


@dataclass(frozen=True)
class Phase:
    verb: int
    joints: tuple[float, ...]  # target angles in JOINTS order, noise included
    frames: int                # frames of this phase, ramp included
    ramp: int                  # frames spent moving from the previous phase's pose


@dataclass(frozen=True)
class Shot:
    look: Look
    noun: int
    start: tuple[float, ...]        # joint angles before the first phase
    phases: tuple[Phase, ...]
    rest_uv: tuple[float, float]    # where the object lies on the table, in image coordinates [-1, 1]^2
    drift: float                    # amplitude of the forearm's wandering, metres
    wobble: tuple[float, ...]       # per-joint phase of the small idle finger motion (radians)

    @property
    def num_frames(self) -> int:
        return sum(p.frames for p in self.phases)


def pose_vector(verb: int, rng: np.random.Generator, noise: float) -> tuple[float, ...]:
    """The verb's joint angles in JOINTS order plus Gaussian noise (rad); the renderer clips to limits."""
    base = VERBS[verb].joints
    q = np.array([base.get(j, 0.0) for j in JOINTS]) + rng.normal(0.0, noise, len(JOINTS))
    q[:2] = rng.uniform(-0.25, 0.15, 2)  # the wrist moves freely whatever the fingers do
    return tuple(float(x) for x in q)


def _rgb(rng: np.random.Generator, base: tuple[float, float, float], s: float) -> tuple[float, float, float]:
    """A colour between ``base`` (s=0) and a uniformly random one (s=1)."""
    c = (1 - s) * np.asarray(base) + s * rng.uniform(0.05, 0.95, 3)
    return tuple(float(x) for x in c)


def _u(rng: np.random.Generator, centre: float, half: float, s: float) -> float:
    return float(centre + s * rng.uniform(-half, half))


def sample_look(rng: np.random.Generator, s: float, max_distractors: int) -> Look:
    """Nuisance factors at strength ``s`` in [0, 1]; drawn the same way whatever the label."""
    n_dis = int(rng.integers(0, max_distractors + 1)) if s > 0 else 0
    distractors = tuple(
        Distractor(kind=DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))],
                   size=tuple(float(x) for x in rng.uniform(0.012, 0.04, 3)),
                   rgb=_rgb(rng, (0.5, 0.5, 0.5), 1.0),
                   xy=(float(rng.choice([-1, 1]) * rng.uniform(0.12, 0.25)), float(rng.uniform(-0.25, 0.1))))
        for _ in range(n_dis))
    tilt = rng.normal(0.0, 0.6 * s, 2)
    shade = _u(rng, 0.75, 0.35, s)
    return Look(
        table_pattern=TABLE_PATTERNS[int(rng.integers(len(TABLE_PATTERNS)))] if s > 0 else "plain",
        table_rgb=_rgb(rng, (0.55, 0.45, 0.35), s),
        table_repeat=_u(rng, 12.0, 8.0, s),
        light_dir=(float(tilt[0]), float(tilt[1]), -1.0),
        light_rgb=tuple(float(shade * x) for x in _rgb(rng, (1.0, 1.0, 1.0), 0.3 * s)),
        ambient=_u(rng, 0.25, 0.15, s),
        hand_rgb=_rgb(rng, (0.9, 0.9, 0.9), 0.35 * s),
        object_rgb=_rgb(rng, (0.8, 0.2, 0.1), s),
        object_scale=_u(rng, 1.0, 0.2, s),
        distractors=distractors,
        azimuth=_u(rng, -90.0, 18.0, s),
        elevation=_u(rng, -55.0, 8.0, s),
        distance=_u(rng, 0.32, 0.04, s),
        lookat=(_u(rng, 0.0, 0.02, s), _u(rng, -0.06, 0.02, s), _u(rng, 0.0, 0.015, s)),
        shake=_u(rng, 0.6, 0.6, s),
        roll=_u(rng, -0.9, 0.5, s),
        yaw=_u(rng, 0.0, 0.25, s),
    )


def sample_segment_shot(rng: np.random.Generator, verb: int, noun: int, s: float, lead_in: int, hold: int,
                        max_distractors: int) -> Shot:
    """One labelled action: ``lead_in`` unlabelled frames moving from a random pose into ``verb``, then
    ``hold`` frames of the configuration (the labelled segment), with ``noun`` held or on the table."""
    look = sample_look(rng, s, max_distractors)
    if VERBS[verb].grip in FINGERTIP_GRIPS:
        look = replace(look, object_scale=0.6 * look.object_scale)
    start = pose_vector(int(rng.integers(len(VERBS))), rng, 0.15)
    phase = Phase(verb, pose_vector(verb, rng, 0.06), lead_in + hold, lead_in)
    return Shot(look, noun, start, (phase,), _rest_uv(rng), drift=0.01,
                wobble=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, len(JOINTS))))


def sample_ego_shot(rng: np.random.Generator, s: float, frames: int, max_distractors: int) -> Shot:
    """An unlabelled clip: the hand wanders, picks the object up, changes grip and puts it down again."""
    look = sample_look(rng, s, max_distractors)
    look = replace(look, object_scale=0.75 * look.object_scale)  # small enough for every grip
    phases, left = [], frames
    while left > 0:
        n = min(left, int(rng.integers(18, 48)))
        verb = int(rng.integers(len(VERBS)))
        phases.append(Phase(verb, pose_vector(verb, rng, 0.12), n, min(n, int(rng.integers(6, 16)))))
        left -= n
    start = pose_vector(int(rng.integers(len(VERBS))), rng, 0.15)
    return Shot(look, int(rng.integers(len(NOUNS))), start, tuple(phases), _rest_uv(rng), drift=0.05,
                wobble=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, len(JOINTS))))


def _rest_uv(rng: np.random.Generator) -> tuple[float, float]:
    """Beside the hand, which fills the image centre: the object must stay in view."""
    return float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)), float(rng.uniform(-0.75, 0.0))
