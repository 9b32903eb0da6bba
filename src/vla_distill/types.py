"""The kernel's names: shape letters, dataset keys, annotation files, phase taxonomies, and the one image conversion.

Shape letters (used in every docstring and comment of the package):
  B  batch                          T  time steps: frames of an episode or window, steps of a rollout, ticks of a run
  K  action chunk length (a policy's `horizon`: actions per call)     D  action dimension
  S  state dimension (observation.state)                          S_env  environment state dimension (MetaWorld: 39)
  H, W  image height and width      C  image channels (3 RGB; 4 with a depth channel)      V  cameras (views)
  P  phases of a taxonomy           E  text-embedding dimension (all-MiniLM-L6-v2: 384)    Q  distinct cue texts
  T_tasks  distinct instructions    N  tokens (or rows of a list being described)
  d  a model's width                h  a VLM's hidden size       A  VITA action tokens      L  prompt tokens

Glossary (paper symbol -> key -> shape):
  o_t  image observation  -> "observation.images.<cam>"         on disk and live: (H, W, 3) uint8
                                                                 in a policy batch: (B, C, H, W) float32 in [0, 1]
                                                                 in a dataset window with deltas: (B, T, C, H, W)
  s_t  proprioception     -> "observation.state"                (B, S)       (MetaWorld: hand xyz + gripper, S=4)
  e_t  simulator state    -> "observation.environment_state"    (B, S_env)   audits and scripted teachers only,
                                                                               never a student input
  a_t  action chunk       -> "action"                           (B, K, D)    (MetaWorld: xyz delta + gripper, D=4)
  l    instruction        -> "task"                             list[str] of length B
A policy batch carries the current frame only; a dataset window (data.windows) adds a time axis T to every key
that declares frame offsets, and `<key>_is_pad` (B, T) marks the offsets that fell outside the episode.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- lerobot's keys
OBS_PREFIX = "observation."
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_CONTACT = "observation.contact"  # (1,) 1.0 while the gripper touches a movable object (simulators that know)
OBS_IMAGES = "observation.images"
ACTION = "action"
TASK = "task"
TASK_INDEX = "task_index"
EPISODE_INDEX = "episode_index"
REWARD = "next.reward"
SUCCESS = "next.success"
DONE = "next.done"
PAD_SUFFIX = "_is_pad"

# Columns every LeRobot dataset carries, in lerobot's order.
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}


def camera_key(name: str) -> str:
    return f"{OBS_IMAGES}.{name}"


def is_camera(key: str) -> bool:
    return key.startswith(OBS_IMAGES + ".")


OBS_IMAGE_FEATURES = "observation.image_features"


def feature_key(camera: str) -> str:
    """A camera's frozen-encoder features in a training batch (the trainer's feature cache), beside or instead of
    its pixels: observation.images.corner2 -> observation.image_features.corner2."""
    return OBS_IMAGE_FEATURES + camera[len(OBS_IMAGES):]


# ---------------------------------------------------------------- what `vla-distill annotate` adds to a dataset
TEACHER_ACTION = "action.teacher"  # (D,), or (K, D) for a teacher that answers with chunks
PHASE_INDEX = "phase_index"  # index into meta/phases.parquet; -1 = invalid or masked
DIRECTION_INDEX = "direction_index"  # index into meta/directions.parquet; -1 = no cue
PHASES_PATH = "meta/phases.parquet"
DIRECTIONS_PATH = "meta/directions.parquet"
WINDOWS_PATH = "meta/direction_windows.parquet"
TASK_EMBEDDINGS_PATH = "meta/task_embeddings.parquet"
ANNOTATION_PATH = "meta/annotation.json"
COLLECTION_PATH = "meta/collection.json"  # a collection's plan: its config (env, policy, ...) and per-task counts
AUDIT_PATH = "meta/audit.json"
AUDIT_REPORT_PATH = "meta/audit.md"

# Keys a training batch adds beside the dataset's columns.
DIRECTION_EMBEDDING = "direction_embedding"  # (B, E) text embedding of each frame's cue
TASK_EMBEDDING = "task_embedding"  # (B, E) instruction embedding: the exported graph's input
PROMPT_IDS = "prompt_ids"  # (B, L) int64 a VLM policy's instruction tokenized on the host: its exported graph's input
AUGMENT_KEY = "augment_key"  # (B,) int64 per-sample key that fixes its augmentation

# ---------------------------------------------------------------- phase taxonomies
PHASES_4 = ("approach", "grasp", "transport", "release")  # the seed's
PHASES_9 = ("idle", "approaching", "grasping", "transporting", "holding", "placing", "operating", "regrasping",
            "completed")
TAXONOMIES = {"4": PHASES_4, "9": PHASES_9}
TO_4 = {
    "idle": "approach", "approaching": "approach", "grasping": "grasp", "regrasping": "grasp",
    "transporting": "transport", "holding": "transport", "placing": "transport", "operating": "transport",
    "completed": "release",
}


def to_phase4(phases: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(T,) indices into the taxonomy `names` -> indices into PHASES_4; -1 and names outside both stay -1.
    Empty names: the indices are PHASES_4's already."""
    phases = np.asarray(phases, np.int64)
    if not names or tuple(names) == PHASES_4:
        return phases
    lut = np.array([PHASES_4.index(TO_4.get(n, n)) if TO_4.get(n, n) in PHASES_4 else -1 for n in names], np.int64)
    return np.where(phases >= 0, lut[np.clip(phases, 0, len(lut) - 1)], -1)


# ---------------------------------------------------------------- the one image conversion
def images_to_float(images: np.ndarray, device=None):
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 torch tensor in [0, 1]; moved to `device` while still uint8
    (a quarter of the bytes)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images))
    if device is not None:
        t = t.to(device)
    return t.movedim(-1, -3).float().div_(255.0)
