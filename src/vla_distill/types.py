"""Key names and shapes shared by every stage.

Glossary (paper symbol -> variable name -> shape):
  o_t  image observation  -> batch["observation.images.<cam>"]  (B, T_obs, 3, H, W) float32 in [0, 1]
  s_t  proprioception     -> batch["observation.state"]         (B, T_obs, D_s)  (MetaWorld: hand xyz + gripper, D_s=4)
  e_t  simulator state    -> batch["observation.environment_state"] (B, T_obs, 39); audits only, never a student input
  a_t  action             -> batch["action"]                    (B, H, D_a)      (MetaWorld: xyz delta + gripper, D_a=4)
  l    instruction        -> batch["task"]                      list[str] of length B
On disk (LeRobotDataset v3.0) images are HWC uint8; the training view converts them to CHW float.
"""

from __future__ import annotations

OBS_PREFIX = "observation."
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGES = "observation.images"
ACTION = "action"
TASK = "task"
REWARD = "next.reward"
SUCCESS = "next.success"
DONE = "next.done"
PAD_SUFFIX = "_is_pad"

# Columns every LeRobot dataset carries, in lerobot's order.
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def camera_key(name: str) -> str:
    return f"{OBS_IMAGES}.{name}"
