"""Which observation.state dimensions mean what: a dataset's StateLayout, and its decoding into Kinematics.

Resolved once per dataset, first match wins:
  state-map  the user's `--state-map`: roles to dimensions, e.g. "ee=0:3,gripper=6", "gripper=6-7" (opening = the
             difference of two finger joints, as LIBERO's), "joints=0:5,gripper=5"
  metaworld  observation.state (4,) hand xyz + gripper opening, and observation.environment_state (39,) with the
             manipulated object at [4:7] and the goal at [36:39]
  libero     observation.state (8,) = eef xyz, axis-angle, two finger joints (opening = their difference over the
             Panda's 0.08 m); no object state in openpi's and lerobot's datasets, our collections add
             observation.environment_state (27,) with the target at [9:12] and its destination at [16:19]
  names      the feature's names in info.json where they say what they are (lerobot's `shoulder_pan.pos ...
             gripper.pos`, `x y z`, `eef_pos_x`, `gripper`), see name_roles()
A joint-space layout (no end-effector xyz) gets its end effector from forward kinematics when a robot description is
given (sim.robot_model), else phases and cues read the gripper and the joints alone (`left_out` says what is lost).
A multi-arm state (names with one gripper per arm prefix: lerobot's aloha `left_waist ... right_gripper`) is one
layout per arm; its episodes decode into one track that follows, frame by frame, the arm acting on the object (the
nearest to it, else the one that moves): a hand-over reads as one arm's approach, grasp and carry, then the other's;
every arm's own kinematics stay beside the track (Kinematics.hands) for what the other hands do meanwhile.
Grippers of named and mapped layouts are scaled to 0..1 (closed..open) by the dataset's own range, joints to a
fraction of the widest joint's range: thresholds then mean the same for degrees, radians and lerobot's -100..100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.kinematics import Kinematics, joint_speed, runs
from vla_distill.sim.robot_model import ForwardKinematics, joint_key
from vla_distill.types import OBS_STATE

ROLES = ("ee", "gripper", "joints")
_AXIS = re.compile(r"^(?:ee|eef|end_effector|tcp|hand|tool|robot0_eef)?_?(?:pos(?:ition)?_?)?([xyz])$")
_ORIENTATION = re.compile(r"^(?:ee|eef|end_effector|tcp|hand|tool)?_?"
                          r"(?:roll|pitch|yaw|r[xyz]|quat\w*|axis_?angle\w*|rot\w*|ori\w*)$")
_JOINT_WORDS = ("joint", "shoulder", "elbow", "wrist", "waist", "forearm", "base", "pan", "lift", "flex")


@dataclass(frozen=True)
class StateLayout:
    """Roles of observation.state's dimensions.

    ee: indices of x, y, z (metres); gripper: (i,) an opening, or (i, j) two mirrored fingers whose difference is the
    opening; joints: arm joint indices; lo / hi: the dataset's range of every state dimension (scaling; empty for the
    simulators' own layouts, which decode raw); env_obj, env_goal: where a simulator's environment state carries the
    manipulated object's and the goal's xyz (MetaWorld's 39-d, our LIBERO 27-d); fk: forward kinematics of the joints,
    where a robot description was given."""

    name: str
    ee: tuple[int, ...] = ()
    gripper: tuple[int, ...] = ()
    joints: tuple[int, ...] = ()
    joint_names: tuple[str, ...] = ()
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    env_obj: tuple[int, ...] = ()
    env_goal: tuple[int, ...] = ()
    gripper_span: float = 1.0  # a simulator's layout: its opening's full range in its own units
    fk: ForwardKinematics | None = field(default=None, compare=False)
    arms: tuple[StateLayout, ...] = ()  # a multi-arm robot: one layout per arm (indices into the whole state)
    arm_names: tuple[str, ...] = ()

    @property
    def env_object(self) -> bool:
        return bool(self.env_obj)

    @property
    def has_ee(self) -> bool:
        if self.arms:
            return all(a.has_ee for a in self.arms)
        return bool(self.ee) or self.fk is not None

    def decode(self, state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
               contact: np.ndarray | None = None) -> Kinematics:
        """state (T, S), env (T, S_env) or None, success (T,) or None, contact (T,) bool (or (T, A), one column per
        arm) or None -> Kinematics."""
        state = np.asarray(state, np.float64)
        if self.arms:
            return self._decode_arms(state, env, success, fps, contact)
        ee = state[:, list(self.ee)] if self.ee else None
        if ee is None and self.fk is not None:
            ee = self.fk.positions(state[:, list(self.joints)])
        joints = None
        if self.joints:
            lo, hi = (np.asarray(x, np.float64)[list(self.joints)] for x in (self.lo, self.hi))
            # one scale for all joints (they share units): a joint that barely moves keeps its noise small
            joints = (state[:, list(self.joints)] - lo) / max(float((hi - lo).max()), 1e-9)
        obj, goal = self._env_points(env)
        return Kinematics(gripper=self._opening(state), fps=fps, ee=ee, obj=obj, goal=goal, success=success,
                          contact=None if contact is None else np.asarray(contact, bool), joints=joints,
                          joint_names=self.joint_names)

    def _decode_arms(self, state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
                     contact: np.ndarray | None) -> Kinematics:
        """One track over the arms: at each frame the acting arm's end effector, gripper and contact; every arm's
        joints, and every arm's own kinematics (Kinematics.hands)."""
        contact = None if contact is None else np.asarray(contact, bool).reshape(len(state), -1)
        per_contact = contact if contact is not None and contact.shape[1] == len(self.arms) else None
        kins = [arm.decode(state, None, success, fps, None if per_contact is None else per_contact[:, i])
                for i, arm in enumerate(self.arms)]
        obj, goal = self._env_points(env)
        acting = acting_arm(kins, obj, fps)
        t = np.arange(len(state))

        def follow(name: str) -> np.ndarray | None:
            values = [getattr(k, name) for k in kins]
            return None if any(v is None for v in values) else np.stack(values)[acting, t]

        joints = [k.joints for k in kins]
        return Kinematics(gripper=follow("gripper"), fps=fps, ee=follow("ee"), obj=obj, goal=goal, success=success,
                          contact=follow("contact"),
                          joints=None if any(j is None for j in joints) else np.concatenate(joints, 1),
                          joint_names=sum((k.joint_names for k in kins), ()), arm=acting, arm_names=self.arm_names,
                          hands=tuple(kins))

    def _env_points(self, env: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(T, 3) object and goal positions from the environment state, each None where the layout has none (a
        named layout may find an object and no goal)."""
        if not self.env_object or env is None:
            return None, None
        env = np.asarray(env, np.float64)
        return env[:, list(self.env_obj)], env[:, list(self.env_goal)] if self.env_goal else None

    def _opening(self, state: np.ndarray) -> np.ndarray:
        g = state[:, self.gripper[0]] - (state[:, self.gripper[1]] if len(self.gripper) == 2 else 0.0)
        if not self.lo:  # a simulator's layout: its own units, its known span
            return g / self.gripper_span
        if len(self.gripper) == 2:  # the range of the difference is not stored: scale by the fingers' spans
            span = sum(self.hi[i] - self.lo[i] for i in self.gripper)
            return (g - (self.lo[self.gripper[0]] - self.hi[self.gripper[1]])) / max(span, 1e-9)
        i = self.gripper[0]
        return (g - self.lo[i]) / max(self.hi[i] - self.lo[i], 1e-9)

    def left_out(self) -> list[str]:
        """What phases, cues and the audit cannot use with this layout, one phrase each."""
        out = []
        if not self.has_ee:
            out.append("no end-effector position (give --robot-model for forward kinematics): phases read the "
                       "gripper and joint speed, cues name the joints that move")
        if not self.env_object:
            out.append("no object state: a close counts as a grasp and closed-gripper motion as transport")
        return out

    def describe(self) -> dict:
        """The map used, for the annotation's provenance."""
        d = {"layout": self.name, "state_map": format_state_map(self), "joint_names": list(self.joint_names),
             "left_out": self.left_out()}
        if self.fk is not None:
            d["forward_kinematics"] = self.fk.describe()
        if self.arms:
            # each arm's own map; what the track can read is the whole layout's left_out
            d["arms"] = {n: {k: v for k, v in a.describe().items() if k != "left_out"}
                         for n, a in zip(self.arm_names, self.arms)}
        return d


# ---------------------------------------------------------------- --state-map
def parse_state_map(text: str, dim: int) -> dict[str, tuple[int, ...]]:
    """'ee=0:3,gripper=6' -> {"ee": (0, 1, 2), "gripper": (6,)}; 'gripper=6-7' -> (6, 7), the two fingers' difference;
    'joints=0,1,2' lists. Indices are checked against the state's `dim` values."""
    roles: dict[str, tuple[int, ...]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        role, _, spec = part.partition("=")
        role = role.strip()
        if role not in ROLES or not spec:
            raise ConfigError(f"{part!r}: expected ROLE=INDICES with ROLE one of {ROLES} (e.g. ee=0:3,gripper=6)",
                              field="state_map")
        roles.setdefault(role, ())
        roles[role] += _indices(spec.strip(), part)
    for role, idx in roles.items():
        bad = [i for i in idx if not 0 <= i < dim]
        if bad:
            raise ConfigError(f"{role}: index {bad[0]} is outside observation.state's {dim} values", field="state_map")
    if "ee" in roles and len(roles["ee"]) != 3:
        raise ConfigError(f"ee needs 3 indices (x, y, z), got {len(roles['ee'])}", field="state_map")
    if len(roles.get("gripper", ())) not in (1, 2):
        raise ConfigError("gripper needs one index (the opening) or two, A-B (two fingers)", field="state_map")
    return roles


def _indices(spec: str, part: str) -> tuple[int, ...]:
    try:
        if ":" in spec:
            a, b = spec.split(":")
            return tuple(range(int(a), int(b)))
        if "-" in spec:
            a, b = spec.split("-")
            return int(a), int(b)
        return tuple(int(x) for x in spec.split())
    except ValueError:
        raise ConfigError(f"{part!r}: indices are N, A:B (a slice) or A-B (two fingers)", field="state_map") from None


def format_state_map(layout: StateLayout) -> str:
    parts = []
    if layout.ee:
        ee = f"{layout.ee[0]}:{layout.ee[-1] + 1}" if _contiguous(layout.ee) else " ".join(map(str, layout.ee))
        parts.append(f"ee={ee}")
    if layout.gripper:
        parts.append("gripper=" + "-".join(map(str, layout.gripper)))
    if layout.joints:
        parts.append(f"joints={layout.joints[0]}:{layout.joints[-1] + 1}" if _contiguous(layout.joints)
                     else "joints=" + " ".join(map(str, layout.joints)))
    return ",".join(parts)


def _contiguous(idx: tuple[int, ...]) -> bool:
    return list(idx) == list(range(idx[0], idx[0] + len(idx)))


# ---------------------------------------------------------------- from the feature's names
def name_roles(names: list[str]) -> dict[str, tuple[int, ...]]:
    """Roles read off names where they say what they are: x/y/z (with an ee/eef/pos prefix) -> ee; gripper, finger or
    jaw -> gripper; lerobot motor positions (`*.pos`) and joint-like names -> joints. Velocities, efforts and
    orientations get no role."""
    axes, grippers, joints = {}, [], []
    for i, raw in enumerate(names):
        n = raw.strip().lower()
        if any(w in n for w in ("vel", "effort", "torque", "current", "force")):
            continue
        m = _AXIS.match(n.replace(".", "_"))
        if m:
            axes.setdefault(m.group(1), i)
        elif any(w in n for w in ("gripper", "finger", "jaw")):
            grippers.append(i)
        elif not _ORIENTATION.match(joint_key(n)) and (n.endswith(".pos") or "joint" in n
                                                          or any(w in joint_key(n) for w in _JOINT_WORDS)):
            joints.append(i)
    roles: dict[str, tuple[int, ...]] = {}
    if len(axes) == 3:
        roles["ee"] = (axes["x"], axes["y"], axes["z"])
    if grippers:
        roles["gripper"] = _gripper(grippers, [names[i] for i in grippers])
    if joints:
        roles["joints"] = tuple(joints)
    return roles


def _gripper(idx: list[int], names: list[str]) -> tuple[int, ...]:
    """Two dimensions named alike (`gripper`, `gripper`; `finger_0`, `finger_1`) are mirrored fingers; otherwise the
    first gripper is the one phases follow (a bimanual robot's left arm)."""
    if len(idx) == 2 and re.sub(r"[\W_]*\d+$", "", names[0].lower()) == re.sub(r"[\W_]*\d+$", "", names[1].lower()):
        return idx[0], idx[1]
    return (idx[0],)


def arm_groups(names: list[str]) -> dict[str, list[int]]:
    """A multi-arm state split by the prefix each arm's gripper name carries ('left_gripper', 'right_gripper' ->
    {'left': [0 .. 6], 'right': [7 .. 13]}: every name with that prefix); {} unless two or more arms are named."""
    prefixes = []
    for n in names:
        m = re.match(r"^([a-z0-9]+)[\W_]+(?:gripper|jaw)", n.strip().lower())
        if m and m.group(1) not in prefixes:
            prefixes.append(m.group(1))
    if len(prefixes) < 2:
        return {}
    groups = {p: [i for i, n in enumerate(names) if re.match(rf"^{p}[\W_]", n.strip().lower())] for p in prefixes}
    return groups if all(len(g) > 1 for g in groups.values()) else {}


def env_object_roles(names: list[str] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(object xyz, goal xyz) indices read off an environment state's names: the first `<object...>_x, _y, _z`
    triple, and the first `<goal|target...>_x, _y, _z` one; () where none."""
    found: dict[str, dict[str, int]] = {}
    for i, n in enumerate(names or ()):
        m = re.match(r"^(.*?)[\W_]?([xyz])$", n.strip().lower())
        if m and m.group(1):
            found.setdefault(m.group(1), {})[m.group(2)] = i

    def first(words: tuple[str, ...]) -> tuple[int, ...]:
        for prefix, axes in found.items():
            if any(w in prefix for w in words) and len(axes) == 3:
                return axes["x"], axes["y"], axes["z"]
        return ()

    return first(("obj", "cube", "peg", "block")), first(("goal", "target"))


def acting_arm(kins: list[Kinematics], obj: np.ndarray | None, fps: float, hold_s: float = 0.2) -> np.ndarray:
    """(T,) the arm each frame follows: the one whose end effector is nearest the object, or (without an object or
    end effectors) the one whose joints move most; a switch must hold for hold_s, so contact chatter between two
    hands near the same object does not flip the track back and forth."""
    if obj is not None and all(k.ee is not None for k in kins):
        acting = np.stack([np.linalg.norm(k.ee - obj, axis=1) for k in kins], 1).argmin(1)
    elif all(k.joints is not None for k in kins):
        acting = np.stack([joint_speed(k) for k in kins], 1).argmax(1)
    else:
        acting = np.zeros(len(kins[0]), np.int64)
    min_run = max(1, round(hold_s * fps))
    out = acting.copy()
    for _, start, end in runs(acting):
        if end - start < min_run and start > 0:  # too short to be a hand-over: the arm before it keeps the track
            out[start:end] = out[start - 1]
    return out


# ---------------------------------------------------------------- resolution
LIBERO_ENV_DIMS = (23, 27)  # sim/libero/env.py: LEGACY_ENV_STATE, len(ENV_STATE_NAMES) (a test holds them equal)


def _builtin(dim: int, env_dim: int | None) -> StateLayout | None:
    if dim == 4 and env_dim == 39:
        return StateLayout("metaworld", ee=(0, 1, 2), gripper=(3,), env_obj=(4, 5, 6), env_goal=(36, 37, 38))
    if dim == 8:  # Panda: 2 x 0.04 m fingers; our LIBERO collections add the target (on a drawer or a knob task the
        # part's grip point) and its destination, at the same places in the 27-d state as in the 23-d one before it
        obj, goal = ((9, 10, 11), (16, 17, 18)) if env_dim in LIBERO_ENV_DIMS else ((), ())
        return StateLayout("libero", ee=(0, 1, 2), gripper=(6, 7), gripper_span=0.08, env_obj=obj, env_goal=goal)
    return None


def resolve_layout(dim: int, env_dim: int | None = None, names: list[str] | None = None,
                   lo: np.ndarray | None = None, hi: np.ndarray | None = None, state_map: str = "",
                   robot_model: str = "", ee_frame: str = "", joint_units: str = "deg",
                   env_names: list[str] | None = None) -> StateLayout:
    """The layout of a dataset whose observation.state has `dim` values (see the module doc for the order).

    names: the state feature's names; lo, hi: (dim,) its range in the data (scales grippers and joints); env_names:
    observation.environment_state's names, where the object's position is read from (env_object_roles); ee_frame:
    one site or body, or per arm of a multi-arm robot `left=SITE,right=SITE`."""
    if state_map:
        layout = StateLayout("state-map", **parse_state_map(state_map, dim))
    else:
        layout = _builtin(dim, env_dim)
        if layout is None and names is not None and len(names) == dim:
            groups = arm_groups(names)
            layout = StateLayout("names", arms=tuple(StateLayout("names", **name_roles_at(names, g))
                                                     for g in groups.values()),
                                 arm_names=tuple(groups)) if groups else StateLayout("names", **name_roles(names))
    if layout is None or not (layout.gripper or (layout.arms and all(a.gripper for a in layout.arms))):
        what = (f"no gripper among the names {names}" if layout is not None else
                f"unknown state layout of {dim} values" + (f" (names {names})" if names else " without names"))
        raise DatasetError(f"{what}: name the roles with --state-map (e.g. ee=0:3,gripper=6 or joints=0:5,gripper=5), "
                           "or use --phases vlm --directions vlm", field=OBS_STATE)
    if layout.name in ("state-map", "names"):
        if lo is None or hi is None:
            raise DatasetError("the state's range is needed to scale the gripper and joints", field=OBS_STATE)
        layout = _scaled(layout, names, dim, lo, hi)
    if robot_model:
        layout = _with_fk(layout, robot_model, ee_frame, joint_units)
    if layout.name in ("state-map", "names") and not layout.env_obj and layout.has_ee:
        # an object's position means something to phases and cues only beside the hand's
        obj, goal = env_object_roles(env_names)
        layout = replace(layout, env_obj=obj, env_goal=goal if obj else ())
    return layout


def name_roles_at(names: list[str], idx: list[int]) -> dict[str, tuple[int, ...]]:
    """name_roles of the names at `idx`, as indices into the whole state."""
    return {role: tuple(idx[i] for i in sub) for role, sub in name_roles([names[i] for i in idx]).items()}


def _scaled(layout: StateLayout, names: list[str] | None, dim: int, lo: np.ndarray, hi: np.ndarray) -> StateLayout:
    """A named or mapped layout with the data's range and its joints' names (every arm's, for a multi-arm one)."""
    joint_names = tuple(names[i] if names and len(names) == dim else f"joint {i}" for i in layout.joints)
    arms = tuple(_scaled(a, names, dim, lo, hi) for a in layout.arms)
    return replace(layout, lo=tuple(map(float, lo)), hi=tuple(map(float, hi)), joint_names=joint_names, arms=arms)


def _with_fk(layout: StateLayout, robot_model: str, ee_frame: str, joint_units: str) -> StateLayout:
    """The layout with forward kinematics of its joints (each arm's to its own frame, `arm=FRAME,...`)."""
    if layout.arms:
        frames = dict(part.split("=", 1) for part in ee_frame.split(",") if "=" in part)
        missing = [a for a in layout.arm_names if a not in frames]
        if missing:
            raise ConfigError(f"a robot with arms {list(layout.arm_names)} needs one --ee-frame per arm, e.g. "
                              + ",".join(f"{a}=SITE" for a in layout.arm_names), field="ee_frame")
        arms = tuple(_with_fk(a, robot_model, frames[n], joint_units) for n, a in zip(layout.arm_names, layout.arms))
        return replace(layout, arms=arms)
    if layout.ee:
        raise ConfigError("--robot-model computes the end effector from joints, but this state already has one "
                          f"({format_state_map(layout)})", field="robot_model")
    if not layout.joints:
        raise ConfigError("--robot-model needs the state's joints: name them with --state-map joints=A:B",
                          field="robot_model")
    if not ee_frame:
        raise ConfigError("--robot-model needs --ee-frame, the site or body of the end effector", field="ee_frame")
    return replace(layout, fk=ForwardKinematics(robot_model, ee_frame, layout.joint_names, joint_units))


def kinematics(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
               contact: np.ndarray | None = None) -> Kinematics:
    """A simulator's own rollout (MetaWorld, LIBERO) -> Kinematics, by the built-in layout of its shape."""
    state = np.asarray(state, np.float64)
    layout = _builtin(state.shape[1], None if env is None else np.shape(env)[1])
    if layout is None:
        raise DatasetError(f"unknown state layout of {state.shape[1]} values", field=OBS_STATE)
    return layout.decode(state, env, success, fps, contact)
