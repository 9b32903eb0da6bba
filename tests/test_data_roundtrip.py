import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FPS, write_fake_dataset
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import QUANTILE_KEYS


def test_layout_matches_lerobot_v30(fake_dataset):
    root, episodes = fake_dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == FPS and isinstance(info["fps"], int)
    assert info["total_episodes"] == 4 and info["total_frames"] == 28 and info["total_tasks"] == 2
    assert info["splits"] == {"train": "0:4"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert "total_chunks" not in info and "total_videos" not in info
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    assert (root / "videos/observation.images.cam/chunk-000/file-000.mp4").exists()
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert "observation.images.cam" not in data.column_names  # videos are not parquet columns
    assert str(data.schema.field("observation.state").type) == "fixed_size_list<element: float>[3]"
    assert str(data.schema.field("observation.images.png").type) == "struct<bytes: binary, path: string>"
    assert data.column("index").to_pylist() == list(range(28))
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "__index_level_0__"]
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "videos/observation.images.cam/from_timestamp",
                "videos/observation.images.cam/to_timestamp",
                "stats/action/mean", "stats/observation.images.cam/q50", "meta/episodes/chunk_index"):
        assert col in eps.column_names, col
    starts = eps.column("videos/observation.images.cam/from_timestamp").to_pylist()
    assert starts == pytest.approx([0.0, 0.6, 1.5, 2.0])
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", *QUANTILE_KEYS}
    assert np.asarray(stats["observation.images.cam"]["mean"]).shape == (3, 1, 1)


def test_roundtrip_values(fake_dataset):
    root, episodes = fake_dataset
    ds = RobotDataset(root)
    assert ds.num_episodes == 4 and ds.num_frames == 28
    assert ds.tasks == ["task 0", "task 1"]
    assert [ep.extra["seed"] for ep in ds.episodes] == [0, 1, 2, 3]
    for e, frames in enumerate(episodes):
        rows = ds.episode_rows(e)
        np.testing.assert_array_equal(ds.column("action")[rows], frames["action"])
        np.testing.assert_array_equal(ds.column("observation.state")[rows], frames["observation.state"])
        # PNG in parquet is lossless
        np.testing.assert_array_equal(ds.frames("observation.images.png", rows), frames["observation.images.png"])
        # video is within codec tolerance, and frame-exact: each decoded frame is closest to its own original
        got = ds.frames("observation.images.cam", rows).astype(np.float64)
        want = frames["observation.images.cam"].astype(np.float64)
        err = np.abs(got[:, None] - want[None]).mean(axis=(2, 3, 4))
        assert (err.argmin(axis=1) == np.arange(len(rows))).all()
        assert err.diagonal().max() < 10.0  # mean abs error on 0..255 at crf 30, 32 px
    item = ds[7]
    assert item["task"] == "task 1" and int(item["frame_index"]) == 1 and int(item["episode_index"]) == 1
    assert item["observation.images.cam"].shape == (32, 32, 3)


def test_random_access_across_episodes_and_rollover(tmp_path):
    # tiny size limits force several data and video files; the reader must follow each episode's indices
    root = tmp_path / "ds"
    episodes = write_fake_dataset(root, lengths=(5, 7, 6), image=False, data_file_mb=1e-6, video_file_mb=1e-6)
    assert len(list((root / "data").rglob("*.parquet"))) == 3
    assert len(list((root / "videos").rglob("*.mp4"))) == 3
    ds = RobotDataset(root)
    rng = np.random.default_rng(0)
    for r in rng.permutation(ds.num_frames):
        e = int(ds.column("episode_index")[r])
        f = int(ds.column("frame_index")[r])
        got = ds.frames("observation.images.cam", np.array([r]))[0].astype(float)
        dists = [np.abs(got - x).mean() for x in episodes[e]["observation.images.cam"].astype(float)]
        assert int(np.argmin(dists)) == f


