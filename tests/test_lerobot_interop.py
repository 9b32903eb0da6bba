"""Compatibility with lerobot's own LeRobotDataset code.

The golden test always runs: a dataset that lerobot-dataset 0.4.4 wrote (tests/fixtures/lerobot_v30, made by
`scripts/lerobot_interop.sh --golden`) must open in ours and give what lerobot itself decoded from it.
The `interop` tests run lerobot live from .venv-lerobot (`make interop`), in both directions.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import write_fake_dataset
from vla_distill.data.dataset import RobotDataset

HERE = Path(__file__).parent
GOLDEN = HERE / "fixtures" / "lerobot_v30"
LEROBOT_PY = os.environ.get("VLA_DISTILL_LEROBOT_PYTHON", str(HERE.parent / ".venv-lerobot" / "bin" / "python"))


def assert_matches_lerobot(ds: RobotDataset, expected: dict[str, np.ndarray]) -> None:
    assert len(expected["index"]) == ds.num_frames
    rows = np.arange(ds.num_frames)
    for key in expected:
        if key == "task":
            got = [ds.tasks[int(t)] for t in ds.column("task_index")]
            assert got == expected["task"].tolist()
        elif key in ds.camera_keys:
            got = ds.frames(key, rows).astype(np.int16)
            want = expected[key].astype(np.int16)
            if ds.features[key]["dtype"] == "image":
                np.testing.assert_array_equal(got, want)  # PNG: lossless both ways
            else:
                # the same frame (nearest in content among its episode's frames), decoders agree to a few levels
                err = np.abs(got - want).mean(axis=(1, 2, 3))
                assert err.max() < 2.0, f"{key}: mean abs difference {err.max():.2f} vs lerobot's decoder"
                for i in rows:
                    ep = ds.episode_rows(ds._episode_row(int(i)))
                    dists = np.abs(want[ep] - got[i]).mean(axis=(1, 2, 3))
                    assert ep[int(dists.argmin())] == i, f"{key}: frame {i} decoded as another frame"
        else:
            np.testing.assert_array_equal(np.asarray(ds.column(key)).reshape(expected[key].shape), expected[key],
                                          err_msg=key)


def test_golden_dataset_written_by_lerobot_opens_frame_exact():
    if not GOLDEN.exists():
        pytest.skip("golden fixture missing: run scripts/lerobot_interop.sh --golden")
    ds = RobotDataset(GOLDEN)
    assert ds.version == "v3.0" and ds.num_episodes == 3
    with np.load(HERE / "fixtures" / "lerobot_v30_expected.npz") as z:
        expected = {k: z[k] for k in z.files}
    assert_matches_lerobot(ds, expected)


def run_lerobot(*args: str) -> None:
    if not Path(LEROBOT_PY).exists():
        pytest.skip("lerobot reference environment missing: run `make interop`")
    result = subprocess.run([LEROBOT_PY, str(HERE / "interop" / "lerobot_side.py"), *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.interop
def test_lerobot_opens_our_dataset(tmp_path):
    root = tmp_path / "ours"
    write_fake_dataset(root)
    run_lerobot("read", str(root), str(tmp_path / "dump.npz"))
    summary = json.loads((tmp_path / "dump.json").read_text())
    assert summary == {"num_episodes": 4, "num_frames": 28, "codebase_version": "v3.0"}
    with np.load(tmp_path / "dump.npz") as z:
        expected = {k: z[k] for k in z.files}
    assert_matches_lerobot(RobotDataset(root), expected)


@pytest.mark.interop
def test_we_open_a_dataset_lerobot_writes(tmp_path):
    root = tmp_path / "theirs"
    run_lerobot("write", str(root), str(tmp_path / "dump.npz"))
    with np.load(tmp_path / "dump.npz") as z:
        expected = {k: z[k] for k in z.files}
    ds = RobotDataset(root)
    ds.validate()
    assert_matches_lerobot(ds, expected)


def test_our_layout_matches_what_lerobot_writes(tmp_path):
    """Same info.json keys, same episodes-table columns, same parquet column types as lerobot's own writer."""
    if not GOLDEN.exists():
        pytest.skip("golden fixture missing: run scripts/lerobot_interop.sh --golden")
    import pyarrow.parquet as pq

    root = tmp_path / "ours"
    write_fake_dataset(root)
    theirs_info = json.loads((GOLDEN / "meta/info.json").read_text())
    ours_info = json.loads((root / "meta/info.json").read_text())
    assert set(ours_info) == set(theirs_info)
    cam = "observation.images.cam"
    assert ours_info["features"][cam]["info"].keys() == theirs_info["features"][cam]["info"].keys()
    episodes = "meta/episodes/chunk-000/file-000.parquet"
    theirs_cols = set(pq.read_schema(GOLDEN / episodes).names)
    ours_cols = set(pq.read_schema(root / episodes).names)
    assert theirs_cols - ours_cols == set()
    assert ours_cols - theirs_cols == {"seed"}  # our extra per-episode column
    theirs_data = pq.read_schema(GOLDEN / "data/chunk-000/file-000.parquet")
    ours_data = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    for name in theirs_data.names:
        assert ours_data.field(name).type == theirs_data.field(name).type, name
    tasks_theirs = pq.read_schema(GOLDEN / "meta/tasks.parquet")
    tasks_ours = pq.read_schema(root / "meta/tasks.parquet")
    assert [(f.name, f.type) for f in tasks_ours] == [(f.name, f.type) for f in tasks_theirs]
