"""One closed-loop episode: an actor drives a simulated task until success (plus a few frames) or the step limit.

Not deploy.control_loop: this loop measures what a policy does, so it steps the simulator as fast as it can, one
step per action, and records observability (phases, direction embeddings); the control loop measures whether it
keeps time, pacing a robot against wall-clock deadlines and replacing late or bad actions. Both take their actions
through the one chunk scheduler (models.chunking).

Per-step arrays of an EpisodeResult (T steps run):
  state      (T, S) float32      observation.state seen before each action
  env_state  (T, S_env) float32|None observation.environment_state (MetaWorld: 39-d), for reference phases
  contact    (T,)   bool|None    observation.contact, where the simulator records it (reference phases)
  actions    (T, D) float32      what was sent to the simulator
  success    (T,)   bool         info["success"] after each action
  reward     (T,)   float32
  phase      (T,)   int64        predicted phase index (-1 for actors without a phase head); a chunk's steps
                                 carry the phase predicted when the chunk was made
  directions (N, E) float16      direction embedding of each of the N model calls; direction_steps (N,) their steps
  latency_ms (N,)   float32      wall time of each model call
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vla_distill.types import OBS_CONTACT, OBS_ENV_STATE, OBS_STATE


@dataclass
class EpisodeResult:
    state: np.ndarray
    env_state: np.ndarray | None
    contact: np.ndarray | None  # (T,) bool, where the simulator records it (observation.contact)
    actions: np.ndarray
    success: np.ndarray
    reward: np.ndarray
    phase: np.ndarray
    directions: np.ndarray
    direction_steps: np.ndarray
    latency_ms: np.ndarray
    frames: np.ndarray | None  # (T, H, W, 3) uint8 with the overlay, when a video was asked for

    @property
    def first_success(self) -> int | None:
        return int(np.argmax(self.success)) if self.success.any() else None


def overlay(img: np.ndarray, t: int, phase: str, success: bool, scale: int = 2) -> np.ndarray:
    """The frame upscaled, with the step and the predicted phase drawn in a band at the top."""
    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, im.width, 14], fill=(0, 0, 0))
    draw.text((3, 2), f"t={t:3d}  {phase}", fill=(255, 255, 255))
    if success:
        draw.text((im.width - 54, 2), "SUCCESS", fill=(80, 255, 80))
    return np.asarray(im)


def run_episode(env, actor, task_name: str, seed: int, max_steps: int, steps_after_success: int = 10,
                video_key: str | None = None, phase_names: tuple[str, ...] = (),
                instruction: str | None = None) -> EpisodeResult:
    """`instruction`: the prompt the actor is given instead of the task's own (a paraphrase)."""
    actor.reset(task_name, instruction or env.instruction, seed)
    obs = env.reset(seed)
    cols: dict[str,
               list] = {k: [] for k in ("state", "env", "contact", "action", "success", "reward", "phase", "dir",
                                        "dir_t", "lat", "frames")}
    phase, first = -1, None
    for t in range(max_steps):
        step = actor.act(obs)
        if step.inferred:
            cols["lat"].append(step.latency_s * 1e3)
            if step.phase is not None:
                phase = step.phase
            if step.direction is not None:
                cols["dir"].append(step.direction.astype(np.float16))
                cols["dir_t"].append(t)
        cols["state"].append(obs[OBS_STATE])
        if OBS_ENV_STATE in obs:
            cols["env"].append(obs[OBS_ENV_STATE])
        if OBS_CONTACT in obs:
            cols["contact"].append(obs[OBS_CONTACT][0] > 0.5)
        if video_key is not None:
            name = phase_names[phase] if 0 <= phase < len(phase_names) else ("-" if phase < 0 else str(phase))
            cols["frames"].append(overlay(obs[video_key], t, name, first is not None))
        obs, reward, success = env.step(step.action)
        cols["action"].append(np.asarray(step.action, np.float32))
        cols["success"].append(success)
        cols["reward"].append(reward)
        cols["phase"].append(phase)
        if success and first is None:
            first = t
        if first is not None and t - first >= steps_after_success:
            break
    e_dim = len(cols["dir"][0]) if cols["dir"] else 0
    return EpisodeResult(
        state=np.stack(cols["state"]).astype(np.float32),
        env_state=np.stack(cols["env"]).astype(np.float32) if cols["env"] else None,
        contact=np.array(cols["contact"], bool) if cols["contact"] else None,
        actions=np.stack(cols["action"]), success=np.array(cols["success"], bool),
        reward=np.array(cols["reward"], np.float32), phase=np.array(cols["phase"], np.int64),
        directions=np.stack(cols["dir"]) if cols["dir"] else np.zeros((0, e_dim), np.float16),
        direction_steps=np.array(cols["dir_t"], np.int64), latency_ms=np.array(cols["lat"], np.float32),
        frames=np.stack(cols["frames"]) if cols["frames"] else None)
