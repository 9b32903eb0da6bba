"""MetaWorld v3 environment: one task per environment, seeded object/goal placement, rendered cameras.

Observation dict (one step):
  "observation.images.<cam>"      (H, W, 3) uint8     cameras from sim.base.CameraConfig (corner2 rotated 180 degrees)
  "observation.state"             (4,) float32        hand xyz + gripper opening (proprioception only)
  "observation.environment_state" (39,) float32       the full MetaWorld observation (objects, goal)
  "observation.contact"           (1,) float32        1.0 while the gripper touches a movable body other than the
                                                      robot (what the phase ground truth and the audit read)
Action: (4,) float32 in [-1, 1], xyz end-effector delta + gripper effort.
"""

from __future__ import annotations

import gc
import os
import weakref

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from vla_distill.errors import ConfigError  # noqa: E402
from vla_distill.sim.base import CameraConfig  # noqa: E402
from vla_distill.sim.metaworld.tasks import CAMERAS, DEFAULT_CAMERAS, INSTRUCTIONS, MAX_STEPS  # noqa: E402
from vla_distill.sim.render import render_view  # noqa: E402
from vla_distill.types import OBS_CONTACT, OBS_ENV_STATE, OBS_STATE, camera_key  # noqa: E402

# lerobot moves corner2 closer to the table (envs/metaworld.py); small targets need the pixels.
CORNER2_POS = (0.75, 0.075, 0.7)
# The corner cameras' frames come out upside down: rotate 180 degrees.
_FLIPPED = {"corner", "corner2", "corner3", "corner4"}
# The Sawyer's gripper: the bodies whose touch counts as contact (the arm's links brushing a door do not).
GRIPPER_BODIES = ("right_hand", "hand", "rightclaw", "leftclaw", "rightpad", "leftpad")


class MetaWorldEnv:
    """A MetaWorld task with our rendering. `reset(seed)` draws the object/goal placement from the seed."""

    def __init__(self, task: str, cameras: CameraConfig = CameraConfig(DEFAULT_CAMERAS)):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ConfigError(f"unknown MetaWorld task '{task}'", field="task")
        for n in cameras.names:
            if n not in CAMERAS:
                raise ConfigError(f"unknown camera '{n}'; valid: {', '.join(CAMERAS)}", field="cameras")
        self.task = task
        self.instruction = INSTRUCTIONS[task]
        self.cameras = cameras
        env = ALL_V3_ENVIRONMENTS[task]()
        # As metaworld's MT benchmarks do: goal visible in the 39-d observation; placement drawn per reset
        # from the env's seeded generator (lerobot HEAD's seeded_rand_vec) instead of 50 frozen variations.
        env._partially_observable = False
        del env.sawyer_observation_space
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        self.env = env
        self.max_steps = min(MAX_STEPS, env.max_path_length)
        model = env.model
        model.vis.quality.shadowsize = 0  # shadows are most of the render cost on a CPU renderer
        model.vis.quality.offsamples = 0
        cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        model.cam_pos[cid] = CORNER2_POS
        self._renderer = mujoco.Renderer(model, cameras.height, cameras.width)
        self._camera_ids = {n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for n, c in CAMERAS.items()}
        # Close the GL context at interpreter exit at the latest, while EGL is still loaded.
        self._close_renderer = weakref.finalize(self, self._renderer.close)
        self._gripper, self._movable = contact_bodies(model)
        self._obs: np.ndarray | None = None

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self.env.seed(seed)
        obs, _ = self.env.reset()
        # MetaWorld's reset sets qpos without recomputing what the renderer and contacts read (body and site poses):
        # without this the first frame showed a stale scene (a drawer where the last episode left it) and varied with
        # the env's history. It changes no physics: mj_step recomputes the same quantities from the same state.
        mujoco.mj_forward(self.env.model, self.env.data)
        self._obs = obs
        return self._observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool]:
        obs, reward, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        self._obs = obs
        return self._observation(), float(reward), bool(info["success"])

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(4,) low and high of the action space (xyz delta and gripper)."""
        space = self.env.action_space
        return np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)

    @property
    def env_state(self) -> np.ndarray:
        """(39,) float64: the MetaWorld observation the scripted experts read."""
        assert self._obs is not None, "reset() first"
        return self._obs

    def render(self, name: str) -> np.ndarray:
        # culled: the same pixels, and the gripper camera sees little of the arm behind it (its frame 40% cheaper)
        img = render_view(self._renderer, self.env.data, self._camera_ids[name])
        return img[::-1, ::-1].copy() if CAMERAS[name] in _FLIPPED else img

    def _observation(self) -> dict[str, np.ndarray]:
        obs = self._obs
        out = {camera_key(n): self.render(n) for n in self.cameras.names}
        out[OBS_STATE] = obs[:4].astype(np.float32)
        out[OBS_ENV_STATE] = obs.astype(np.float32)
        out[OBS_CONTACT] = np.array([self.in_contact()], np.float32)
        return out

    def in_contact(self) -> bool:
        """Whether a gripper body touches a movable body that is not the robot's, in the current state."""
        d = self.env.data
        if d.ncon == 0:
            return False
        bodies = self.env.model.geom_bodyid
        b1, b2 = bodies[d.contact.geom1[: d.ncon]], bodies[d.contact.geom2[: d.ncon]]
        return bool(((self._gripper[b1] & self._movable[b2]) | (self._gripper[b2] & self._movable[b1])).any())

    def close(self) -> None:
        # Free the GL context now: a renderer garbage-collected after a newer one exists blanks every later frame.
        self._close_renderer()
        self.env.close()
        gc.collect()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def contact_bodies(model) -> tuple[np.ndarray, np.ndarray]:
    """(nbody,) bool masks: the gripper's bodies, and the bodies that can move (a joint on their chain to the world)
    and are not the robot's. The table, walls and shelves are welded to the world; the objects, doors, buttons and
    levers the tasks manipulate all hang on a joint."""
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i) for i in range(model.nbody)]
    gripper = np.isin(names, GRIPPER_BODIES)
    root = np.arange(model.nbody)
    movable = model.body_dofnum > 0
    for b in range(1, model.nbody):  # parents come before children in MuJoCo's body order
        parent = model.body_parentid[b]
        root[b] = b if parent == 0 else root[parent]
        movable[b] |= parent > 0 and movable[parent]
    robot = root == root[names.index("right_hand")]
    movable &= ~robot
    movable[0] = False
    return gripper, movable
