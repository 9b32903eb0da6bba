"""Actors: anything that controls a simulated robot one step at a time, behind one interface, so the teacher
and the student are evaluated by the same code path.

  PATH (a run dir, checkpoint dir or pretrained_model dir)   a policy this toolkit trained
  scripted | noisy[...]:KIND | checkpoint:PATH | openpi://HOST:PORT | openvla://HOST:PORT   the teacher kinds
  (parsed by teachers.parse_kind, as annotation parses them)

Shapes at this boundary (one environment, batch 1):
  obs      {camera key: (H, W, 3) uint8, "observation.state": (S,), "observation.environment_state": (S_env,)}
  Step     action (D,) float32; phase int or None; direction (E,) float32 or None
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vla_distill.errors import ConfigError
from vla_distill.models.backends import load_policy, resolve_backend, weights_bytes
from vla_distill.models.base import observation_to_batch, policy_cameras
from vla_distill.models.checkpoint import resolve_pretrained_dir
from vla_distill.models.chunking import ChunkScheduler
from vla_distill.sim.registry import simulator_of
from vla_distill.teachers import KINDS, make_teacher, parse_kind
from vla_distill.types import OBS_ENV_STATE, is_camera


@dataclass
class Step:
    action: np.ndarray
    inferred: bool  # True when this step ran the model (a new chunk); False when it came from the queue
    latency_s: float = 0.0  # wall time of the model call, when inferred
    phase: int | None = None
    direction: np.ndarray | None = None


@dataclass
class ActorInfo:
    spec: str
    kind: str  # "student" | "policy" | "scripted" | "noisy" | "remote"
    parameters: int | None = None  # deployed parameters (auxiliary heads left out)
    weights_mb: float | None = None
    image_keys: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None
    phase_names: tuple[str, ...] = ()
    horizon: int = 1
    n_action_steps: int = 0  # what its chunk queue executes per chunk (0 = all)
    provenance: dict = field(default_factory=dict)
    instructions: tuple[str, ...] = ()  # those it was trained on, where the checkpoint says (a student's tasks)


Infer = Callable[[], tuple[np.ndarray, int | None, np.ndarray | None]]  # -> ((K, D) chunk, phase, direction)


def next_step(chunks: ChunkScheduler, infer: Infer) -> Step:
    """The next step from the actor's chunk queue: `n_action_steps` actions of each predicted chunk, then a new model
    call, whose wall time is the step's latency."""
    call: dict = {}

    def predict() -> np.ndarray:
        t0 = time.perf_counter()
        chunk, call["phase"], call["direction"] = infer()
        call["latency_s"] = time.perf_counter() - t0
        return np.asarray(chunk, np.float32)

    action, inferred = chunks.next(predict)
    return Step(action, inferred, **call)


class PolicyActor:
    """A trained policy (student, state MLP; a checkpoint or an exported bundle) run batch-1 on a deployment
    backend (models.backends: auto, torch, torch-bf16, onnx, onnx-int8)."""

    def __init__(self, path: str, spec: str | None = None, device: str = "cpu", n_action_steps: int = 0,
                 backend: str = "auto", chunk: str = "queue"):
        backend = resolve_backend(path, backend)
        self.policy = load_policy(path, backend, device)
        self.device = device
        cfg = self.policy.config
        n_action_steps = n_action_steps or getattr(self.policy, "n_action_steps", 0)  # 0: the policy's own
        self.keys = self.policy.input_keys
        self.observed = hasattr(self.policy, "predict_observed") and getattr(self.policy, "observes", True)
        cams, size = policy_cameras(self.policy)
        # A head trained with weight 0 (an ablation) predicts noise: its output is not reported.
        self.phase_trained, self.direction_trained = _trained_heads(path)
        params = (self.policy.num_parameters(deployed=True) if hasattr(self.policy, "num_parameters")
                  else sum(p.numel() for p in self.policy.parameters()))
        self.info = ActorInfo(
            spec=(spec or str(path)) + ("" if backend == "torch" else f" [{backend}]"),
            kind="student" if self.observed else "policy", parameters=params,
            weights_mb=round(weights_bytes(self.policy) / 2**20, 2), image_keys=cams, image_size=size,
            phase_names=tuple(getattr(cfg, "phase_names", ())) if self.phase_trained else (),
            horizon=self.policy.horizon, n_action_steps=n_action_steps,
            provenance=getattr(self.policy, "provenance", {}),
            instructions=tuple(getattr(cfg, "tasks", ())))
        self.chunks = ChunkScheduler(chunk, n_action_steps)
        self.instruction = ""

    def reset(self, task_name: str, instruction: str, episode_seed: int) -> None:
        self.chunks.clear()
        self.instruction = instruction
        self.policy.reset(task=instruction)

    def act(self, obs: dict) -> Step:
        return next_step(self.chunks, lambda: self._infer(obs))

    @torch.inference_mode()
    def _infer(self, obs: dict) -> tuple[np.ndarray, int | None, np.ndarray | None]:
        batch = observation_to_batch(obs, self.keys, self.instruction, self.device)
        if not self.observed:
            return self.policy.predict_action_chunk(batch)[0].float().cpu().numpy(), None, None
        out = self.policy.predict_observed(batch)
        phase = int(out["phase"][0]) if self.phase_trained else None
        direction = out["direction"][0].cpu().numpy() if self.direction_trained else None
        return out["actions"][0].cpu().numpy(), phase, direction

    def close(self) -> None:
        pass


