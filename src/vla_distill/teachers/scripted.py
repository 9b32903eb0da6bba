"""`scripted`: the simulator's scripted expert of each episode's task (sim.base.Expert), fed the episode's stored
privileged state (observation.environment_state). The task is the episode's recorded task_name, or the one whose
instruction the episode carries. Option horizon=K (--teacher-opt): K-step chunks, each the expert's own plan from the
frame's state (an expert with `plan`, LIBERO's): a DAgger round's labels then say what the expert would do over the
student's chunk, not what it answers at each state the student's chunk reached."""

from __future__ import annotations

import numpy as np

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.registry import simulator_of
from vla_distill.teachers.base import EpisodeFrames, OnResult
from vla_distill.types import OBS_ENV_STATE


class ScriptedTeacher:
    spec = "scripted"
    needs_images = False
    action_dim = 0  # the simulator's; known after the first episode

    def __init__(self, horizon: int = 1):
        self.sources: set[str] = set()
        self.horizon = horizon

    def label(self, episode: EpisodeFrames, rows: np.ndarray, on_result: OnResult | None = None) -> np.ndarray:
        sim, task = _task_of(episode)
        if episode.env_state is None:
            raise DatasetError("the scripted teacher needs the simulator's privileged state", field=OBS_ENV_STATE)
        expert = sim.expert(task)
        if self.horizon > 1 and not hasattr(expert, "plan"):
            raise ConfigError(f"{task}: its scripted expert answers single actions, not {self.horizon}-step chunks "
                              "(drop --teacher-opt horizon)", field="horizon")
        self.sources.add(sim.expert_source())
        out = []
        for i, r in enumerate(rows):
            s = episode.env_state[r]
            out.append(expert(s)[None] if self.horizon == 1 else expert.plan(s, self.horizon))  # (K, D)
            if on_result is not None:
                on_result(i, out[-1])
        if out:
            self.action_dim = out[0].shape[1]
        return np.stack(out) if out else np.zeros((0, self.horizon, self.action_dim), np.float32)

    def provenance(self) -> dict:
        return {"kind": "scripted", "horizon": self.horizon,
                "source": "; ".join(sorted(self.sources)) or "the simulators' scripted experts"}

    def close(self) -> None:
        pass


def scripted_options(options: dict[str, str]) -> dict:
    """`--teacher-opt` pairs of the scripted teacher: horizon=K (an int >= 1); any other is a one-line error."""
    unknown = sorted(set(options) - {"horizon"})
    if unknown:
        raise ConfigError("unknown option of the scripted teacher (known: horizon)", field=unknown[0])
    if "horizon" not in options:
        return {}
    try:
        horizon = int(options["horizon"])
    except ValueError:
        horizon = 0
    if horizon < 1:
        raise ConfigError(f"must be an integer >= 1, got {options['horizon']!r}", field="horizon")
    return {"horizon": horizon}


def _task_of(episode: EpisodeFrames):
    """(simulator, task) of an episode: its recorded task_name, else the task whose instruction it carries."""
    sim = simulator_of(episode.task_name, episode.task)
    if sim is not None and episode.task_name and sim.has_task(episode.task_name):
        return sim, episode.task_name
    task = sim.task_of(episode.task) if sim is not None else None
    if task is None:
        raise DatasetError(f"episode {episode.episode_index}: no simulator task name in the episode metadata and "
                           f"{episode.task!r} is not a known instruction", field="task_name")
    return sim, task
