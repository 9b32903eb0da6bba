import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import FPS, fake_episode_frames, fake_features
from vla_distill.data import stats as stats_lib
from vla_distill.data.arrow import to_arrow
from vla_distill.data.columns import add_columns
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.video import encode_video
from vla_distill.data.windows import FrameCache, WindowedDataset, deltas_from_timestamps, frame_identity, split_episodes
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.types import DEFAULT_FEATURES


def write_v21(root, lengths=(5, 8, 6)):
    """The legacy layout as lerobot v0.3.3 writes it: one parquet and one mp4 per episode, jsonl metadata."""
    features = {**fake_features(image=False), **DEFAULT_FEATURES}
    info = {
        "codebase_version": "v2.1", "robot_type": "fake", "total_episodes": len(lengths), "total_frames": sum(lengths),
        "total_tasks": 2, "total_videos": len(lengths), "total_chunks": 1, "chunks_size": 1000, "fps": FPS,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    episodes, start, ep_lines, stat_lines = [], 0, [], []
    for e, n in enumerate(lengths):
        frames = fake_episode_frames(n, features, seed=e)
        episodes.append(frames)
        cols = {
            "observation.state": frames["observation.state"], "action": frames["action"],
            "timestamp": (np.arange(n) / FPS).astype(np.float32), "frame_index": np.arange(n),
            "episode_index": np.full(n, e),
            "index": np.arange(start, start + n), "task_index": np.full(n, e % 2),
        }
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({k: to_arrow(v, features[k]) for k, v in cols.items()}), path)
        vpath = root / f"videos/chunk-000/observation.images.cam/episode_{e:06d}.mp4"
        vpath.parent.mkdir(parents=True, exist_ok=True)
        encode_video(frames["observation.images.cam"], vpath, FPS)
        ep_lines.append(json.dumps({"episode_index": e, "tasks": [f"task {e % 2}"], "length": n}))
        st = stats_lib.episode_stats({"action": frames["action"]}, features)
        stat_lines.append(json.dumps({"episode_index": e, "stats": stats_lib.to_json(st)}))
        start += n
    (root / "meta/episodes.jsonl").write_text("\n".join(ep_lines) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stat_lines) + "\n")
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "task 0"}\n{"task_index": 1, "task": "task 1"}\n')
    return episodes


def test_read_v21(tmp_path):
    episodes = write_v21(tmp_path / "v21")
    ds = RobotDataset(tmp_path / "v21")
    assert ds.version == "v2.1" and ds.num_episodes == 3 and ds.num_frames == 19
    assert ds.tasks == ["task 0", "task 1"]
    for e, frames in enumerate(episodes):
        rows = ds.episode_rows(e)
        np.testing.assert_array_equal(ds.column("action")[rows], frames["action"])
        got = ds.frames("observation.images.cam", rows).astype(float)
        want = frames["observation.images.cam"].astype(float)
        err = np.abs(got[:, None] - want[None]).mean(axis=(2, 3, 4))
        assert (err.argmin(axis=1) == np.arange(len(rows))).all()
    allv = np.concatenate([f["action"] for f in episodes])
    np.testing.assert_allclose(ds.stats["action"]["mean"], allv.mean(0), rtol=1e-5)


def test_windows_and_padding_at_episode_edges(fake_dataset):
    root, episodes = fake_dataset  # lengths 6, 9, 5, 8
    ds = RobotDataset(root)
    deltas = {"observation.state": [-2, -1, 0], "action": list(range(4)), "observation.images.cam": [-1, 0]}
    wd = WindowedDataset(ds, deltas)
    assert len(wd) == 28
    first = wd[0]  # episode 0, frame 0: the past is padded with the first frame
    assert first["observation.state_is_pad"].tolist() == [True, True, False]
    assert torch.equal(first["observation.state"][0], first["observation.state"][2])
    assert first["action_is_pad"].tolist() == [False] * 4
    last = wd[5]  # episode 0, last frame: the future is padded with the last action, never episode 1's
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(last["action"].numpy(), np.repeat(episodes[0]["action"][5:6], 4, axis=0))
    mid = wd[6 + 4]  # episode 1, frame 4
    np.testing.assert_array_equal(mid["action"].numpy(), episodes[1]["action"][4:8])
    assert not mid["action_is_pad"].any() and not mid["observation.state_is_pad"].any()
    img = mid["observation.images.cam"]
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    # the decoded cache agrees with direct decoding
    direct = ds.frames("observation.images.cam", np.array([9, 10]))
    np.testing.assert_allclose(img.permute(0, 2, 3, 1).numpy() * 255, direct, atol=1e-3)
    assert mid["task"] == "task 1" and mid["observation.images.png"].shape == (3, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(wd, batch_size=4, shuffle=True)))
    assert batch["action"].shape == (4, 4, 2) and batch["action_is_pad"].shape == (4, 4)


