"""The simulators the evaluator drives: task lists, difficulty groups, held-out seeds and environment construction.

MetaWorld seeds: collection draws placements from seeds `seed * 1_000_003 + task_pos * 10_007 + attempt` (below 2^31
for any --seed under 2,000); evaluation draws from 2^31 upwards, so its placements are never those of the
demonstrations. LIBERO: episode i starts from the task's fixed initial state i % 50, as every LIBERO evaluation does.
"""

from __future__ import annotations

from vla_distill.errors import ConfigError
from vla_distill.types import OBS_IMAGES

ENVS = ("metaworld", "libero")
EVAL_SEED_BASE = 2**31


def resolve_tasks(env: str, spec: str) -> list[str]:
    if env == "metaworld":
        from vla_distill.sim.metaworld_tasks import resolve_tasks as mw

        return mw(spec)
    if env == "libero":
        from vla_distill.sim.libero import resolve_tasks as lb

        return lb(spec)
    raise ConfigError(f"unknown env {env!r}; envs: {', '.join(ENVS)}", field="env")


def group_of(env: str, task: str) -> str:
    if env == "metaworld":
        from vla_distill.sim.metaworld_tasks import difficulty_of

        return difficulty_of(task)
    return task.partition("/")[0]


def eval_seeds(env: str, task: str, episodes: int, seed: int) -> list[int]:
    if env == "metaworld":
        from vla_distill.sim.metaworld_tasks import INSTRUCTIONS

        task_id = sorted(INSTRUCTIONS).index(task)
        return [EVAL_SEED_BASE + seed * 100_003 + task_id * 1_009 + i for i in range(episodes)]
    return [seed * 1_000 + i for i in range(episodes)]


def fps(env: str) -> float:
    if env == "metaworld":
        from vla_distill.sim.metaworld import FPS

        return FPS
    from vla_distill.sim.libero import FPS

    return FPS


def make_env(env: str, task: str, image_keys: tuple[str, ...], image_size: tuple[int, int]):
    """An environment whose observations carry exactly `image_keys` (plus state) at `image_size`."""
    if env == "metaworld":
        from vla_distill.sim.metaworld import CameraConfig, MetaWorldEnv

        names = tuple(k[len(OBS_IMAGES) + 1:] for k in image_keys)
        return MetaWorldEnv(task, CameraConfig(names=names, height=image_size[0], width=image_size[1]))
    from vla_distill.sim.libero import LiberoEnv

    return LiberoEnv(task, image_keys, image_size[0])


def policy_cameras(policy) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The cameras an environment must render for a policy, and their size: its config's image_keys, else the
    uint8 images of its observation_spec (a VITA policy reads its expert's)."""
    spec = policy.observation_spec
    keys = tuple(getattr(policy.config, "image_keys", ())) or tuple(k for k, v in spec.items() if v["dtype"] == "uint8")
    return keys, (tuple(spec[keys[0]]["shape"][:2]) if keys else None)


def default_camera(env: str) -> str:
    return f"{OBS_IMAGES}.corner2" if env == "metaworld" else f"{OBS_IMAGES}.image"
