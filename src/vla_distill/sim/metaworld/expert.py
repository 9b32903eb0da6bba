"""MetaWorld's scripted experts: one per task, stateless, reading the 39-d simulator observation (what collection
records as observation.environment_state), so they answer from any state: collection, DART, DAgger relabelling and
the closed-loop teacher all ask them the same way."""

from __future__ import annotations

import warnings

import numpy as np

from vla_distill.errors import DatasetError
from vla_distill.types import OBS_ENV_STATE

ENV_STATE_DIM = 39


def expert_policy(task: str):
    """metaworld's scripted expert for a task: `get_action(obs39) -> (4,)`."""
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


def expert_action(expert, obs39: np.ndarray) -> np.ndarray:
    """The expert's (4,) float32 action, clipped to the action space: the experts' gains exceed it on purpose."""
    return np.clip(expert.get_action(np.asarray(obs39, np.float64)), -1.0, 1.0).astype(np.float32)


class MetaWorldExpert:
    """sim.base.Expert: env_state (39,) -> action (4,)."""

    def __init__(self, task: str):
        self.task, self.policy = task, expert_policy(task)

    def __call__(self, env_state: np.ndarray) -> np.ndarray:
        if np.shape(env_state) != (ENV_STATE_DIM,):
            raise DatasetError(f"the scripted teacher needs the {ENV_STATE_DIM}-d MetaWorld observation, got shape "
                               f"{list(np.shape(env_state))}", field=OBS_ENV_STATE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some experts' gains saturate; expert_action clips
            return expert_action(self.policy, env_state)
