"""The reference students in students/ (benchmarks/reference_student.py) run from a fresh clone and reproduce their
recorded evaluation: a few recorded episodes replayed, each ending as it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

STUDENTS = Path(__file__).resolve().parents[1] / "students"
REFERENCES = sorted(p.parent for p in STUDENTS.glob("*/outcomes.json"))


def replayed(outcomes: dict, n: int = 4) -> list[tuple[str, int, bool]]:
    """(task, seed, success) of n recorded episodes from different tasks, a failure among them where there is one,
    each one its torch checkpoint ended the same way (robust to float round-off)."""
    robust = [(task, s, ok) for task, e in outcomes["episodes"].items()
              for s, ok, agree in zip(e["seeds"], e["successes"], e["checkpoint_agrees"], strict=True) if agree]
    failures = [r for r in robust if not r[2]][:1]
    picked, tasks = list(failures), {r[0] for r in failures}
    for r in robust:
        if len(picked) < n and r[2] and r[0] not in tasks:
            picked.append(r)
            tasks.add(r[0])
    return picked


def test_every_reference_student_has_its_card_and_no_torch_weights():
    assert REFERENCES, "students/ should hold at least the MT10 reference student"
    for ref in REFERENCES:
        manifest = json.loads((ref / "bundle.json").read_text())
        assert manifest["backends"] == ["onnx"] and "model.safetensors" not in manifest["files"]
        assert (ref / "README.md").is_file() and set(manifest["files"]) <= {f.name for f in ref.iterdir()}


@pytest.mark.parametrize("ref", REFERENCES, ids=[r.name for r in REFERENCES])
def test_recorded_episodes_replay_as_recorded(ref):
    from vla_distill.eval.actors import make_actor
    from vla_distill.eval.rollout import run_episode
    from vla_distill.sim.registry import simulator_of

    outcomes = json.loads((ref / "outcomes.json").read_text())
    # an extra's simulator (LIBERO: 220 steps, two cameras rendered per policy call) takes ~6 s an episode: two of them
    episodes = replayed(outcomes, n=2 if "--env" in outcomes["command"] else 4)
    sim = simulator_of(episodes[0][0])
    if why := sim.unavailable():  # an optional simulator's extra (LIBERO, ALOHA) not installed
        pytest.skip(why)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `eval` runs each worker (ONNX Runtime takes torch's thread count)
    try:
        actor = make_actor(str(ref))
        assert actor.info.spec.endswith("[onnx]")
        keys, size = tuple(actor.info.image_keys), tuple(actor.info.image_size)
        for task, seed, success in episodes:
            env = sim.make_env(task, keys, size)
            try:
                res = run_episode(env, actor, task, seed, env.max_steps, steps_after_success=0)
            finally:
                env.close()
            assert (res.first_success is not None) == success, f"{ref.name}: {task} seed {seed}"
    finally:
        torch.set_num_threads(threads)
