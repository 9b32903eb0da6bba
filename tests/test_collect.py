import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import popen_interruptible
from vla_distill.collect.collect import collect
from vla_distill.collect.config import CollectConfig
from vla_distill.data.dataset import RobotDataset
from vla_distill.errors import ConfigError
from vla_distill.sim.base import CameraConfig
from vla_distill.sim.metaworld.env import MetaWorldEnv
from vla_distill.sim.metaworld.tasks import GROUPS, resolve_tasks
from vla_distill.types import camera_key

SMALL = CameraConfig(("corner2", "gripper"), height=64, width=64)


def test_resolve_tasks():
    assert resolve_tasks("reach-v3,push-v3") == ["reach-v3", "push-v3"]
    assert len(resolve_tasks("mt10")) == 10 and len(resolve_tasks("mt50")) == 50
    assert [len(GROUPS[g]) for g in ("easy", "medium", "hard", "very_hard")] == [28, 11, 6, 5]
    assert set(resolve_tasks("easy,medium,hard,very_hard")) == set(resolve_tasks("mt50"))
    with pytest.raises(ConfigError, match="did you mean 'push-v3'"):
        resolve_tasks("psh-v3")


def test_env_observation_and_cameras():
    with MetaWorldEnv("push-v3", SMALL) as env:
        obs = env.reset(seed=3)
        assert obs["observation.state"].shape == (4,) and obs["observation.environment_state"].shape == (39,)
        np.testing.assert_array_equal(obs["observation.state"], obs["observation.environment_state"][:4])
        for key in ("observation.images.corner2", "observation.images.gripper"):
            img = obs[key]
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert img.std() > 10, f"{key} is blank"
        # corner2 is rotated upright: the wooden table (reddish) fills the bottom, the grey backdrop the top
        corner = obs["observation.images.corner2"].astype(float)
        redness = corner[..., 0] - corner[..., 2]
        assert redness[-16:].mean() > redness[:16].mean() + 5
        puck_a = env.env_state[4:7].copy()
    with MetaWorldEnv("push-v3", SMALL) as env:
        env.reset(seed=4)
        assert not np.allclose(puck_a, env.env_state[4:7])  # a different seed places the puck elsewhere
        env.reset(seed=3)
        np.testing.assert_allclose(puck_a, env.env_state[4:7])


def test_first_frame_shows_the_reset_scene_whatever_the_env_did_before():
    """Every frame, the first included, renders the state the observation describes; an env's history never shows."""
    import mujoco

    rng = np.random.default_rng(0)
    firsts = []
    for history in (0, 60):
        with MetaWorldEnv("drawer-open-v3", SMALL) as env:
            env.reset(seed=11)
            for _ in range(history):
                env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            obs = env.reset(seed=12)
            frames = [obs[camera_key(n)] for n in SMALL.names]
            firsts.append(frames)
            mujoco.mj_forward(env.env.model, env.env.data)  # the scene as the current state has it
            for n, frame in zip(SMALL.names, frames, strict=True):
                np.testing.assert_array_equal(frame, env.render(n))
    for a, b in zip(*firsts, strict=True):
        np.testing.assert_array_equal(a, b)


