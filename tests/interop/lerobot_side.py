"""Runs inside the lerobot reference environment (.venv-lerobot, built by scripts/lerobot_interop.sh):
lerobot's own LeRobotDataset code reads our datasets and writes datasets for us to read.

  python lerobot_side.py read  ROOT OUT.npz   # open ROOT with lerobot, dump every item
  python lerobot_side.py write ROOT OUT.npz   # write a dataset with lerobot, then dump it as lerobot reads it
Never imported by the vla_distill package or its test run; talks to our side through files only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from ledataset.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

FPS = 10


def dump(ds: LeRobotDataset, out: Path) -> None:
    keys = [k for k in ds.features if k != "task"]
    arrays: dict[str, list] = {k: [] for k in keys}
    tasks = []
    for i in range(len(ds)):
        item = ds[i]
        for k in keys:
            v = item[k].numpy()
            if ds.features[k]["dtype"] in ("image", "video"):
                v = np.round(np.moveaxis(v, 0, -1) * 255).astype(np.uint8)  # lerobot gives CHW float in [0, 1]
            arrays[k].append(v)
        tasks.append(item["task"])
    np.savez(out, **{k: np.stack(v) for k, v in arrays.items()}, task=np.array(tasks))
    summary = {"num_episodes": ds.meta.total_episodes, "num_frames": len(ds),
               "codebase_version": ds.meta.info["codebase_version"]}
    out.with_suffix(".json").write_text(json.dumps(summary))


def write(root: Path) -> LeRobotDataset:
    rng = np.random.default_rng(7)
    features = {
        "observation.images.cam": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        "observation.images.png": {"dtype": "image", "shape": (16, 16, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    ds = LeRobotDataset.create("local/lerobot_written", FPS, features=features, root=root, robot_type="fake",
                               use_videos=True)
    yy, xx = np.mgrid[0:32, 0:32]
    for e, n in enumerate((6, 9, 7)):
        for t in range(n):
            cam = np.stack([(xx * 8 + 9 * t + 50 * e) % 256, (yy * 8) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
            c = (2 * t) % 24
            cam[c : c + 8, c : c + 8] = 255
            ds.add_frame({
                "observation.images.cam": cam,
                "observation.images.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=3).astype(np.float32),
                "action": rng.normal(size=2).astype(np.float32),
                "task": f"lerobot task {e % 2}",
            })
        ds.save_episode()
    ds.finalize()
    return LeRobotDataset("local/lerobot_written", root=root)


def main() -> None:
    cmd, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ds = LeRobotDataset("local/ours", root=root) if cmd == "read" else write(root)
    dump(ds, out)
    print(f"{cmd}: ok, {len(ds)} frames")


if __name__ == "__main__":
    main()