def test_split_by_episode_and_delta_timestamps(fake_dataset):
    root, _ = fake_dataset
    ds = RobotDataset(root)
    train, val = split_episodes(ds, val_fraction=0.5, seed=0)
    assert sorted(train + val) == [0, 1, 2, 3] and not set(train) & set(val)
    assert {ds.episodes[e].tasks[0] for e in val} == {"task 0", "task 1"}  # stratified by task
    wd = WindowedDataset(ds, {"action": [0]}, episodes=val)
    assert set(ds.column("episode_index")[wd.rows]) == set(val)
    assert deltas_from_timestamps({"action": [0.0, 0.1, 0.2]}, FPS) == {"action": [0, 1, 2]}
    with pytest.raises(ConfigError, match="delta_timestamps.action"):
        deltas_from_timestamps({"action": [0.05]}, FPS)


def test_add_columns_without_reencoding_videos(fake_dataset, tmp_path):
    root, episodes = fake_dataset
    ds = RobotDataset(root)
    teacher = np.arange(ds.num_frames * 3 * 2, dtype=np.float32).reshape(-1, 3, 2)
    phase = (np.arange(ds.num_frames) % 3).astype(np.int64)
    feats = {"action.teacher": {"dtype": "float32", "shape": [3, 2], "names": None},
             "phase_index": {"dtype": "int64", "shape": [1], "names": None}}
    out = add_columns(root, {"action.teacher": teacher, "phase_index": phase}, feats, out=tmp_path / "annotated")
    video = "videos/observation.images.cam/chunk-000/file-000.mp4"
    assert (out / video).stat().st_ino == (root / video).stat().st_ino  # hard link: the same bytes
    ds2 = RobotDataset(out)
    np.testing.assert_array_equal(ds2.column("action.teacher"), teacher)
    np.testing.assert_array_equal(ds2.column("phase_index"), phase)
    np.testing.assert_array_equal(ds2.column("action"), ds.column("action"))
    assert ds2.features["action.teacher"]["shape"] == [3, 2]
    np.testing.assert_allclose(ds2.stats["phase_index"]["max"], [2])
    assert "stats/action.teacher/mean" in pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").column_names
    # in place: the original gains the column; a second add of the same key is refused
    add_columns(root, {"phase_index": phase}, feats)
    np.testing.assert_array_equal(RobotDataset(root).column("phase_index"), phase)
    with pytest.raises(DatasetError, match="phase_index"):
        add_columns(root, {"phase_index": phase}, feats)
    with pytest.raises(DatasetError, match="shape"):
        add_columns(root, {"action.teacher": teacher[:, :2]}, feats, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_copies_sharing_a_recordings_videos_share_its_frame_cache(fake_dataset, tmp_path):
    """An annotated copy hard-links the recording's videos: decoded once for both. Frames kept in the data files,
    a re-encoded video, or other spans of the same file get their own cache."""
    root, episodes = fake_dataset
    feats = {"phase_index": {"dtype": "int64", "shape": [1], "names": None}}
    n = RobotDataset(root).num_frames
    copy = add_columns(root, {"phase_index": np.zeros(n, np.int64)}, feats, out=tmp_path / "annotated")
    cam, png = "observation.images.cam", "observation.images.png"
    a, b = RobotDataset(root), RobotDataset(copy)
    assert frame_identity(a, cam) == frame_identity(b, cam) and frame_identity(a, png) != frame_identity(b, png)
    first = FrameCache(a, cam)
    assert FrameCache(b, cam).path == first.path
    np.testing.assert_array_equal(FrameCache(b, cam).frames, first.frames)
    video = copy / "videos/observation.images.cam/chunk-000/file-000.mp4"
    video.unlink()  # replaced by a copy: the same frames, a new file
    shutil.copyfile(root / "videos/observation.images.cam/chunk-000/file-000.mp4", video)
    assert frame_identity(RobotDataset(copy), cam) != frame_identity(a, cam)
