"""Which observation.state dimensions mean what: a dataset's StateLayout, and its decoding into Kinematics.

Resolved once per dataset, first match wins:
  state-map  the user's `--state-map`: roles to dimensions, e.g. "ee=0:3,gripper=6", "gripper=6-7" (opening = the
             difference of two finger joints, as LIBERO's), "joints=0:5,gripper=5"
  metaworld  observation.state (4,) hand xyz + gripper opening, and observation.environment_state (39,) with the
             manipulated object at [4:7] and the goal at [36:39]
  libero     observation.state (8,) = eef xyz, axis-angle, two finger joints (opening = their difference over the
             Panda's 0.08 m); no object state in openpi's and lerobot's datasets, our collections add
             observation.environment_state (23,) with the target at [9:12] and its destination at [16:19]
  names      the feature's names in info.json where they say what they are (lerobot's `shoulder_pan.pos ...
             gripper.pos`, `x y z`, `eef_pos_x`, `gripper`), see name_roles()
A joint-space layout (no end-effector xyz) gets its end effector from forward kinematics when a robot description is
given (sim.robot_model), else phases and cues read the gripper and the joints alone (`left_out` says what is lost).
Grippers of named and mapped layouts are scaled to 0..1 (closed..open) by the dataset's own range, joints to a
fraction of the widest joint's range: thresholds then mean the same for degrees, radians and lerobot's -100..100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.kinematics import Kinematics
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
    manipulated object's and the goal's xyz (MetaWorld's 39-d, our LIBERO 23-d); fk: forward kinematics of the joints,
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

    @property
    def env_object(self) -> bool:
        return bool(self.env_obj)

    @property
    def has_ee(self) -> bool:
        return bool(self.ee) or self.fk is not None

    def decode(self, state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
               contact: np.ndarray | None = None) -> Kinematics:
        """state (T, S), env (T, S_env) or None, success (T,) or None, contact (T,) bool or None -> Kinematics."""
        state = np.asarray(state, np.float64)
        ee = state[:, list(self.ee)] if self.ee else None
        if ee is None and self.fk is not None:
            ee = self.fk.positions(state[:, list(self.joints)])
        joints = None
        if self.joints:
            lo, hi = (np.asarray(x, np.float64)[list(self.joints)] for x in (self.lo, self.hi))
            # one scale for all joints (they share units): a joint that barely moves keeps its noise small
            joints = (state[:, list(self.joints)] - lo) / max(float((hi - lo).max()), 1e-9)
        obj = goal = None
        if self.env_object and env is not None:
            env = np.asarray(env, np.float64)
            obj, goal = env[:, list(self.env_obj)], env[:, list(self.env_goal)]
        return Kinematics(gripper=self._opening(state), fps=fps, ee=ee, obj=obj, goal=goal, success=success,
                          contact=None if contact is None else np.asarray(contact, bool), joints=joints,
                          joint_names=self.joint_names)

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


# ---------------------------------------------------------------- resolution
def _builtin(dim: int, env_dim: int | None) -> StateLayout | None:
    if dim == 4 and env_dim == 39:
        return StateLayout("metaworld", ee=(0, 1, 2), gripper=(3,), env_obj=(4, 5, 6), env_goal=(36, 37, 38))
    if dim == 8:  # Panda: 2 x 0.04 m fingers; our LIBERO collections add the target and its destination
        obj, goal = ((9, 10, 11), (16, 17, 18)) if env_dim == 23 else ((), ())
        return StateLayout("libero", ee=(0, 1, 2), gripper=(6, 7), gripper_span=0.08, env_obj=obj, env_goal=goal)
    return None


def resolve_layout(dim: int, env_dim: int | None = None, names: list[str] | None = None,
                   lo: np.ndarray | None = None, hi: np.ndarray | None = None, state_map: str = "",
                   robot_model: str = "", ee_frame: str = "", joint_units: str = "deg") -> StateLayout:
    """The layout of a dataset whose observation.state has `dim` values (see the module doc for the order).

    names: the state feature's names; lo, hi: (dim,) its range in the data (scales grippers and joints)."""
    if state_map:
        layout = StateLayout("state-map", **parse_state_map(state_map, dim))
    else:
        layout = _builtin(dim, env_dim)
        if layout is None and names is not None and len(names) == dim:
            layout = StateLayout("names", **name_roles(names))
    if layout is None or not layout.gripper:
        what = (f"no gripper among the names {names}" if layout is not None else
                f"unknown state layout of {dim} values" + (f" (names {names})" if names else " without names"))
        raise DatasetError(f"{what}: name the roles with --state-map (e.g. ee=0:3,gripper=6 or joints=0:5,gripper=5), "
                           "or use --phases vlm --directions vlm", field=OBS_STATE)
    if layout.name in ("state-map", "names"):
        if lo is None or hi is None:
            raise DatasetError("the state's range is needed to scale the gripper and joints", field=OBS_STATE)
        joint_names = tuple(names[i] if names and len(names) == dim else f"joint {i}" for i in layout.joints)
        layout = replace(layout, lo=tuple(map(float, lo)), hi=tuple(map(float, hi)), joint_names=joint_names)
    if robot_model:
        if layout.ee:
            raise ConfigError("--robot-model computes the end effector from joints, but this state already has one "
                              f"({format_state_map(layout)})", field="robot_model")
        if not layout.joints:
            raise ConfigError("--robot-model needs the state's joints: name them with --state-map joints=A:B",
                              field="robot_model")
        if not ee_frame:
            raise ConfigError("--robot-model needs --ee-frame, the site or body of the end effector", field="ee_frame")
        layout = replace(layout, fk=ForwardKinematics(robot_model, ee_frame, layout.joint_names, joint_units))
    return layout


def kinematics(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float,
               contact: np.ndarray | None = None) -> Kinematics:
    """A simulator's own rollout (MetaWorld, LIBERO) -> Kinematics, by the built-in layout of its shape."""
    state = np.asarray(state, np.float64)
    layout = _builtin(state.shape[1], None if env is None else np.shape(env)[1])
    if layout is None:
        raise DatasetError(f"unknown state layout of {state.shape[1]} values", field=OBS_STATE)
    return layout.decode(state, env, success, fps, contact)