def _trained_heads(path: str) -> tuple[bool, bool]:
    """(phase head trained, direction head trained), from the checkpoint's train_config.json when it has one."""
    cfg = resolve_pretrained_dir(path) / "train_config.json"
    if not cfg.exists():
        return True, True
    loss = json.loads(cfg.read_text()).get("loss", {})
    return loss.get("phase_weight", 1.0) > 0, loss.get("direction_weight", 1.0) > 0


class ScriptedActor:
    """The simulator's scripted expert of the task (sim.base.Expert), reading observation.environment_state."""

    def __init__(self, spec: str = "scripted"):
        self.info = ActorInfo(spec=spec, kind="scripted", provenance={"source": "the simulators' scripted experts"})
        self.expert = None

    def reset(self, task_name: str, instruction: str, episode_seed: int) -> None:
        sim = simulator_of(task_name, instruction)
        if sim is None:
            raise ConfigError(f"no simulator has the task {task_name!r}", field="tasks")
        self.expert = sim.expert(task_name)
        self.info.provenance = {"source": sim.expert_source()}

    def act(self, obs: dict) -> Step:
        if OBS_ENV_STATE not in obs:
            raise ConfigError("the scripted teacher needs the simulator's privileged state", field=OBS_ENV_STATE)
        t0 = time.perf_counter()
        a = self.expert(obs[OBS_ENV_STATE])
        return Step(a, True, time.perf_counter() - t0)

    def close(self) -> None:
        pass


class NoisyActor:
    """An inner actor with the noisy teacher's seeded imperfections applied online (one stream per episode)."""

    def __init__(self, inner, cfg, spec: str):
        self.inner, self.cfg = inner, cfg
        self.info = ActorInfo(**{**inner.info.__dict__, "spec": spec, "kind": "noisy"})
        self.stream = None

    def reset(self, task_name: str, instruction: str, episode_seed: int) -> None:
        from vla_distill.teachers.noisy import NoiseStream

        self.inner.reset(task_name, instruction, episode_seed)
        self.stream = NoiseStream(self.cfg, episode_seed)

    def act(self, obs: dict) -> Step:
        step = self.inner.act(obs)
        step.action = self.stream.step(step.action[None])[0]
        return step

    def close(self) -> None:
        self.inner.close()


class RemoteActor:
    """A VLA behind its server (openpi, OpenVLA), asked on every replan with the live observation."""

    def __init__(self, teacher, n_action_steps: int = 0):
        self.teacher = teacher
        cams = tuple(v for v in teacher.cfg.obs_map.values() if is_camera(v))
        self.info = ActorInfo(spec=teacher.spec, kind="remote", image_keys=cams, n_action_steps=n_action_steps,
                              provenance=teacher.provenance())
        self.chunks = ChunkScheduler("queue", n_action_steps)
        self.instruction = ""

    def reset(self, task_name: str, instruction: str, episode_seed: int) -> None:
        self.chunks.clear()
        self.instruction = instruction

    def act(self, obs: dict) -> Step:
        return next_step(self.chunks, lambda: (self.teacher.infer({**obs, "task": self.instruction}), None, None))

    def close(self) -> None:
        self.teacher.close()


def make_actor(spec: str, options: dict[str, str] | None = None, device: str = "cpu", n_action_steps: int = 0,
               backend: str = "auto", chunk: str = "queue"):
    """A policy checkpoint path or a teacher KIND string (see vla_distill.teachers) -> an actor; `chunk` schedules a
    trained policy's chunks (models.chunking)."""
    kind = parse_kind(spec)
    if kind is None:
        if Path(spec).exists():
            return PolicyActor(spec, None, device, n_action_steps, backend, chunk)
        raise ConfigError(f"{spec!r} is neither a policy checkpoint directory nor a teacher kind ({', '.join(KINDS)})",
                          field="policy")
    if kind.name == "scripted":
        return ScriptedActor()
    if kind.name == "noisy":
        return NoisyActor(make_actor(kind.inner, options, device, n_action_steps, backend, chunk), kind.noise, spec)
    if kind.name == "checkpoint":
        return PolicyActor(kind.path, spec, device, n_action_steps, backend, chunk)
    return RemoteActor(make_teacher(spec, options), n_action_steps)