def test_stats_against_numpy(fake_dataset):
    root, episodes = fake_dataset
    ds = RobotDataset(root)
    allv = np.concatenate([e["action"] for e in episodes]).astype(np.float64)
    st = ds.stats["action"]
    np.testing.assert_allclose(st["min"], allv.min(0))
    np.testing.assert_allclose(st["max"], allv.max(0))
    np.testing.assert_allclose(st["mean"], allv.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st["std"], allv.std(0), rtol=1e-6)
    assert int(st["count"][0]) == len(allv)
    # quantiles: exact per episode, count-weighted across episodes (lerobot's aggregation)
    lengths = np.array([len(e["action"]) for e in episodes])
    per_ep = np.stack([np.quantile(e["action"].astype(np.float64), 0.5, axis=0) for e in episodes])
    np.testing.assert_allclose(st["q50"], (per_ep * lengths[:, None]).sum(0) / lengths.sum(), rtol=1e-6)
    # image stats are per channel in [0, 1]
    pixels = np.concatenate([e["observation.images.png"] for e in episodes]).astype(np.float64) / 255
    np.testing.assert_allclose(ds.stats["observation.images.png"]["mean"].reshape(3), pixels.mean(axis=(0, 1, 2)),
                               rtol=1e-6)
    # stats over a subset of episodes (a training split) come from the episodes table
    sub = ds.episode_stats([1, 3])
    np.testing.assert_allclose(sub["action"]["mean"],
                               np.concatenate([episodes[1]["action"], episodes[3]["action"]]).mean(0), rtol=1e-5)


