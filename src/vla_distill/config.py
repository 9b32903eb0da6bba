"""Frozen config dataclasses to and from their JSON form (config.json, train_config.json), and the named recipes:
a benchmark's student by name (`collect --recipe`, `train --recipe`)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass


def from_dict(cls: type, d: dict):
    """cls(**d) with JSON lists back to tuples and nested config dataclasses rebuilt; unknown keys raise TypeError."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in d.items():
        kind = hints.get(k)
        if isinstance(v, dict) and dataclasses.is_dataclass(kind):
            v = from_dict(kind, v)
        elif isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return cls(**out)


def to_dict(config) -> dict:
    """A config dataclass (nested ones included) as JSON-ready data: tuples become lists."""
    return _plain(dataclasses.asdict(config))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- named recipes
@dataclass(frozen=True)
class Recipe:
    """A benchmark's student by name: the settings of `collect` and `train` that reproduce it (CLI flags by field).
    Flags given on the command line override the recipe's."""

    summary: str
    collect: dict = dataclasses.field(default_factory=dict)  # CollectConfig and CameraConfig fields
    train: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields
    use: str = ""  # when it is the right choice, and when not


RECIPES: dict[str, Recipe] = {
    # BENCHMARKS.md, "Distillation quality": 97.2% on MT10 against the teacher's 98.6% (n = 500, paired)
    "mt10": Recipe(
        summary="tiny student on frozen ImageNet EfficientNet-Lite0 features with trained keypoints, action chunks "
                "of K = 5, an auxiliary head that predicts the privileged object and goal state in training only; "
                "two 128 px cameras (corner2, gripper), DART demonstrations (action noise 0.5)",
        collect={"names": ("corner2", "gripper"), "height": 128, "width": 128, "action_noise": 0.5},
        train={"preset": "tiny", "vision": "efficientnet-lite0", "horizon": 5, "batch_size": 64,
               "aux_state": "observation.environment_state", "steps": 20000, "save_every": 4000, "log_every": 50},
        use="with enough demonstrations (50 per task) and a DAgger round; with few (20 per task) the frozen "
            "encoder's head overfits: use the from-scratch default preset instead (BENCHMARKS.md, \"Ablations\")",
    ),
    # the MT10 recipe's student on LIBERO's two cameras (BENCHMARKS.md, "LIBERO"); DART noise is milder: an OSC delta
    # of 1.0 is 5 cm per step, and a bowl held by its wall slips out of a jerk. A DAgger round's rollout chunks count
    # their first step only: whole chunks of the expert's answers cost Spatial's round 8 points, the first step gained
    # 9.6 (paired, n = 500). Deployed, it replans every step (n_action_steps 1): the expert's drawer descent moves 2 cm
    # a frame, and a chunk of 5 run blind closed the gripper early; the kept students, paired on the standard
    # episodes: Spatial +7.4 (4.9 to 10.2), Goal +5.6 (1.8 to 9.4)
    "libero": Recipe(
        summary="the mt10 recipe's student on LIBERO's agent-view and wrist cameras at 128 px, DART demonstrations "
                "(action noise 0.3 on the end effector's xyz); on DAgger rollouts the loss counts each chunk's first "
                "step only; deployed, it executes the first action of each chunk and asks again",
        collect={"names": ("image", "image2"), "height": 128, "width": 128, "action_noise": 0.3},
        train={"preset": "tiny", "vision": "efficientnet-lite0", "horizon": 5, "batch_size": 64,
               "aux_state": "observation.environment_state", "steps": 20000, "save_every": 4000, "log_every": 50,
               "rollout_steps": 1, "n_action_steps": 1},
        use="LIBERO-Object, -Spatial and -Goal from the scripted expert's demonstrations (50 per task)",
    ),
    # the same student on ALOHA's top camera (BENCHMARKS.md, "ALOHA"): absolute joint targets at 50 Hz, so chunks of
    # K = 10 (0.2 s), and DART noise in radians on the arm joints only (the grippers stay the expert's): 0.005, as
    # 0.01 already breaks the insertion's millimetre fit (4 of 16 expert episodes; 0.006: 13 of 16, as noiseless);
    # joint targets relative to the state (delta actions): transfer cube 11 -> 34%, paired (BENCHMARKS.md)
    "aloha": Recipe(
        summary="the mt10 recipe's student on ALOHA's top camera at 128 px, chunks of K = 10 (0.2 s at 50 Hz), arm "
                "joint targets relative to the state (delta actions), DART demonstrations (0.005 rad on the twelve "
                "arm joints)",
        collect={"names": ("top",), "height": 128, "width": 128, "action_noise": 0.005},
        train={"preset": "tiny", "vision": "efficientnet-lite0", "horizon": 10, "batch_size": 64,
               "aux_state": "observation.environment_state", "steps": 20000, "save_every": 4000, "log_every": 50,
               "delta_actions": True},
        use="ALOHA transfer cube and insertion from the scripted bimanual expert's demonstrations (50 per task)",
    ),
}


def recipe(name: str) -> Recipe:
    """The named recipe; a ValueError with a did-you-mean on an unknown name."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"recipe: unknown {name!r}{hint}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
