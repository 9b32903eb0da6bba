"""Whether two `make demo` output trees are the same run: data, labels, training curve, weights, every evaluation
episode's actions, the bundle and the real-time episode. For changes that must not change behaviour (a refactor):

    git worktree add /tmp/before <commit before the change>
    PYTHONPATH=/tmp/before/src make demo DEMO_OUT=outputs/demo-before
    make demo DEMO_OUT=outputs/demo-after
    .venv/bin/python scripts/compare_demo.py outputs/demo-before outputs/demo-after

Exits 1 when anything differs. Wall times are not compared (they are a benchmark's business).
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

a, b = Path(sys.argv[1]), Path(sys.argv[2])
ok = True

def check(name, cond, detail=""):
    global ok
    ok &= bool(cond)
    print(("same " if cond else "DIFF ") + name + (f"  {detail}" if detail else ""))

def sha(p): return hashlib.sha256(p.read_bytes()).hexdigest()

for f in sorted((a / "dataset").rglob("*.mp4")):
    check(f"dataset/{f.relative_to(a / 'dataset')} bytes", sha(f) == sha(b / "dataset" / f.relative_to(a / "dataset")))
for sub in ("dataset", "annotated"):
    for f in sorted((a / sub / "data").rglob("*.parquet")):
        g = b / sub / f.relative_to(a / sub)
        check(f"{sub}/{f.relative_to(a / sub)} bytes", sha(f) == sha(g))
    for f in ("meta/stats.json", "meta/phases.parquet", "meta/directions.parquet", "meta/direction_windows.parquet",
              "meta/task_embeddings.parquet", "meta/audit.json"):
        if (a / sub / f).exists():
            x, y = (a / sub / f), (b / sub / f)
            if f.endswith(".json"):
                jx, jy = json.loads(x.read_text()), json.loads(y.read_text())
                jx.pop("dataset", None)
                jy.pop("dataset", None)
                check(f"{sub}/{f}", jx == jy)
            else:
                check(f"{sub}/{f} bytes", sha(x) == sha(y))
ma = [json.loads(line) for line in (a / "student/metrics.jsonl").read_text().splitlines()]
mb = [json.loads(line) for line in (b / "student/metrics.jsonl").read_text().splitlines()]
keys = ("loss", "action", "phase", "direction", "grad_norm", "lr", "action_mse", "action_mae", "phase_accuracy",
        "direction_top1")
check("training curve (every logged loss, grad norm, lr and validation metric, bit for bit)",
      len(ma) == len(mb) and all(x["step"] == y["step"] and all(x.get(k) == y.get(k) for k in keys) for x,
                                 y in zip(ma, mb)),
      f"{len(ma)} rows")
for ckpt in sorted(p for p in (a / "student/checkpoints").iterdir() if p.name.isdigit()):  # every saved step
    weights = Path("pretrained_model/model.safetensors")
    check(f"checkpoint {ckpt.name} weights bytes",
          sha(ckpt / weights) == sha(b / "student/checkpoints" / ckpt.name / weights))
for who in ("teacher", "student"):
    ia, ib = (json.loads((x / f"eval/{who}/eval_info.json").read_text()) for x in (a, b))
    check(f"eval {who} per-task success", [(t["task"], t["metrics"]["successes"]) for t in ia["per_task"]]
          == [(t["task"], t["metrics"]["successes"]) for t in ib["per_task"]],
          f"{ia['overall']['pc_success']:.1f}% vs {ib['overall']['pc_success']:.1f}%")
    n = same = 0
    for f in sorted((a / f"eval/{who}/episodes").rglob("*.npz")):
        za, zb = np.load(f), np.load(b / f"eval/{who}/episodes" / f.relative_to(a / f"eval/{who}/episodes"))
        n += 1
        same += all(np.array_equal(za[k], zb[k]) for k in ("actions", "phase", "success", "hand", "directions",
                                                           "direction_steps"))
    check(f"eval {who} episodes: actions, phases, directions, hand path", same == n, f"{same}/{n} episodes identical")
    oa, ob = (json.loads((x / f"eval/{who}/observability.json").read_text()) for x in (a, b))
    check(f"eval {who} observability", oa["flag_counts"] == ob["flag_counts"] and oa["per_task"] == ob["per_task"])
ra, rb = np.load(a / "bundle/reference_io.npz"), np.load(b / "bundle/reference_io.npz")
check("bundle reference observations and torch actions", all(np.array_equal(ra[k], rb[k]) for k in ra.files))
pa, pb = (json.loads((x / "bundle/bundle.json").read_text())["parity"] for x in (a, b))
check("bundle ONNX parity numbers", pa == pb, json.dumps(pb["onnx"]))
episode = sorted((a / "run").glob("*/episode_000.npz"))[0].relative_to(a)  # the demo's DEMO_RUN_TASK
sa, sb = (np.load(x / episode) for x in (a, b))
check("real-time episode: actions sent", np.array_equal(sa["sent"], sb["sent"]),
      f"{len(sa['sent'])} vs {len(sb['sent'])} ticks")
print("ALL SAME" if ok else "SOME DIFFER")
sys.exit(0 if ok else 1)
