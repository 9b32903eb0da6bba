"""The simulators there are, by name: the only place that lists them. Each describes itself in its own room
(sim/metaworld/, sim/libero/, sim/aloha/: simulator.py) through the sim.base.Simulator protocol; nothing heavy is
imported until an environment is built. A new simulator is a new room and one line here."""

from __future__ import annotations

from vla_distill.errors import ConfigError
from vla_distill.sim.aloha.simulator import Aloha
from vla_distill.sim.base import Simulator
from vla_distill.sim.libero.simulator import Libero
from vla_distill.sim.metaworld.simulator import MetaWorld

SIMULATORS: dict[str, Simulator] = {s.name: s for s in (MetaWorld(), Libero(), Aloha())}
ENVS = tuple(SIMULATORS)
DEFAULT_ENV = MetaWorld.name


def get_simulator(name: str) -> Simulator:
    if name not in SIMULATORS:
        raise ConfigError(f"unknown env {name!r}; envs: {', '.join(ENVS)}", field="env")
    return SIMULATORS[name]


def simulator_of(task: str | None = None, instruction: str | None = None) -> Simulator | None:
    """The simulator a task name (or, failing that, an instruction) belongs to; None when none claims it."""
    for sim in SIMULATORS.values():
        if task is not None and sim.has_task(task):
            return sim
    for sim in SIMULATORS.values():
        if instruction is not None and sim.task_of(instruction) is not None:
            return sim
    return None


def robot_description(env: str) -> tuple[str, str, str] | None:
    """(robot model, end-effector frame(s), joint units) of simulator `env`'s robot where its datasets record joints
    only (ALOHA's), so that they get hand positions without --robot-model; None otherwise, or where it is not
    installed."""
    sim = SIMULATORS.get(env)
    return sim.robot_description() if sim is not None and sim.unavailable() is None else None
