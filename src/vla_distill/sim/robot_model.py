"""Forward kinematics from a robot description: end-effector positions of a joint-space arm (SO-100/SO-101, Koch,
ALOHA), so its dataset gets the same phases, cues and audit as one that records the hand's pose.

MuJoCo reads the description, MJCF or URDF. Only the kinematic tree matters here: a URDF's meshes are dropped
before loading (MuJoCo would otherwise look for them under stripped file names), an MJCF's are loaded as written.

Units of the dataset's joint values (JOINT_UNITS):
  deg   degrees, zero where the model's zero is (lerobot's `use_degrees=True`)
  rad   radians, likewise
  m100  lerobot's default motor normalization: -100..100 over each joint's calibrated range, taken to be the
        model's joint range (a "new calibration" SO-101 model has its zero at the middle of that range)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from vla_distill.errors import ConfigError

JOINT_UNITS = ("deg", "rad", "m100")


def joint_key(name: str) -> str:
    """A dataset or model joint name -> the key both are matched on: 'shoulder_pan.pos' -> 'shoulder_pan'."""
    n = name.strip().lower()
    for suffix in (".pos", "_pos", ".position", "_position", "_joint"):
        n = n.removesuffix(suffix)
    return n.replace(" ", "_").replace(".", "_")


def _load(path: Path):
    import mujoco

    if not path.is_file():
        raise ConfigError("no such robot description", path=path)
    try:
        if path.suffix.lower() == ".urdf":
            root = ET.parse(path).getroot()
            for link in root.iter("link"):
                for geom in link.findall("visual") + link.findall("collision"):
                    link.remove(geom)
            # keep links hung on fixed joints (a URDF's tool frame is one): MuJoCo fuses them away by default
            ET.SubElement(ET.SubElement(root, "mujoco"), "compiler", fusestatic="false", discardvisual="true")
            return mujoco.MjModel.from_xml_string(ET.tostring(root, encoding="unicode"))
        return mujoco.MjModel.from_xml_path(str(path))
    except (ValueError, ET.ParseError) as e:
        raise ConfigError(f"MuJoCo cannot read it: {mujoco_error(e)}", path=path) from e


def _arm_joint(key: str, model_joints: dict[str, int]) -> int | None:
    """A multi-arm robot's joint by its arm and name: the dataset's 'left_waist' is the model's 'vx300s_left/waist'
    (the one joint whose name ends in the joint and whose prefix holds the arm word); None if not exactly one."""
    arm, _, rest = key.partition("_")
    if not rest:
        return None
    hits = [j for k, j in model_joints.items()
            if re.search(rf"(^|[/_]){re.escape(rest)}$", k) and re.search(rf"(^|[/_]){re.escape(arm)}([/_]|$)",
                                                                           k[: -len(rest)])]
    return hits[0] if len(hits) == 1 else None


def mujoco_error(e: Exception) -> str:
    """MuJoCo's multi-line message as one line: "XML parse error 6:" says nothing until the lines after it."""
    return " ".join(" ".join(line.split()) for line in str(e).splitlines() if line.strip()) or type(e).__name__


class ForwardKinematics:
    """(T, J) dataset joint values -> (T, 3) position of one frame of the robot (a site or a body).

    joint_names: the dataset's names for the J columns it passes, matched to the model's joints by joint_key; model
    joints the dataset does not name stay at zero (they must not move the frame: a gripper's jaw, say)."""

    def __init__(self, path: str | Path, frame: str, joint_names: tuple[str, ...], units: str = "deg"):
        import mujoco

        if units not in JOINT_UNITS:
            raise ConfigError(f"{units!r} is not one of {JOINT_UNITS}", field="joint_units")
        self.path, self.frame, self.units = Path(path), frame, units
        self.model = _load(self.path)
        self.data = mujoco.MjData(self.model)
        model_joints = {joint_key(self.model.joint(j).name): j for j in range(self.model.njnt)}
        self.columns, self.qpos, ranges = [], [], []
        for c, name in enumerate(joint_names):
            j = model_joints.get(joint_key(name), _arm_joint(joint_key(name), model_joints))
            if j is None:
                continue
            if self.model.jnt_type[j] not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
                raise ConfigError(f"joint {name!r} of the robot model is not a hinge or slide joint", path=self.path)
            self.columns.append(c)
            self.qpos.append(int(self.model.jnt_qposadr[j]))
            ranges.append(self.model.jnt_range[j] if self.model.jnt_limited[j] else (np.nan, np.nan))
        if not self.columns:
            raise ConfigError(f"none of the dataset's joints {list(joint_names)} is a joint of the robot model "
                              f"({sorted(model_joints)})", path=self.path)
        self.ranges = np.array(ranges, np.float64)
        if units == "m100" and np.isnan(self.ranges).any():
            raise ConfigError("--joint-units m100 needs every mapped joint to have a range in the robot model",
                              path=self.path)
        self._site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, frame)
        self._body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, frame)
        if self._site < 0 and self._body < 0:
            sites = [self.model.site(i).name for i in range(self.model.nsite)]
            bodies = [self.model.body(i).name for i in range(self.model.nbody)]
            raise ConfigError(f"no site or body {frame!r} in the robot model (sites {sites}, bodies {bodies})",
                              field="ee_frame", path=self.path)

    @property
    def mapped(self) -> list[str]:
        return [self.model.joint(j).name for j in range(self.model.njnt) if int(self.model.jnt_qposadr[j]) in self.qpos]

    def to_model(self, values: np.ndarray) -> np.ndarray:
        """(T, J) dataset joint values -> (T, len(mapped)) model joint positions (radians / metres)."""
        v = np.asarray(values, np.float64)[:, self.columns]
        if self.units == "deg":
            return np.deg2rad(v)
        if self.units == "m100":
            lo, hi = self.ranges[:, 0], self.ranges[:, 1]
            return lo + (v + 100.0) / 200.0 * (hi - lo)
        return v

    def positions(self, values: np.ndarray) -> np.ndarray:
        """(T, J) dataset joint values -> (T, 3) world position of the frame."""
        import mujoco

        q = self.to_model(values)
        out = np.empty((len(q), 3), np.float64)
        for t in range(len(q)):
            self.data.qpos[:] = self.model.qpos0
            self.data.qpos[self.qpos] = q[t]
            mujoco.mj_kinematics(self.model, self.data)
            out[t] = self.data.site_xpos[self._site] if self._site >= 0 else self.data.xpos[self._body]
        return out

    def describe(self) -> dict:
        return {"robot_model": str(self.path), "ee_frame": self.frame, "joint_units": self.units, "joints": self.mapped}
