"""The simulators there are, by name: the only place that lists them. Each describes itself beside its adapter
(metaworld_tasks.MetaWorld, libero.Libero) through the sim.base.Simulator protocol; nothing heavy is imported until
an environment is built."""

from __future__ import annotations

from vla_distill.errors import ConfigError
from vla_distill.sim.base import Simulator
from vla_distill.sim.libero import Libero
from vla_distill.sim.metaworld_tasks import MetaWorld

SIMULATORS: dict[str, Simulator] = {s.name: s for s in (MetaWorld(), Libero())}
ENVS = tuple(SIMULATORS)
DEFAULT_ENV = MetaWorld.name


def get_simulator(name: str) -> Simulator:
    if name not in SIMULATORS:
        raise ConfigError(f"unknown env {name!r}; envs: {', '.join(ENVS)}", field="env")
    return SIMULATORS[name]
