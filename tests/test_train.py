"""`vla-distill train` on a real annotated MetaWorld dataset: learning, checkpoint layout, resume, kill -9, bad
input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import popen_interruptible
from vla_distill.data.dataset import RobotDataset
from vla_distill.errors import ConfigError
from vla_distill.models.checkpoint import load_pretrained
from vla_distill.models.losses import LossConfig
from vla_distill.train.config import TrainConfig
from vla_distill.train.student import train

CLI = [sys.executable, "-m", "vla_distill.cli"]


def small(annotated, out, **kw) -> TrainConfig:
    base = dict(dataset=str(annotated), out=str(out), preset="tiny", steps=6, batch_size=8, lr=1e-3, warmup_steps=2,
                log_every=1, save_every=3, val_batches=2)
    return TrainConfig(**{**base, **kw})


def curve(run: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split", "train") == split]


def test_training_learns_and_writes_lerobot_layout(metaworld_dataset, annotated, tmp_path):
    run = tmp_path / "run"
    last = train(small(annotated, run, steps=40, batch_size=16, save_every=20))
    ckpt = run / "checkpoints"
    assert (ckpt / "last").is_symlink() and last == (ckpt / "000040").resolve()
    for rel in ("pretrained_model/config.json", "pretrained_model/model.safetensors", "pretrained_model/stats.json",
                "pretrained_model/train_config.json", "pretrained_model/provenance.json",
                "training_state/optimizer_state.safetensors", "training_state/optimizer_param_groups.json",
                "training_state/scheduler_state.json", "training_state/rng_state.safetensors",
                "training_state/training_step.json"):
        assert (ckpt / "000020" / rel).is_file() and (ckpt / "000040" / rel).is_file(), rel
    rows = curve(run)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, late = np.mean([r["action"] for r in rows[:5]]), np.mean([r["action"] for r in rows[-5:]])
    assert late < 0.7 * first, (first, late)
    val = curve(run, "val")
    assert [r["step"] for r in val] == [20, 40]
    assert {"action_mse", "action_mae", "phase_accuracy", "direction_top1"} <= set(val[-1])
    assert val[-1]["phase_accuracy"] > 0.4  # 4 phases; chance is below this on these episodes
    policy = load_pretrained(run)
    prov = policy.provenance
    assert len(prov["dataset_fingerprint"]) == 16 and prov["teacher"]["kind"] == "scripted" and prov["step"] == 40
    assert policy.config.tasks and policy.task_embeddings.abs().sum() > 0  # instructions ship with the checkpoint
    ds = RobotDataset(annotated)
    obs = {k: torch.rand(1, 3, 64, 64) for k in ds.camera_keys}
    obs["observation.state"] = torch.zeros(1, 4)
    obs["task"] = [ds.tasks[0]]
    assert policy.select_action(obs).shape == (1, 4)

    # A trained student teaches through the checkpoint teacher (a large student can teach a small one).
    from vla_distill.annotate.annotate import annotate
    from vla_distill.annotate.config import AnnotateConfig

    out = annotate(metaworld_dataset, tmp_path / "relabelled",
                   AnnotateConfig(teacher=f"checkpoint:{run}", phases="none",
                                                                      directions="none", audit=False))
    relabelled = RobotDataset(out)
    rows = relabelled.episode_rows(0)[:3]
    frames = {k: torch.from_numpy(relabelled.frames(k, rows)).permute(0, 3, 1, 2).float() / 255 for k in ds.camera_keys}
    state = torch.from_numpy(relabelled.column("observation.state")[rows])
    expect = policy.predict_action_chunk({**frames, "observation.state": state,
                                          "task": [ds.tasks[int(t)] for t in relabelled.column("task_index")[rows]]})
    np.testing.assert_allclose(relabelled.column("action.teacher")[rows], expect[:, 0].numpy(), atol=1e-5)


def test_resume_matches_an_uninterrupted_run(annotated, tmp_path):
    full = tmp_path / "full"
    train(small(annotated, full, ema_decay=0.9))
    part = tmp_path / "part"
    train(small(annotated, part, ema_decay=0.9, steps=3))
    # resumed with another checkpoint cadence: where it saves changes, what it trains does not
    train(small(annotated, part, ema_decay=0.9, steps=6, save_every=1), resume=True, overrides=("steps", "save_every"))
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["000003", "000004", "000005", "000006", "last"]
    a, b = curve(full), curve(part)
    assert [r["step"] for r in b] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in a], rtol=1e-4)


@pytest.mark.slow
def test_kill_9_loses_only_steps_since_the_last_checkpoint(annotated, tmp_path):
    run = tmp_path / "run"
    args = [*CLI, "train", "--dataset", str(annotated), "--out", str(run), "--steps", "400", "--batch-size", "8",
            "--save-every", "4", "--log-every", "1", "--val-batches", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "000008").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = int(json.loads((run / "checkpoints/last/training_state/training_step.json").read_text())["step"])
    assert done >= 8
    logged = max(r["step"] for r in curve(run))
    assert logged - done < 4 + 2  # at most the steps since the last checkpoint (plus the one being logged)
    # the same command, only longer: it continues (no --resume needed)
    r = subprocess.run([*args[:9], str(done + 3), *args[10:]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming at step {done}" in r.stderr
    assert [x["step"] for x in curve(run)] == list(range(1, done + 4))
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_ctrl_c_says_where_the_run_stands_and_the_same_command_continues(annotated, tmp_path):
    run = tmp_path / "run"
    args = [*CLI, "train", "--dataset", str(annotated), "--out", str(run), "--steps", "400", "--batch-size", "8",
            "--save-every", "4", "--log-every", "1", "--val-batches", "1"]
    proc = popen_interruptible(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "000004").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    done = int(json.loads((run / "checkpoints/last/training_state/training_step.json").read_text())["step"])
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted: the last checkpoint is {done:06d} in {run}; "
                                            "run the same command again to continue")
    r = subprocess.run([*args[:9], str(done + 2), *args[10:]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and [x["step"] for x in curve(run)] == list(range(1, done + 3))


def test_bad_input_names_the_loss_the_column_and_the_way_out(metaworld_dataset, annotated, tmp_path):
    def cli(*a):
        return subprocess.run([*CLI, "train", "--out", str(tmp_path / "r"), "--steps", "2", *a], capture_output=True,
                              text=True)

    r = cli("--dataset", str(metaworld_dataset))
    assert r.returncode == 2 and "action.teacher" in r.stderr and "--target dataset" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("--dataset", str(metaworld_dataset), "--target", "dataset")
    assert r.returncode == 2 and all(x in r.stderr for x in ("phase loss", "phase_index", "--phase-weight 0"))
    r = cli("--dataset", str(metaworld_dataset), "--target", "dataset", "--no-phase-loss")
    assert r.returncode == 2 and "direction loss" in r.stderr and "--direction-weight 0" in r.stderr
    r = cli("--dataset", str(annotated), "--preset", "tinny")
    assert r.returncode == 2 and "did you mean 'tiny'" in r.stderr
    r = cli("--dataset", str(annotated), "--horizon", "0")
    assert r.returncode == 2 and "horizon" in r.stderr
    assert not (tmp_path / "r").exists()  # nothing written for bad input


def test_dataset_actions_train_and_a_rerun_with_other_settings_is_refused(metaworld_dataset, tmp_path):
    """--target dataset with both auxiliary losses off trains on an unannotated dataset (plain behaviour cloning);
    the same --out with other settings is refused in one line naming the first setting that differs."""
    run = tmp_path / "bc"
    train(small(metaworld_dataset, run, steps=2, save_every=2, target="dataset",
                loss=LossConfig(phase_weight=0, direction_weight=0)))
    assert (run / "checkpoints/last/pretrained_model/model.safetensors").is_file()
    r = subprocess.run([*CLI, "train", "--dataset", str(metaworld_dataset), "--out", str(run), "--target", "dataset"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "other settings" in r.stderr and str(run) in r.stderr and "new --out" in r.stderr


@pytest.mark.slow
def test_a_run_without_a_complete_checkpoint_starts_over(annotated, tmp_path):
    """kill -9 (or a full disk) while the first checkpoint was written leaves its step directory half-written and no
    `last`: the same command starts over, removing what the attempt left, and ends as an uninterrupted run."""
    run = tmp_path / "run"
    args = [*CLI, "train", "--dataset", str(annotated), "--out", str(run), "--steps", "2", "--batch-size", "8",
            "--save-every", "2", "--log-every", "1", "--val-batches", "1"]
    assert subprocess.run(args, capture_output=True, text=True, timeout=300).returncode == 0
    whole = curve(run)
    (run / "checkpoints" / "last").unlink()  # as it was before the first save finished
    (run / "checkpoints" / "000002").rename(run / "checkpoints" / ".000002.tmp")
    (run / "checkpoints" / ".000002.tmp" / "training_state" / "training_step.json").unlink()
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no complete checkpoint from an earlier attempt; starting over" in r.stderr
    assert [x["step"] for x in curve(run)] == [1, 2] and not list((run / "checkpoints").glob(".*.tmp"))
    np.testing.assert_allclose([x["loss"] for x in curve(run)], [x["loss"] for x in whole], rtol=1e-5)
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)  # finished: the rerun has nothing to do,
    assert r.returncode == 0 and "already trained (2 of 2 steps)" in r.stderr  # and says so before reading the data
    assert "first batch" not in r.stderr and [x["step"] for x in curve(run)] == [1, 2]


def test_torchrun_two_processes_on_gloo(annotated, tmp_path):
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vla_distill.cli", "train",
                        "--dataset", str(annotated), "--out", str(run), "--steps", "4", "--batch-size", "8",
                        "--save-every", "4", "--log-every", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stderr
    assert [x["step"] for x in curve(run)] == [1, 2, 3, 4]


def test_pretrained_encoder_trains_on_cached_features_and_ships_its_weights(annotated, tmp_path):
    from vla_distill.models.efficientnet import weights_file

    run = tmp_path / "kp"
    train(small(annotated, run, vision="efficientnet-lite0", horizon=3, steps=4, save_every=4))
    cache = sorted((Path(os.environ["VLA_DISTILL_CACHE"]) / "frames").glob("*/*.efficientnet-lite0-s8.f16.npy"))
    ds = RobotDataset(annotated)
    assert len(cache) == len(ds.camera_keys)
    cam = sorted(ds.camera_keys)[0]
    cache = [p for p in cache if p.name.startswith(cam + ".")]
    feats = np.load(cache[0], mmap_mode="r")
    assert feats.shape == (ds.num_frames, 40, 8, 8) and np.isfinite(feats).all()  # 64 px at stride 8
    # The cache holds what the checkpoint's own trunk computes from the pixels of that frame.
    policy = load_pretrained(run).eval()
    pixels = torch.from_numpy(ds.frames(cam, np.array([5]))).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        torch.testing.assert_close(policy.encoder.trunk(pixels), torch.from_numpy(np.asarray(feats[5:6], np.float32)),
                                   atol=2e-2, rtol=1e-2)  # float16 storage
    # The ImageNet weights travel inside the checkpoint: nothing else is needed to run it.
    state = torch.load(weights_file("efficientnet-lite0"), weights_only=True)
    torch.testing.assert_close(policy.encoder.trunk.blocks[3].depthwise_conv.weight,
                               state["_blocks.3._depthwise_conv.weight"])
    stamp = cache[0].stat().st_mtime_ns
    train(small(annotated, tmp_path / "again", vision="efficientnet-lite0", steps=2, save_every=2))
    assert cache[0].stat().st_mtime_ns == stamp  # the second run reads the first's cache


def test_pretrained_trunk_fine_tuned_after_a_stride(annotated, tmp_path):
    """--vision-tune-from 4: the trunk's stages after stride 4 train with the policy at --vision-lr-scale times the lr,
    on cached stride-4 features of the frozen stages before; BatchNorm keeps ImageNet's statistics; the checkpoint
    says so and runs from pixels. Without a pretrained trunk, or at a stride that is no stage's end, a one-line
    configuration error."""
    from vla_distill.models.efficientnet import weights_file

    run = tmp_path / "ft"
    train(small(annotated, run, vision="efficientnet-lite0", vision_tune_from=4, vision_lr_scale=0.1, horizon=3,
                steps=4, save_every=4))
    ds = RobotDataset(annotated)
    cache = sorted((Path(os.environ["VLA_DISTILL_CACHE"]) / "frames").glob("*/*.efficientnet-lite0-s4.f16.npy"))
    assert len(cache) == len(ds.camera_keys) and np.load(cache[0], mmap_mode="r").shape == (ds.num_frames, 24, 16, 16)
    policy = load_pretrained(run)
    assert policy.config.vision.tune_from == 4
    state = torch.load(weights_file("efficientnet-lite0"), weights_only=True)
    trunk = policy.encoder.trunk
    torch.testing.assert_close(trunk.blocks[2].depthwise_conv.weight, state["_blocks.2._depthwise_conv.weight"])
    moved = (trunk.blocks[3].depthwise_conv.weight - state["_blocks.3._depthwise_conv.weight"]).abs().max()
    assert 0 < moved < 1e-3  # 4 steps at a tenth of small()'s lr
    torch.testing.assert_close(trunk.blocks[3].bn1.running_mean, state["_blocks.3._bn1.running_mean"])
    cam = sorted(ds.camera_keys)[0]
    pixels = torch.from_numpy(ds.frames(cam, np.array([5]))).permute(0, 3, 1, 2).float() / 255
    feats = torch.from_numpy(np.asarray(np.load(cache[0] if cache[0].name.startswith(cam + ".") else cache[1],
                                                mmap_mode="r")[5:6], np.float32))
    with torch.no_grad():  # pixels through the whole trunk = the cache through the tuned stages
        torch.testing.assert_close(policy.eval().encoder.trunk(pixels), trunk.tuned(feats), atol=3e-2, rtol=1e-2)
    with pytest.raises(ConfigError, match="vision.tune_from"):
        train(small(annotated, tmp_path / "bad", vision="resnet", vision_tune_from=4, steps=2, save_every=2))
    with pytest.raises(ConfigError, match="vision.tune_from"):
        train(small(annotated, tmp_path / "bad8", vision="efficientnet-lite0", vision_tune_from=8, steps=2,
                    save_every=2))


def test_aux_state_is_learned_in_training_only(annotated, tmp_path):
    """--aux-state: the privileged column is a training target with its stats in the checkpoint, validated in raw
    units; the trained policy acts without it."""
    key = "observation.environment_state"
    run = tmp_path / "aux"
    train(small(annotated, run, vision="efficientnet-lite0", aux_state=key, steps=4, save_every=4))
    rows = curve(run)
    assert all("aux_state" in r for r in rows) and rows[-1]["aux_state"] < rows[0]["aux_state"]
    val = curve(run, "val")[-1]
    assert 0 < val["aux_state_mae"] <= val["aux_state_mae_max"]
    policy = load_pretrained(run).eval()
    ds = RobotDataset(annotated)
    env = np.asarray(ds.column(key), np.float64)
    assert policy.config.aux_state_key == key and policy.config.aux_state_dim == env.shape[-1]
    assert abs(policy.aux_state_mean.numpy() - env.mean(0)).max() < 0.05  # training-split stats: close to all frames'
    assert policy.num_parameters() - policy.num_parameters(deployed=True) > policy.aux_state_head.weight.numel()
    obs = {k: torch.from_numpy(ds.frames(k, np.array([3]))).permute(0, 3, 1, 2).float() / 255 for k in ds.camera_keys}
    obs |= {"observation.state": torch.from_numpy(np.asarray(ds.column("observation.state")[3:4], np.float32)),
            "task": [ds.tasks[0]]}
    assert policy.predict_action_chunk(obs).shape == (1, 1, 4)  # no environment state needed to act


def test_aux_state_needs_a_numeric_column(annotated, tmp_path):
    def cli(*a):
        return subprocess.run([*CLI, "train", "--dataset", str(annotated), "--out", str(tmp_path / "r"), "--steps", "2",
                               *a], capture_output=True, text=True)

    r = cli("--aux-state", "observation.goal")
    assert r.returncode == 2 and "observation.goal" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cam = RobotDataset(annotated).camera_keys[0]
    r = cli("--aux-state", cam)
    assert r.returncode == 2 and "numeric column" in r.stderr and cam in r.stderr
    assert not (tmp_path / "r").exists()


def test_phase_consistent_gripper_is_one_command_per_gripper_state_switching_where_the_teacher_did():
    from vla_distill.train.targets import phase_consistent_gripper

    # approach (open, a toggling burst inside), the close commanded 2 frames before the fingers move (the labelled
    # grasp), grasp + transport (shut, one toggle), then two frames with unknown phase
    g = np.array([-1, -1, 1, -1, 1, -1, -1, -1, 1, 1] + [1, 1, 1, -1, 1, 1, 1, 1, 1, 1] + [0.3, -0.2], np.float32)
    phases = np.array([0] * 10 + [1] * 2 + [2] * 8 + [-1] * 2)
    actions = np.stack([np.full_like(g, 0.5), g], 1)
    out = phase_consistent_gripper(actions, phases, [(0, 22)])
    assert out[:8, 1].tolist() == [-1] * 8 and out[8:20, 1].tolist() == [1] * 12  # switched where the teacher did
    assert out[20:, 1].tolist() == pytest.approx([0.3, -0.2])  # unknown phase: the teacher's own command
    assert (out[:, 0] == 0.5).all() and actions[2, 1] == 1  # other dimensions and the input untouched
    chunks = np.stack([actions, actions], 1)  # (N, K, D) teacher chunks: each chunk step alike
    assert np.array_equal(phase_consistent_gripper(chunks, phases, [(0, 22)])[:, :, 1], np.stack([out[:, 1]] * 2, 1))
    two = phase_consistent_gripper(actions, np.zeros(22, np.int64), [(0, 3), (3, 22)])  # stretches end with episodes
    assert two[:3, 1].tolist() == [-1] * 3 and two[3:, 1].tolist() == [1] * 19


def test_gripper_from_phases_trains_on_the_anchored_targets(metaworld_dataset, annotated, tmp_path):
    """A clean teacher's commands pass through unchanged; a toggling one's are pulled back to what it meant, and the
    run trains and normalizes on those."""
    from vla_distill.data.columns import add_columns
    from vla_distill.teachers.noisy import NoiseConfig, corrupt
    from vla_distill.train.student import action_targets

    ds = RobotDataset(annotated)
    clean = np.asarray(ds.column("action.teacher"))
    assert np.array_equal(action_targets(ds, small(annotated, tmp_path, gripper_from_phases=True), "action.teacher"),
                          clean)
    noise = NoiseConfig(std=0.1, toggle=0.1, burst=10, stale=0.0, seed=0)
    noisy = np.concatenate([corrupt(clean[r][:, None], e, noise)[:, 0] for e, r in
                            enumerate(map(ds.episode_rows, range(ds.num_episodes)))])
    copy = add_columns(annotated, {"action.teacher": noisy}, {"action.teacher": ds.features["action.teacher"]},
                       out=tmp_path / "noisy", overwrite=True)
    cfg = small(copy, tmp_path / "g", gripper_from_phases=True, steps=2, save_every=2)
    anchored = action_targets(RobotDataset(copy), cfg, "action.teacher")
    assert np.array_equal(anchored[:, :3], noisy[:, :3])
    assert np.abs(anchored[:, 3] - clean[:, 3]).mean() < 0.5 * np.abs(noisy[:, 3] - clean[:, 3]).mean()
    train(cfg)
    assert json.loads((tmp_path / "g" / "train_config.json").read_text())["gripper_from_phases"] is True
    policy = load_pretrained(tmp_path / "g")
    assert abs(policy.action_std.numpy()[3] - anchored[:, 3].std()) < abs(policy.action_std.numpy()[3] - noisy[:,
                                                                                                               3].std())
    r = subprocess.run([*CLI, "train", "--dataset", str(metaworld_dataset), "--out", str(tmp_path / "r"), "--target",
                        "dataset", "--no-phase-loss", "--no-direction-loss", "--gripper-from-phases"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--gripper-from-phases" in r.stderr and "phase_index" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_rollout_chunks_count_only_their_first_steps(annotated, tmp_path):
    """--rollout-steps N: on the episodes a policy drove (a DAgger round's, as the dataset records them) the action
    loss counts only each chunk's first N steps; the other episodes' chunks are untouched, and a run trains with it."""
    from vla_distill.data.format import write_json_atomic
    from vla_distill.train.views import make_views, policy_batch
    from vla_distill.types import COLLECTION_PATH, TEACHER_ACTION

    ds = RobotDataset(annotated)
    every = list(range(ds.num_episodes))
    plain = make_views(ds, [TEACHER_ACTION], TEACHER_ACTION, 4, every, [])
    views = make_views(ds, [TEACHER_ACTION], TEACHER_ACTION, 4, every, [], driven=[1], driven_steps=1)
    js = np.arange(len(views.train))
    pad, before = (policy_batch(v.train.batch(js), v)["action_is_pad"] for v in (views, plain))
    driven = torch.from_numpy(ds.column("episode_index")[views.train.rows] == 1)
    assert driven.any() and pad[driven, 1:].all() and not pad[driven, 0].any()
    assert torch.equal(pad[~driven], before[~driven]) and not before[driven, 1:].all()
    rollouts = tmp_path / "rollouts"
    shutil.copytree(annotated, rollouts)
    write_json_atomic(rollouts / COLLECTION_PATH, {"config": {"policy": "runs/first"}})
    train(small(rollouts, tmp_path / "run", rollout_steps=1, horizon=4))
    with pytest.raises(ValueError, match="rollout_steps: must be >= 0"):
        small(rollouts, tmp_path / "bad", rollout_steps=-1)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["rollout_steps"] == 1


def test_the_checkpoint_carries_how_many_actions_of_a_chunk_to_execute(annotated, tmp_path):
    """--n-action-steps is the deployed student's replanning (lerobot's n_action_steps): select_action, eval's actor
    and run's loop execute that many actions of each chunk unless told otherwise."""
    from vla_distill.eval.actors import PolicyActor

    run = train(small(annotated, tmp_path / "run", steps=2, horizon=3, n_action_steps=1))
    policy = load_pretrained(run)
    assert policy.config.n_action_steps == 1 and policy.horizon == 3
    calls = []
    predict = policy.predict_action_chunk
    policy.predict_action_chunk = lambda batch: calls.append(1) or predict(batch)
    ds = RobotDataset(annotated)
    obs = {k: torch.rand(1, 3, 64, 64) for k in ds.camera_keys} | {"observation.state": torch.zeros(1, 4),
                                                                      "task": [ds.tasks[0]]}
    policy.reset()
    for _ in range(3):
        policy.select_action(obs)
    assert len(calls) == 3  # a new chunk every step, where the default queue would have asked once
    assert PolicyActor(str(run)).chunks.n == 1 and PolicyActor(str(run), n_action_steps=3).chunks.n == 3
    with pytest.raises(ValueError, match="n_action_steps: must be 0"):
        small(annotated, tmp_path / "bad", horizon=3, n_action_steps=4)
    # a deployment choice measured after training: export sets it in the bundle
    from vla_distill.deploy.export import export
    from vla_distill.errors import ConfigError

    manifest = export(run, tmp_path / "bundle", n_action_steps=2)
    assert manifest["action"]["n_action_steps"] == 2 and load_pretrained(tmp_path / "bundle").n_action_steps == 2
    with pytest.raises(ConfigError, match="horizon"):
        export(run, tmp_path / "bundle4", n_action_steps=4)
    assert not (tmp_path / "bundle4").exists()
