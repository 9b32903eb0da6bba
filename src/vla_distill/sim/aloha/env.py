"""ALOHA bimanual in simulation: gym-aloha 0.1.5's joint-space scenes (two ViperX 300 arms, transfer cube and
insertion), stepped by MuJoCo directly.

gym-aloha's own env renders three 480x640 cameras on every step (~3 steps/s on a CPU core) and seeds nothing unless
asked; lerobot evaluates it for 400 steps at 50 Hz, success = the task's top reward (4). Ours loads the package's
MJCF, applies its action convention and reward, and renders only the cameras asked (the top one by default; each
gripper's wrist camera on request), only when an observation's image is read, at the size asked, without shadows or
multisampling. The physics is the package's: dm_control's Environment runs the same model with 10 MuJoCo steps per
20 ms control step (tests compare the two).

Shapes:
  observation.state              (14,) lerobot's aloha layout: per arm 6 joint angles + the gripper, 0 shut .. 1 open
  action                         (14,) the same layout, absolute joint targets (the position actuators' setpoints)
  observation.environment_state  (30,) ENV_STATE_NAMES: the state, each object's pose, each gripper's contact
  observation.contact            (2,) each gripper touches an object
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from pathlib import Path

import numpy as np

from vla_distill.errors import ConfigError
from vla_distill.sim.base import LazyObservation, SimulatorUnavailable
from vla_distill.types import OBS_CONTACT, OBS_ENV_STATE, OBS_STATE, camera_key

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: headless rendering

TASKS = ("transfer_cube", "insertion")
INSTRUCTIONS = {  # lerobot's aloha_sim datasets' task strings
    "transfer_cube": "Pick up the cube with the right arm and transfer it to the left arm.",
    "insertion": "Insert the peg into the socket.",
}
SCENES = {"transfer_cube": "bimanual_viperx_transfer_cube.xml", "insertion": "bimanual_viperx_insertion.xml"}
FPS = 50
MAX_STEPS = 400  # lerobot's episode length for both tasks
TOP_REWARD = 4
# the top view (lerobot's aloha_sim layout: all it records) and a camera on each gripper (the real ALOHA's
# cam_left_wrist / cam_right_wrist): at 128 px the top view shows the 4 cm cube as 4 pixels, the grasping wrist as a
# third of its frame
CAMERAS = ("top", "left_wrist", "right_wrist")
RESOLUTION = 128  # square, as every camera here; the 4:3 view's sides (beyond the table) are what it loses
EVAL_SEED_BASE = 2**31  # evaluation seeds from here up, collection's below: the same placement sampler, apart

ARMS = ("left", "right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
MOTORS = tuple(f"{arm}_{j}" for arm in ARMS for j in (*ARM_JOINTS, "gripper"))  # lerobot's aloha motor names
# gym-aloha 0.1.5's constants (gym_aloha/constants.py): the home pose, finger travel for gripper 0 .. 1
START_ARM_POSE = np.array([0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239] * 2)
FINGER_SHUT, FINGER_OPEN = 0.01844, 0.05800
OBJECTS = {"transfer_cube": ("box",), "insertion": ("peg", "socket")}
# the objects' geoms, named as the package's reward reads them
OBJECT_GEOMS = {"box": ("red_box",), "peg": ("red_peg",), "socket": ("socket-1", "socket-2", "socket-3", "socket-4"),
                "pin": ("pin",)}
ENV_STATE_NAMES = (*MOTORS,
                   *(f"object{i}_{c}" for i in (0, 1) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")),
                   "left_contact", "right_contact")
STATE_DIM, OBJECT0, OBJECT1, CONTACT = len(MOTORS), len(MOTORS), len(MOTORS) + 7, len(MOTORS) + 14


class AlohaUnavailable(SimulatorUnavailable):
    pass


def unavailable() -> str | None:
    if importlib.util.find_spec("gym_aloha") is None or importlib.util.find_spec("mujoco") is None:
        return "ALOHA needs the [aloha] extra: pip install -e '.[aloha]' (or make aloha)"
    return None


def assets_dir() -> Path:
    """gym-aloha's scene files, found without importing the package (its __init__ builds dm_control envs)."""
    return Path(importlib.util.find_spec("gym_aloha").submodule_search_locations[0]) / "assets"


def finger_of(gripper: float | np.ndarray) -> np.ndarray:
    """Normalized gripper (0 shut .. 1 open) -> the finger joint's position, as the package maps it."""
    return np.asarray(gripper) * (FINGER_OPEN - FINGER_SHUT) + FINGER_SHUT


