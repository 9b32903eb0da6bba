"""Closed-loop evaluation: eval_info arithmetic and shape, a real tiny checkpoint in MetaWorld, resume, observability
flags, the report, and LIBERO's skip path."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from vla_distill.data.dataset import RobotDataset
from vla_distill.errors import ConfigError
from vla_distill.eval.config import EvalConfig
from vla_distill.eval.evaluate import evaluate
from vla_distill.eval.metrics import aggregate, latency_summary
from vla_distill.eval.observe import (
    GRASP,
    RELEASE,
    TRANSPORT,
    ObserveConfig,
    direction_spread,
    phase_flags,
    progress_profile,
)
from vla_distill.eval.records import EpisodeRecord
from vla_distill.eval.stats import compare, distinguishable, paired, paired_counts, wilson
from vla_distill.models.backends import policy_threads
from vla_distill.sim.metaworld.tasks import EVAL_SEED_BASE
from vla_distill.sim.registry import get_simulator

CLI = [sys.executable, "-m", "vla_distill.cli"]
A, G, T, R = 0, GRASP, TRANSPORT, RELEASE


def rec(task: str, group: str, episode: int, success: bool) -> EpisodeRecord:
    return EpisodeRecord(task=task, task_group=group, episode=episode, seed=episode, success=success,
                         first_success=3 if success else None, steps=10, sum_reward=1.0 + episode, max_reward=0.5,
                         calls=10, seconds=0.1, video_path=None)


def test_aggregate_reports_lerobot_shape_and_both_means():
    records = [rec("a", "easy", 0, True), rec("a", "easy", 1, True), rec("b", "easy", 0, True),
               rec("b", "easy", 1, False),
               rec("c", "hard", 0, False), rec("c", "hard", 1, False)]
    info = aggregate(records, eval_s=6.0)
    assert [t["task"] for t in info["per_task"]] == ["a", "b", "c"]
    assert [t["task_id"] for t in info["per_task"]] == [0, 1, 0]  # index within the group, as lerobot numbers them
    assert info["per_task"][1]["metrics"]["successes"] == [True, False]
    assert info["per_task"][1]["metrics"]["sum_rewards"] == [1.0, 2.0]
    assert info["per_group"]["easy"]["pc_success"] == 75.0 and info["per_group"]["hard"]["pc_success"] == 0.0
    o = info["overall"]
    assert o["pc_success"] == 50.0 and o["n_episodes"] == 6  # lerobot: over all episodes
    assert o["pc_success_group_mean"] == 37.5  # the papers' Meta-World convention
    assert o["pc_success_task_mean"] == 50.0
    assert o["eval_ep_s"] == 1.0 and {"avg_sum_reward", "avg_max_reward", "video_paths", "eval_s"} <= set(o)


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662 (Wilson score); 0/10 -> 0-0.2775
    low, high = wilson(81, 263)
    assert abs(low - 25.53) < 0.01 and abs(high - 36.62) < 0.01
    assert wilson(0, 10) == [0.0, pytest.approx(27.75, abs=0.01)] and wilson(3, 0) is None


def test_paired_difference_and_mcnemar_on_discordant_episodes():
    a = [True] * 12 + [True] * 9 + [False] * 2 + [False] * 2  # 21/25
    b = [True] * 12 + [False] * 9 + [True] * 2 + [False] * 2  # 14/25
    c = paired(b, a)
    assert c["difference"] == pytest.approx(28.0) and c["only_b"] == 9 and c["only_a"] == 2
    assert c["ci95"][0] < 28.0 < c["ci95"][1] and c["ci95"][0] > 0 and distinguishable(c)
    assert c["mcnemar_p"] == pytest.approx(2 * (1 + 11 + 55) / 2**11)  # exact: P(X <= 2 | 11, 1/2), two-sided
    assert paired(a, b)["ci95"] == [pytest.approx(-v) for v in reversed(c["ci95"])]  # antisymmetric
    same = paired([True, False] * 10, [True, False] * 10)
    assert same["difference"] == 0.0 and same["mcnemar_p"] == 1.0 and not distinguishable(same)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    cells = np.array([0.70, 0.08, 0.15, 0.07])  # both, only a, only b, neither: true difference +7 points
    hits, trials = 0, 600
    for _ in range(trials):
        kind = rng.choice(4, size=60, p=cells)
        a, b = np.isin(kind, [0, 1]).tolist(), np.isin(kind, [0, 2]).tolist()
        lo, hi = paired(a, b)["ci95"]
        hits += lo <= 7.0 <= hi
    assert 0.92 <= hits / trials <= 0.99


def test_compare_pairs_episodes_by_seed_and_counts_the_unpaired():
    def info(task_rows):
        return {"per_task": [{"task": t, "metrics": {"seeds": list(s), "successes": list(ok)}} for t, s,
                             ok in task_rows]}

    a = info([("x", [1, 2, 3], [True, True, False]), ("y", [7], [True])])
    b = info([("x", [3, 2, 1, 4], [True, False, True, True]), ("z", [7], [False])])
    c = compare(a, b)
    assert list(c["per_task"]) == ["x"] and c["unpaired_episodes"] == 1
    assert c["overall"]["only_a"] == 1 and c["overall"]["only_b"] == 1 and c["overall"]["both"] == 1


def test_latency_summary_counts_a_chunk_as_several_actions():
    s = latency_summary(np.full(10, 2.0), steps=50)  # 10 calls of 2 ms serve 50 steps (chunks of 5)
    assert s["latency_ms_p50"] == 2.0 and s["inference_hz"] == 500.0 and s["control_hz"] == 2500.0


def test_held_out_seeds_never_meet_collection_seeds():
    from vla_distill.collect.config import CollectConfig

    mine = get_simulator("metaworld").eval_seeds("reach-v3", 50, 0)
    assert len(set(mine)) == 50 and min(mine) >= EVAL_SEED_BASE
    assert set(mine).isdisjoint(get_simulator("metaworld").eval_seeds("push-v3", 50, 0))
    cfg = CollectConfig(tasks=tuple(["reach-v3"] * 1), episodes=100, seed=1999)
    assert max(cfg.attempt_seed(49, a) for a in range(cfg.max_attempts)) < EVAL_SEED_BASE


def test_noisy_teacher_in_closed_loop_is_seeded_per_episode():
    from vla_distill.eval.actors import make_actor
    from vla_distill.sim.base import CameraConfig
    from vla_distill.sim.metaworld.env import MetaWorldEnv

    actor = make_actor("noisy[std=0.2,toggle=0.2]:scripted")
    with MetaWorldEnv("reach-v3", CameraConfig(names=())) as env:
        obs = env.reset(1)

        def actions(seed):
            actor.reset("reach-v3", env.instruction, seed)
            return np.stack([actor.act(obs).action for _ in range(30)])

        a, b, c = actions(5), actions(5), actions(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and np.abs(a).max() <= 1.0 and actor.info.kind == "noisy"


# ---------------------------------------------------------------------------------------------------- flags
def test_release_before_grasp_and_premature_release():
    pred = np.array([A] * 20 + [R] * 30 + [T] * 50)
    ref = np.array([A] * 20 + [G] * 10 + [T] * 60 + [R] * 10)
    success = np.zeros(100, bool)
    success[90:] = True
    flags = {f["kind"]: f for f in phase_flags(pred, ref, success, np.zeros((100, 3)) + np.arange(100)[:, None])}
    assert flags["release_before_grasp"]["step"] == 20
    assert flags["premature_release"]["step"] == 20 and "success at 90" in flags["premature_release"]["detail"]
    assert "phase_regression" not in flags  # one step back only


def test_a_clean_timeline_has_no_flags():
    pred = np.array([A] * 20 + [G] * 10 + [T] * 60 + [R] * 10)
    success = np.zeros(100, bool)
    success[90:] = True
    hand = np.cumsum(np.full((100, 3), 0.01), axis=0)
    assert phase_flags(pred, pred.copy(), success, hand) == []
    # A push task: the reference's brief close is not a grasp the student must predict.
    push = np.where(pred == G, A, pred)
    ref = push.copy()
    ref[20:22] = G
    assert phase_flags(push, ref, success, hand) == []


def test_stuck_phase_and_still_hand_and_regressions():
    cfg = ObserveConfig(stuck_frames=50)
    never = np.zeros(200, bool)
    moving = np.cumsum(np.full((200, 3), 0.01), axis=0)
    kinds = [f["kind"] for f in phase_flags(np.array([A] * 200), None, never, moving, cfg)]
    assert kinds == ["stuck_phase"]
    still = phase_flags(np.full(200, -1), None, never, np.zeros((200, 3)), cfg)  # no phase head, hand frozen
    assert [f["kind"] for f in still] == ["stuck_phase"] and "hand moved" in still[0]["detail"]
    flip = np.array([A, T] * 100)
    assert "phase_regression" in [f["kind"] for f in phase_flags(flip, None, never, moving, cfg)]


def test_direction_spread_flags_the_off_pattern_episode():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 16))
    profiles = []
    for i in range(6):
        d = base + 0.05 * rng.normal(size=base.shape) if i != 4 else rng.normal(size=base.shape)
        steps = np.arange(8) * 10
        profiles.append(progress_profile(d / np.linalg.norm(d, axis=1, keepdims=True), steps, 80, 8))
    out = direction_spread(profiles)
    assert out["flagged"] == [4]
    assert out["deviation"][4] > 0.5 and max(d for i, d in enumerate(out["deviation"]) if i != 4) < 0.05


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def frozen_policy_dir(tmp_path_factory):
    """A fake policy that never moves the arm: a state MLP whose every weight is zero (action = 0)."""
    from vla_distill.models.checkpoint import save_pretrained
    from vla_distill.models.state_mlp import StateMLPConfig, StateMLPPolicy

    policy = StateMLPPolicy(StateMLPConfig(hidden=8, depth=1))
    for p in policy.parameters():
        torch.nn.init.zeros_(p)
    return save_pretrained(policy, tmp_path_factory.mktemp("frozen") / "pretrained_model")


@pytest.fixture(scope="module")
def teacher_and_frozen(frozen_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    common = dict(tasks=("reach-v3", "button-press-topdown-v3"), episodes=2, max_steps=200, workers=1, latency_steps=20)
    teacher = evaluate(EvalConfig(policy="scripted", out=str(root / "teacher"), videos=1, **common))
    frozen = evaluate(EvalConfig(policy=str(frozen_policy_dir), out=str(root / "frozen"), videos=0, **common))
    return root, teacher, frozen


def test_eval_info_of_teacher_and_fake_policy(teacher_and_frozen):
    root, teacher, frozen = teacher_and_frozen
    on_disk = json.loads((root / "teacher" / "eval_info.json").read_text())
    assert on_disk["overall"]["pc_success"] == teacher["overall"]["pc_success"] == 100.0
    assert frozen["overall"]["pc_success"] == 0.0 and frozen["per_group"]["easy"]["n_episodes"] == 4
    for t in on_disk["per_task"]:
        assert set(t) >= {"task_group", "task_id", "metrics"}
        assert set(t["metrics"]) == {"sum_rewards", "max_rewards", "successes", "seeds", "video_paths"}
        assert len(t["metrics"]["successes"]) == 2 and len(t["metrics"]["video_paths"]) == 1
        assert t["metrics"]["seeds"] == on_disk["eval"]["seeds"][t["task"]]
        assert t["pc_success_ci95"][1] == 100.0 and 30 < t["pc_success_ci95"][0] < 40  # Wilson, 2/2
    assert on_disk["overall"]["pc_success_ci95"][0] > 50 and frozen["overall"]["pc_success_ci95"][0] == 0.0
    assert set(on_disk["per_group"]["easy"]) >= {"avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes",
                                                 "video_paths"}
    p = frozen["policy"]
    assert p["kind"] == "policy" and p["parameters"] > 0 and p["latency_ms_p50"] > 0 and p["calls"] == 20
    assert p["peak_rss_mb"] > 0 and p["control_hz"] > 0
    assert p["threads"] == policy_threads()  # as `run` gives the policy: not every core the renderer needs too
    # The frozen arm is flagged: its hand never moves before the step limit.
    obs = json.loads((root / "frozen" / "observability.json").read_text())
    assert {(f["task"], f["kind"]) for f in obs["flags"]} == {("reach-v3", "stuck_phase"),
                                                              ("button-press-topdown-v3", "stuck_phase")}
    seeds = on_disk["eval"]["seeds"]["reach-v3"]
    assert seeds == get_simulator("metaworld").eval_seeds("reach-v3", 2, 0)
    # The teacher's video shows the scene (not a blank frame) for every step it ran.
    video = root / "teacher" / on_disk["per_task"][0]["metrics"]["video_paths"][0]
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    ep = json.loads((root / "teacher" / "episodes" / "button-press-topdown-v3" / "0000.json").read_text())
    assert on_disk["per_task"][0]["task"] == "button-press-topdown-v3" and len(frames) == ep["steps"]
    assert frames[0].std() > 10 and ep["success"]


def test_report_renders_table_plots_and_flags(teacher_and_frozen, tmp_path):
    root, teacher, frozen = teacher_and_frozen
    r = subprocess.run(CLI + ["report", str(root / "teacher"), str(root / "frozen"), "--out", str(tmp_path / "rep")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "| teacher: scripted |" in md and "0.0%" in md  # the frozen row, relative to the teacher
    assert "stuck_phase" in md and "How these numbers were obtained" in md
    imgs = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(imgs) >= 4 and all((tmp_path / "rep" / i).stat().st_size > 1000 for i in imgs)
    assert html.count("<img") == len(imgs) and "<video" in html and "<table>" in html


def test_eval_of_a_real_tiny_checkpoint_over_two_processes_resumes(tiny_student, annotated, tmp_path):
    out = tmp_path / "ev"
    cfg = EvalConfig(policy=str(tiny_student), out=str(out), tasks=("reach-v3",), episodes=2, max_steps=30, workers=2,
                     videos=1, video_failures=True, latency_steps=10)
    info = evaluate(cfg)
    assert info["overall"]["n_episodes"] == 2 and info["eval"]["workers"] == 2
    assert info["overall"]["pc_success"] == 0.0  # 30 steps are too few to reach
    assert info["per_task"][0]["metrics"]["video_paths"] == ["videos/reach-v3/episode_0.mp4",
                                                             "videos/reach-v3/episode_1.mp4"]
    p = info["policy"]
    assert p["kind"] == "student" and p["phase_names"] == ["approach", "grasp", "transport", "release"]
    assert p["parameters"] > 1e6 and p["horizon"] == 1
    z = np.load(out / "episodes" / "reach-v3" / "0001.npz")
    assert z["phase"].shape == (30,) and set(np.unique(z["phase"])) <= {0, 1, 2, 3}
    assert z["directions"].shape == (30,
                                     384) and np.allclose(np.linalg.norm(z["directions"].astype(np.float32), axis=1), 1,
                                                          atol=1e-2)
    assert "reference_ground_truth" in z and "reference_annotator" in z
    ep0 = json.loads((out / "episodes" / "reach-v3" / "0000.json").read_text())
    assert set(ep0["phase_agreement"]) == {"ground_truth", "annotator"}
    # Held out: none of the training dataset's seeds.
    used = {e.extra["seed"] for e in RobotDataset(annotated).episodes}
    assert used.isdisjoint(info["eval"]["seeds"]["reach-v3"])
    # Resume: a lost episode is rerun, the finished one is not, and the result is the same.
    (out / "episodes" / "reach-v3" / "0001.json").unlink()
    before = (out / "episodes" / "reach-v3" / "0000.json").stat().st_mtime_ns
    again = evaluate(cfg)
    assert (out / "episodes" / "reach-v3" / "0000.json").stat().st_mtime_ns == before
    assert again["per_task"] == info["per_task"]
    np.testing.assert_array_equal(np.load(out / "episodes" / "reach-v3" / "0001.npz")["actions"], z["actions"])
    # Other settings in the same directory are refused.
    from vla_distill.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        evaluate(EvalConfig(**{**cfg.__dict__, "episodes": 3}))


def test_eval_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run(CLI + ["eval", "--policy", str(tmp_path / "nope"), "--tasks", "reach-v3", "--out",
                              str(tmp_path / "e")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "policy" in r.stderr
    r = subprocess.run(CLI + ["eval", "--policy", "scripted", "--tasks", "reach-v9", "--out", str(tmp_path / "e")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "reach-v3" in r.stderr  # did you mean
    assert not (tmp_path / "e").exists()


def test_an_ablated_head_is_not_reported(tiny_student, tmp_path):
    """A student trained with phase weight 0 has a phase head that was never trained: no phases, no phase flags."""
    import shutil

    from vla_distill.eval.actors import make_actor
    from vla_distill.models.checkpoint import resolve_pretrained_dir

    src = resolve_pretrained_dir(tiny_student)
    dst = tmp_path / "pretrained_model"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "train_config.json").read_text())
    cfg["loss"]["phase_weight"] = 0.0
    (dst / "train_config.json").write_text(json.dumps(cfg))
    obs = {k: np.zeros((64, 64, 3), np.uint8) for k in ("observation.images.corner2", "observation.images.gripper")}
    obs["observation.state"] = np.zeros(4, np.float32)
    for path, phased in ((src, True), (dst, False)):
        actor = make_actor(str(path))
        actor.reset("reach-v3", "reach the goal", 0)
        step = actor.act(obs)
        assert (step.phase is not None) == phased and step.direction.shape == (384,)
        assert bool(actor.info.phase_names) == phased


def test_a_task_the_policy_never_trained_on_is_named_in_a_warning(tiny_student, tmp_path, capsys):
    # tiny_student learned reach and pick-place only
    common = dict(policy=str(tiny_student), episodes=1, max_steps=3, workers=1, videos=0, latency_steps=0)
    info = evaluate(EvalConfig(out=str(tmp_path / "new"), tasks=("button-press-topdown-v3", "reach-v3"),
                               chunk="ensemble",
                               **common))
    err = capsys.readouterr().err
    assert "never trained on button-press-topdown-v3" in err and "never trained on reach-v3" not in err
    assert info["eval"]["untrained_tasks"] == ["button-press-topdown-v3"] and info["policy"]["chunk"] == "ensemble"
    with pytest.raises(ConfigError, match="chunk"):
        EvalConfig(out=str(tmp_path / "x"), tasks=("reach-v3",), chunk="average", **common)


def test_instructions_replace_the_tasks_own_prompt_episode_by_episode(tiny_student, tmp_path):
    """--instructions gives the policy other wordings (paraphrases it never trained on): episode i takes wording i mod
    n, the record says which, and the student acts on it (it embeds the unseen wording)."""
    common = dict(policy=str(tiny_student), tasks=("reach-v3",), episodes=3, max_steps=3, workers=1, videos=0,
                  latency_steps=0)
    wordings = ("go to the target", "move the hand to the goal")
    own = evaluate(EvalConfig(out=str(tmp_path / "own"), **common))
    evaluate(EvalConfig(out=str(tmp_path / "para"), instructions=(("reach-v3", wordings),), **common))
    episodes = tmp_path / "para" / "episodes" / "reach-v3"
    records = [json.loads((episodes / f"{i:04d}.json").read_text()) for i in range(3)]
    assert [r["instruction"] for r in records] == [wordings[0], wordings[1], wordings[0]]
    assert own["eval"]["seeds"] == json.loads((tmp_path / "para" / "eval_info.json").read_text())["eval"]["seeds"]
    first = lambda d: np.load(tmp_path / d / "episodes" / "reach-v3" / "0000.npz")["actions"][0]  # noqa: E731
    assert not np.array_equal(first("own"), first("para"))
    with pytest.raises(ConfigError, match="no wording for 'reach-v3'"):
        EvalConfig(out=str(tmp_path / "x"), instructions=(("push-v3", ("push it",)),), **common)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"reach-v3": list(wordings)}))
    r = subprocess.run(CLI + ["eval", "--policy", "scripted", "--tasks", "reach-v3", "--episodes", "1", "--max-steps",
                              "3", "--latency-steps", "0", "--videos", "0", "--out", str(tmp_path / "cli"),
                              "--instructions", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]
    record = json.loads((tmp_path / "cli" / "episodes" / "reach-v3" / "0000.json").read_text())
    assert record["instruction"] == wordings[0]
    bad = tmp_path / "bad.json"
    bad.write_text('{"reach-v3": []}')
    r = subprocess.run(CLI + ["eval", "--policy", "scripted", "--tasks", "reach-v3", "--out", str(tmp_path / "e"),
                              "--instructions", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.json" in r.stderr


def test_pooling_two_by_two_tables_equals_pooling_the_episodes():
    rng = np.random.default_rng(1)
    a, b = (rng.random(80) < 0.4).tolist(), (rng.random(80) < 0.6).tolist()
    first, second = paired(a[:50], b[:50]), paired(a[50:], b[50:])
    pooled = paired_counts(*(first[k] + second[k] for k in ("both", "only_a", "only_b", "neither")))
    whole = paired(a, b)
    assert pooled["difference"] == pytest.approx(whole["difference"]) and pooled["ci95"] == pytest.approx(whole["ci95"])
    assert pooled["mcnemar_p"] == whole["mcnemar_p"]