def test_image_stats_match_numpy_exactly():
    from vla_distill.data.stats import image_stats

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (37, 20, 24, 3), dtype=np.uint8)
    frames[..., 2] //= 7  # a skewed channel
    st = image_stats(frames)
    chw = np.moveaxis(frames, -1, 1).astype(np.float64) / 255
    for key, fn in {"min": np.min, "max": np.max, "mean": np.mean, "std": np.std}.items():
        np.testing.assert_allclose(st[key].reshape(3), fn(chw, axis=(0, 2, 3)), atol=1e-12)
    for key, q in (("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9), ("q99", 0.99)):
        np.testing.assert_allclose(st[key].reshape(3), np.quantile(chw, q, axis=(0, 2, 3)), atol=1e-12)
    assert st["mean"].shape == (3, 1, 1) and st["count"].tolist() == [37]


def test_merge_copies_every_frame_and_renumbers(tmp_path):
    """Two datasets (the second's videos rolled over into several files) merge into one whose frames decode to the
    sources' exactly (video copied packet for packet), with episodes, indices and tasks renumbered and each episode's
    stats and extra columns kept."""
    from vla_distill.data.merge import MERGE_PATH, merge

    write_fake_dataset(tmp_path / "a", lengths=(6, 9))
    write_fake_dataset(tmp_path / "b", lengths=(5, 8, 7), video_file_mb=0.001)
    merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    m = RobotDataset(tmp_path / "m")
    m.validate()
    sources = [RobotDataset(tmp_path / "a"), RobotDataset(tmp_path / "b")]
    assert m.num_episodes == 5 and m.num_frames == 35 and [ep.index for ep in m.episodes] == list(range(5))
    assert np.array_equal(m.column("index"), np.arange(35))
    e = 0
    for src in sources:
        for i, ep in enumerate(src.episodes):
            rows, merged = src.episode_rows(i), m.episode_rows(e)
            for key in ("observation.images.cam", "observation.images.png"):
                np.testing.assert_array_equal(m.frames(key, merged), src.frames(key, rows))
            for key in ("observation.state", "action", "frame_index"):
                np.testing.assert_array_equal(m.column(key)[merged], src.column(key)[rows])
            assert m.episodes[e].tasks == ep.tasks and m.episodes[e].extra["seed"] == ep.extra["seed"]
            assert np.allclose(m.episode_stats([e])["action"]["mean"], src.episode_stats([i])["action"]["mean"])
            e += 1
    assert sorted(m.tasks) == ["task 0", "task 1"]
    assert np.allclose(m.stats["action"]["mean"], np.concatenate([s.column("action") for s in sources]).mean(0),
                       atol=1e-5)
    ranges = json.loads((tmp_path / "m" / MERGE_PATH).read_text())["sources"]
    assert [r["episodes"] for r in ranges] == [[0, 2], [2, 5]]
    assert not (tmp_path / "m.building").exists()


def test_merge_says_which_episodes_a_policy_drove(tmp_path):
    """A DAgger round merges the demonstrations with a policy's rollouts: merge.json records each source's driven
    episodes (a merge of a merge keeps the first round's), and an older merge (no record) is read from its sources, a
    gone source being a one-line error."""
    from vla_distill.data.format import write_json_atomic
    from vla_distill.data.merge import MERGE_PATH, driven_episodes, merge
    from vla_distill.errors import DatasetError
    from vla_distill.types import COLLECTION_PATH

    write_fake_dataset(tmp_path / "demos", lengths=(6, 9))
    write_fake_dataset(tmp_path / "rollouts", lengths=(5, 8, 7))
    write_json_atomic(tmp_path / "rollouts" / COLLECTION_PATH, {"config": {"env": "metaworld", "policy": "runs/a"}})
    assert driven_episodes(tmp_path / "demos") == [] and driven_episodes(tmp_path / "rollouts") == [0, 1, 2]
    merge([tmp_path / "demos", tmp_path / "rollouts"], tmp_path / "m")
    assert driven_episodes(tmp_path / "m") == [2, 3, 4]
    record = json.loads((tmp_path / "m" / MERGE_PATH).read_text())
    assert [r["driven"] for r in record["sources"]] == [[], [2, 3, 4]]
    write_fake_dataset(tmp_path / "round2", lengths=(4,))
    write_json_atomic(tmp_path / "round2" / COLLECTION_PATH, {"config": {"policy": "runs/b"}})
    merge([tmp_path / "m", tmp_path / "round2"], tmp_path / "m2")
    assert driven_episodes(tmp_path / "m2") == [2, 3, 4, 5]
    for r in record["sources"]:
        del r["driven"]
    (tmp_path / "m" / MERGE_PATH).write_text(json.dumps(record))
    assert driven_episodes(tmp_path / "m") == [2, 3, 4]
    shutil.rmtree(tmp_path / "rollouts")
    with pytest.raises(DatasetError, match="merge.json.*rollouts is gone"):
        driven_episodes(tmp_path / "m")
    for bad in ({"sources": [{"dataset": "x", "episodes": "all"}]}, {"sources": [{"dataset": "x", "episodes": [0, 5],
                                                                                  "driven": [9]}]}, []):
        (tmp_path / "m" / MERGE_PATH).write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match="merge.json.*field '(sources|driven)'"):
            driven_episodes(tmp_path / "m")


def test_merge_refuses_different_features_and_a_used_output(tmp_path):
    from vla_distill.data.merge import merge
    from vla_distill.errors import ConfigError, DatasetError

    write_fake_dataset(tmp_path / "a", lengths=(4,))
    write_fake_dataset(tmp_path / "b", lengths=(4,), image=False)
    with pytest.raises(DatasetError, match="observation.images.png"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        merge([tmp_path / "a", tmp_path / "a"], tmp_path / "used")
    assert (tmp_path / "used" / "x").read_text() == "mine"
    (tmp_path / "a" / "meta" / "annotation.json").write_text("{}")
    with pytest.raises(DatasetError, match="annotated"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_merge_drops_a_feature_only_some_datasets_have_when_asked(tmp_path):
    """A column recorded since a later version (as observation.contact): refused by default with the way out named;
    `drop` leaves it out of the merge, every other column and frame copied."""
    from vla_distill.cli import main
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.data.merge import MERGE_PATH, merge
    from vla_distill.errors import ConfigError, DatasetError

    write_fake_dataset(tmp_path / "a", lengths=(4, 3))
    write_fake_dataset(tmp_path / "b", lengths=(5,), image=False)
    with pytest.raises(DatasetError, match="--drop-features observation.images.png"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"),
                 "--drop-features", "observation.images.png"]) == 0
    m = RobotDataset(tmp_path / "m")
    m.validate()
    assert "observation.images.png" not in m.features and m.num_frames == 12 and "observation.images.cam" in m.features
    assert set(m.stats) >= {"action", "observation.state"} and "observation.images.png" not in m.stats
    assert json.loads((tmp_path / "m" / MERGE_PATH).read_text())["dropped_features"] == ["observation.images.png"]
    with pytest.raises(ConfigError, match="'observation.nothing' is not a feature"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m2", drop=("observation.nothing",))


def test_encoding_leaves_the_threads_scheduling_alone(tmp_path):
    # As root, SVT-AV1 moved the encoding thread to SCHED_FIFO 99 for good (collect workers starved the machine).
    from vla_distill.data.video import encode_video

    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    encode_video(np.zeros((3, 32, 32, 3), np.uint8), tmp_path / "v.mp4", 10)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