def gripper_of(finger: float | np.ndarray) -> np.ndarray:
    return (np.asarray(finger) - FINGER_SHUT) / (FINGER_OPEN - FINGER_SHUT)


def sample_poses(task: str, seed: int) -> np.ndarray:
    """(7 * objects,) the objects' initial poses for `seed`: the package's own ranges and draw order (utils.py), so a
    seed places them as gym-aloha's reset(seed=...) does."""
    rng = np.random.RandomState(seed)
    ranges = {"transfer_cube": [((0.0, 0.2), (0.4, 0.6))], "insertion": [((0.1, 0.2), (0.4, 0.6)),
                                                                           ((-0.2, -0.1), (0.4, 0.6))]}[task]
    poses = []
    for (x, y) in ranges:
        xyz = rng.uniform(np.array([x[0], y[0], 0.05]), np.array([x[1], y[1], 0.05]))
        poses.append(np.concatenate([xyz, [1.0, 0.0, 0.0, 0.0]]))
    return np.concatenate(poses)


def load_model(task: str):
    import mujoco

    if task not in SCENES:
        raise ConfigError(f"unknown ALOHA task {task!r}; tasks: {', '.join(TASKS)}", field="tasks")
    return mujoco.MjModel.from_xml_path(str(assets_dir() / SCENES[task]))