def test_collect_one_episode_two_tasks(tmp_path):
    cfg = CollectConfig(tasks=("reach-v3", "push-v3"), episodes=1, cameras=SMALL, steps_after_success=3, workers=2)
    out = collect(cfg, tmp_path / "ds")
    assert not (out / ".partial").exists() and not (out / ".building").exists()
    ds = RobotDataset(out)
    ds.validate()
    assert ds.num_episodes == 2 and ds.tasks == ["reach the goal position", "push the puck to the goal"]
    assert ds.fps == 80 and ds.features["action"]["shape"] == [4]
    for e, ep in enumerate(ds.episodes):
        rows = ds.episode_rows(e)
        success = ds.column("next.success")[rows]
        first = int(np.argmax(success))
        assert success.any() and ep.extra["success_frame"] == first
        assert len(rows) == first + 1 + 3  # stops 3 frames after the first success
        assert ds.column("next.done")[rows].tolist() == [False] * (len(rows) - 1) + [True]
        np.testing.assert_array_equal(ds.column("observation.state")[rows],
                                      ds.column("observation.environment_state")[rows][:, :4])
        assert np.abs(ds.column("action")[rows]).max() <= 1.0
        for key in ("observation.images.corner2", "observation.images.gripper"):
            imgs = ds.frames(key, rows[[0, len(rows) // 2, -1]])
            assert imgs.shape == (3, 64, 64, 3) and all(img.std() > 10 for img in imgs), f"{key} has blank frames"
    prov = json.loads((out / "meta/collection.json").read_text())
    assert prov["tasks"]["push-v3"]["kept"] == 1 and prov["tasks"]["push-v3"]["tried"] >= 1
    # running the same command again is a no-op; different settings are refused
    assert collect(cfg, out) == out
    with pytest.raises(ConfigError, match="episodes"):
        collect(CollectConfig(tasks=cfg.tasks, episodes=2, cameras=SMALL, steps_after_success=3), out)


def _collect_cmd(out):
    return [sys.executable, "-m", "vla_distill.cli", "collect", "--tasks", "reach-v3", "--episodes", "4",
            "--image-size", "64", "--steps-after-success", "2", "--workers", "1", "--out", str(out)]


# kill -9 at seeded moments is test_faults.py's; the default suite keeps Ctrl-C here
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT],
                         ids=["kill-9", "ctrl-c"])
def test_resume_after_interrupt(tmp_path, sig):
    out = tmp_path / "ds"
    proc = popen_interruptible(_collect_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".partial/attempts").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    stdout, _ = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to resume" in stdout
    done_before = len(list((out / ".partial/attempts").glob("*.json")))
    assert 2 <= done_before < 4, "the kill should land mid-collection"
    assert not (out / "meta/info.json").exists()  # no dataset until every episode is in
    result = subprocess.run(_collect_cmd(out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming: {done_before} attempts already done" in result.stdout
    ds = RobotDataset(out)
    ds.validate()
    assert ds.num_episodes == 4
    seeds = [ep.extra["seed"] for ep in ds.episodes]
    assert len(set(seeds)) == 4  # no duplicated attempt after the resume
    cfg = CollectConfig(tasks=("reach-v3",), episodes=4)
    kept = json.loads((out / "meta/collection.json").read_text())["tasks"]["reach-v3"]["kept_attempts"]
    assert seeds == [cfg.attempt_seed(0, int(name.rsplit("-", 1)[1])) for name in kept]


def test_resume_finds_attempts_of_tasks_named_with_a_slash(tmp_path):
    """LIBERO's tasks are `libero_object/3`: their markers and episodes sit one folder down, and a resume must see
    them (it once started such a collection over)."""
    from vla_distill.collect.collect import Collector

    partial = tmp_path / "ds" / ".partial"
    for name, success in (("libero_object/3-00002", 40), ("libero_object/3-00005", None), ("reach-v3-00001", 7)):
        (partial / "attempts" / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / "attempts" / f"{name}.json").write_text(json.dumps({"success_frame": success, "task": "t"}))
    (partial / "episodes" / "libero_object" / "3-00002").mkdir(parents=True)
    (partial / "episodes" / "reach-v3-00001").mkdir(parents=True)
    markers = Collector(CollectConfig(tasks=("reach-v3",), episodes=1), tmp_path / "ds")._load_markers()
    assert sorted(markers) == ["libero_object/3-00002", "libero_object/3-00005", "reach-v3-00001"]


def test_action_noise_perturbs_the_executed_xyz_reproducibly():
    """DART: the executed xyz actions leave the expert's (seeded, so a resumed run repeats them); the gripper stays
    the expert's; the states differ from the clean rollout's, which is what the teacher's relabels are for."""
    from vla_distill.collect.collect import rollout
    from vla_distill.sim.metaworld.expert import expert_action, expert_policy
    from vla_distill.sim.registry import get_simulator

    with MetaWorldEnv("reach-v3", CameraConfig(names=("corner2",), height=16, width=16)) as env:
        mw = get_simulator("metaworld")
        clean, _ = rollout(env, 7, 3, mw.expert("reach-v3"))
        noisy, first = rollout(env, 7, 3, mw.expert("reach-v3"), action_noise=0.5, noise_dims=mw.noise_dims)
        again, _ = rollout(env, 7, 3, mw.expert("reach-v3"), action_noise=0.5, noise_dims=mw.noise_dims)
    np.testing.assert_array_equal(noisy["action"], again["action"])
    expert = expert_policy("reach-v3")
    relabel = np.stack([expert_action(expert, s) for s in noisy["observation.environment_state"]])
    gap = np.abs(noisy["action"] - relabel)
    assert gap[:, :3].mean() > 0.1 and gap[:, 3].max() == 0
    n = min(len(clean["action"]), len(noisy["action"]))
    assert np.abs(clean["observation.state"][:n] - noisy["observation.state"][:n]).max() > 0.01
    assert first is not None  # reach still succeeds at this noise
    with pytest.raises(ConfigError, match="action_noise"):
        CollectConfig(tasks=("reach-v3",), action_noise=-0.1)
    plan = CollectConfig(tasks=("reach-v3",)).plan()
    assert "action_noise" not in plan and CollectConfig(tasks=("reach-v3",),
                                                        action_noise=0.5).plan()["action_noise"] == 0.5


def test_rotation_noise_leaves_collections_without_it_as_they_were_and_is_refused_where_nothing_turns():
    """collect --rotation-noise: at 0 a rollout draws exactly the noise it drew before the option existed (datasets
    collected earlier resume and rebuild bit for bit); a simulator whose actions do not turn the hand refuses it."""
    from vla_distill.collect.collect import rollout
    from vla_distill.sim.registry import get_simulator

    with MetaWorldEnv("reach-v3", CameraConfig(names=("corner2",), height=16, width=16)) as env:
        mw = get_simulator("metaworld")
        before, _ = rollout(env, 7, 3, mw.expert("reach-v3"), action_noise=0.5, noise_dims=mw.noise_dims)
        now, _ = rollout(env, 7, 3, mw.expert("reach-v3"), action_noise=0.5, noise_dims=mw.noise_dims,
                         rotation_noise=0.0, rotation_dims=(3,))
    np.testing.assert_array_equal(before["action"], now["action"])
    with pytest.raises(ConfigError, match="rotation_noise.*do not turn"):
        CollectConfig(tasks=("reach-v3",), rotation_noise=0.05)
    assert "rotation_noise" not in CollectConfig(tasks=("reach-v3",)).plan()


def test_an_expert_that_needs_precision_is_collected_under_less_noise():
    """expert.noise_scale scales DART's noise for its task (LIBERO's drawer and knob: 0.5): at 0 the noisy rollout is
    the clean one."""
    from vla_distill.collect.collect import rollout
    from vla_distill.sim.registry import get_simulator

    class Precise:
        noise_scale = 0.0

        def __init__(self, expert):
            self.expert = expert

        def __call__(self, env_state):
            return self.expert(env_state)

    with MetaWorldEnv("reach-v3", CameraConfig(names=("corner2",), height=16, width=16)) as env:
        mw = get_simulator("metaworld")
        clean, _ = rollout(env, 7, 3, mw.expert("reach-v3"))
        quiet, _ = rollout(env, 7, 3, Precise(mw.expert("reach-v3")), action_noise=0.5, noise_dims=mw.noise_dims)
    np.testing.assert_array_equal(clean["action"], quiet["action"])


def test_policy_drives_and_every_rollout_is_kept(tmp_path, tiny_student):
    """DAgger: a trained policy acts instead of the expert; every rollout becomes an episode whether it succeeded or
    not, so `annotate --teacher scripted` can relabel the states the policy reached; the cameras must be the
    policy's."""
    from vla_distill.sim.metaworld.expert import expert_action, expert_policy

    cfg = CollectConfig(tasks=("reach-v3",), episodes=1, seed=5, cameras=SMALL, workers=1, policy=str(tiny_student))
    ds = RobotDataset(collect(cfg, tmp_path / "dagger"))
    summary = json.loads((tmp_path / "dagger/meta/collection.json").read_text())
    assert ds.num_episodes == 1 and summary["config"]["policy"] == str(tiny_student)
    assert summary["tasks"]["reach-v3"]["policy_successes"] == int(ds.episodes[0].extra["success_frame"] is not None)
    expert = expert_policy("reach-v3")
    state = ds.column("observation.environment_state")
    relabel = np.stack([expert_action(expert, s) for s in state])
    assert np.abs(ds.column("action") - relabel).mean() > 0.05  # the actions are the (untrained) policy's
    with pytest.raises(ConfigError, match="field 'image_size': .* collect with --image-size 64$"):
        collect(CollectConfig(tasks=("reach-v3",), cameras=CameraConfig(height=32, width=32), policy=str(tiny_student)),
                tmp_path / "wrong")
    with pytest.raises(ConfigError, match="field 'cameras and image_size': .* collect with --cameras corner2,gripper "
                                          "--image-size 64$"):  # both wrong: both named
        collect(CollectConfig(tasks=("reach-v3",), cameras=CameraConfig(("corner2",), 32, 32),
                              policy=str(tiny_student)),
                tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(ConfigError, match="action_noise"):
        CollectConfig(tasks=("reach-v3",), policy=str(tiny_student), action_noise=0.5)
    assert "policy" not in CollectConfig(tasks=("reach-v3",)).plan()
