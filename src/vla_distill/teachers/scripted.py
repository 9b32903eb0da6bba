"""`scripted`: the MetaWorld expert of each episode's task, fed the stored 39-d observation."""

from __future__ import annotations

import warnings

import numpy as np

from vla_distill.errors import DatasetError
from vla_distill.sim.metaworld import expert_action, expert_policy
from vla_distill.sim.metaworld_tasks import INSTRUCTIONS
from vla_distill.teachers.base import EpisodeFrames, OnResult
from vla_distill.types import OBS_ENV_STATE

_TASK_OF_INSTRUCTION = {v: k for k, v in INSTRUCTIONS.items()}


class ScriptedTeacher:
    spec = "scripted"
    needs_images = False
    horizon = 1
    action_dim = 4

    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        task = episode.task_name or _TASK_OF_INSTRUCTION.get(episode.task)
        if task is None:
            raise DatasetError(f"episode {episode.episode_index}: no MetaWorld task name in the episode metadata "
                               f"and {episode.task!r} is not a known instruction", field="task_name")
        if episode.env_state is None or episode.env_state.shape[1] != 39:
            raise DatasetError("the scripted teacher needs the 39-d MetaWorld observation", field=OBS_ENV_STATE)
        policy = expert_policy(task)
        out = np.empty((len(rows), 1, 4), np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # metaworld warns that some experts' gains saturate; expected
            for i, r in enumerate(rows):
                out[i, 0] = expert_action(policy, episode.env_state[r])
                if on_result is not None:
                    on_result(i, out[i])
        return out

    def provenance(self) -> dict:
        from importlib.metadata import version

        return {"kind": "scripted", "source": f"metaworld {version('metaworld')} scripted experts"}

    def close(self) -> None:
        pass