class AlohaEnv:
    """One ALOHA task (sim.base.Env)."""

    def __init__(self, task: str, image_keys: tuple[str, ...] = (camera_key("top"),),
                 size: tuple[int, int] = (RESOLUTION, RESOLUTION)):
        why = unavailable()
        if why:
            raise AlohaUnavailable(why)
        import mujoco

        self.task, self.image_keys, self.size = task, tuple(image_keys), size
        unknown = [k for k in self.image_keys if k.rsplit(".", 1)[-1] not in CAMERAS]
        if unknown:
            raise ConfigError(f"ALOHA renders {', '.join(map(camera_key, CAMERAS))}; not {unknown[0]}", field="cameras")
        self.model = load_model(task)
        self.data = mujoco.MjData(self.model)
        self.substeps = round(1 / FPS / self.model.opt.timestep)
        self.instruction, self.max_steps = INSTRUCTIONS[task], MAX_STEPS
        self.tick, self.diverged = 0, False  # diverged: MuJoCo reset the scene mid-episode, which then fails
        self._diverged_warnings = [int(getattr(mujoco.mjtWarning, f"mjWARN_BAD{q}")) for q in ("QPOS", "QVEL", "QACC")]
        self._object_qpos = [self.model.jnt_qposadr[self.model.body(b).jntadr[0]] for b in OBJECTS[task]]
        self._grippers = {arm: _gripper_geoms(self.model, arm) for arm in ARMS}
        self._objects = {g for name in (*OBJECTS[task], "pin") for g in _geoms(self.model, OBJECT_GEOMS[name])}
        self._reward_geoms = _reward_geoms(self.model)
        self._renderer = self._make_renderer() if self.image_keys else None

    def _make_renderer(self):
        import mujoco

        self.model.vis.quality.shadowsize = 0  # before the context exists: shadows and multisampling cost most
        self.model.vis.quality.offsamples = 0
        renderer = mujoco.Renderer(self.model, *self.size)
        self._close_renderer = weakref.finalize(self, renderer.close)
        return renderer

    def _render(self, key: str) -> np.ndarray:
        import mujoco

        r = self._renderer
        r.update_scene(self.data, camera=key.rsplit(".", 1)[-1])
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return r.render().copy()

    def reset(self, seed: int) -> LazyObservation:
        import mujoco

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:16] = START_ARM_POSE
        d.ctrl[:] = START_ARM_POSE
        poses = sample_poses(self.task, seed)
        for i, adr in enumerate(self._object_qpos):
            d.qpos[adr:adr + 7] = poses[7 * i:7 * i + 7]
        mujoco.mj_forward(m, d)
        self.tick, self.diverged = 0, False  # mj_resetData clears the warning counters too
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[LazyObservation, float, bool]:
        import mujoco

        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (len(MOTORS),):
            raise ConfigError(f"an ALOHA action has {len(MOTORS)} values, got {a.shape}", field="action")
        ctrl = []
        for arm in range(2):
            joints, finger = a[7 * arm:7 * arm + 6], float(finger_of(a[7 * arm + 6]))
            ctrl += [*joints, finger, -finger]
        self.data.ctrl[:] = ctrl  # MuJoCo clamps to each actuator's ctrlrange, as dm_control does
        mujoco.mj_step(self.model, self.data, self.substeps)
        self.tick += 1
        # MuJoCo resets a diverged simulation to the model's default pose and goes on (only a warning counts it): the
        # objects reappear at rest, where a policy could then "succeed" on a scene that was never the episode's
        self.diverged = self.diverged or any(self.data.warning[w].number for w in self._diverged_warnings)
        reward = 0 if self.diverged else self.reward()
        return self._observe(), float(reward), reward == TOP_REWARD

    def reward(self) -> int:
        """The package's staged reward (tasks/sim.py) from the contact pairs now."""
        d, g = self.data, self._reward_geoms
        pairs = {frozenset((int(c.geom1), int(c.geom2))) for c in d.contact[: d.ncon]}

        def touch(a, b) -> bool:
            return any(frozenset((x, y)) in pairs for x in a for y in b)

        if self.task == "transfer_cube":
            right, left, table = touch(g["red_box"], g["right_finger"]), touch(g["red_box"], g["left_finger"]), \
                touch(g["red_box"], g["table"])
            return 4 if left and not table else 3 if left else 2 if right and not table else 1 if right else 0
        right, left = touch(g["red_peg"], g["right_finger"]), touch(g["socket"], g["left_finger"])
        on_table = touch(g["red_peg"], g["table"]) or touch(g["socket"], g["table"])
        if touch(g["red_peg"], g["pin"]):
            return 4
        if touch(g["red_peg"], g["socket"]) and not on_table:
            return 3
        return 2 if left and right and not on_table else 1 if left and right else 0

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(14,) the arm joints' ranges and the gripper's 0 .. 1."""
        lo, hi = [], []
        for arm in ARMS:
            for j in ARM_JOINTS:
                r = self.model.jnt_range[self.model.joint(f"vx300s_{arm}/{j}").id]
                lo.append(r[0])
                hi.append(r[1])
            lo.append(0.0)
            hi.append(1.0)
        return np.array(lo, np.float32), np.array(hi, np.float32)

    @property
    def state(self) -> np.ndarray:
        """(14,) observation.state: the arm joints and the normalized gripper (the left finger's position)."""
        q = self.data.qpos
        return np.concatenate([q[0:6], [gripper_of(q[6])], q[8:14], [gripper_of(q[14])]])

    @property
    def contacts(self) -> np.ndarray:
        """(2,) left and right gripper touch an object."""
        d = self.data
        touching = set()
        for c in d.contact[: d.ncon]:
            for a, b in ((c.geom1, c.geom2), (c.geom2, c.geom1)):
                if b in self._objects:
                    touching.update(arm for arm in ARMS if a in self._grippers[arm])
        return np.array([float(arm in touching) for arm in ARMS])

    @property
    def env_state(self) -> np.ndarray:
        """(30,) float64, ENV_STATE_NAMES."""
        objects = np.zeros(14)
        for i, adr in enumerate(self._object_qpos):
            objects[7 * i:7 * i + 7] = self.data.qpos[adr:adr + 7]
        return np.concatenate([self.state, objects, self.contacts])

    def close(self) -> None:
        if self._renderer is not None:
            self._close_renderer()

    def _observe(self) -> LazyObservation:
        es = self.env_state
        values = {OBS_STATE: es[:STATE_DIM].astype(np.float32), OBS_ENV_STATE: es.astype(np.float32),
                  OBS_CONTACT: es[CONTACT:].astype(np.float32)}
        return LazyObservation(values, self._render, self.image_keys, self, self.tick)


def _geoms(model, names) -> set[int]:
    return {model.geom(n).id for n in names if _has_geom(model, n)}


def _has_geom(model, name: str) -> bool:
    try:
        model.geom(name)
        return True
    except KeyError:
        return False


def _gripper_geoms(model, arm: str) -> set[int]:
    return _geoms(model, (f"vx300s_{arm}/10_left_gripper_finger", f"vx300s_{arm}/10_right_gripper_finger"))


def _reward_geoms(model) -> dict[str, set[int]]:
    """The geoms the package's reward names: one finger per arm counts as its gripper there (the left arm's left
    finger, the right arm's right finger). Its pairs are ordered (geom1, geom2); MuJoCo orders a pair by geom type,
    and every pair it names has the object first either way, so an unordered match is the same test."""
    return {"red_box": _geoms(model, ["red_box"]), "red_peg": _geoms(model, ["red_peg"]),
            "socket": _geoms(model, OBJECT_GEOMS["socket"]), "pin": _geoms(model, ["pin"]),
            "table": _geoms(model, ["table"]),
            "left_finger": _geoms(model, ["vx300s_left/10_left_gripper_finger"]),
            "right_finger": _geoms(model, ["vx300s_right/10_right_gripper_finger"])}
