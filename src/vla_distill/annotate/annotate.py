"""`vla-distill annotate`: teacher actions, phase anchors and direction cues for every frame, then the audit. The
columns and meta files it writes are named in types.py; data/annotations.py reads them back.

DIR2 is written once, complete (add_columns assembles it beside and renames it into place). While the run is in
progress its state lives in DIR2.partial/: plan.json (what is being computed from which dataset), episodes/ (one
staged file per finished episode, see annotate/episode.py) and, for in-process runs, teacher.sqlite (every teacher
answer, committed as it arrives). An interrupted run, rerun with the same command on either executor, keeps every
finished episode and never asks the teacher twice for a frame it answered. The episodes run where the executor puts
them (annotate/executors.py: this process, or Ray actors); the driver alone writes, and merges them at the end.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from vla_distill.annotate.config import AnnotateConfig
from vla_distill.annotate.episode import EpisodeResult, WorkerSpec, dataset_layout, load_staged, stage, staged_episodes
from vla_distill.annotate.executors import LocalExecutor, RayExecutor
from vla_distill.data.annotations import (
    directions_table,
    parquet_bytes,
    phases_table,
    task_embeddings_table,
    windows_table,
)
from vla_distill.data.columns import add_columns
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import cache_root, single_writer, write_json_atomic
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.layout import StateLayout
from vla_distill.types import (
    ACTION,
    ANNOTATION_PATH,
    AUDIT_PATH,
    AUDIT_REPORT_PATH,
    DIRECTION_INDEX,
    DIRECTIONS_PATH,
    PHASE_INDEX,
    PHASES_PATH,
    TASK_EMBEDDINGS_PATH,
    TEACHER_ACTION,
    WINDOWS_PATH,
)


# ---------------------------------------------------------------- episodes -> one dataset's columns
@dataclass
class Labels:
    phases: np.ndarray  # (N,) int64, -1 = invalid
    windows: list[tuple[int, int, int, str | None]]  # (episode_index, start, end, cue or None)
    window_of_frame: np.ndarray  # (N,) position in `windows`


def merge_episodes(ds: RobotDataset, results: dict[int, EpisodeResult]) -> tuple[np.ndarray | None, Labels]:
    """Per-episode results (by episode position) -> (N, K, D) teacher actions or None, and the labels, in row order
    (N frames of the dataset)."""
    phases = np.full(ds.num_frames, -1, np.int64)
    window_of_frame = np.zeros(ds.num_frames, np.int64)
    windows: list = []
    shapes = {r.actions.shape[1:] for r in results.values() if r.actions is not None}
    if len(shapes) > 1:
        raise DatasetError(f"the teacher answered with different action shapes {sorted(shapes)}", field=TEACHER_ACTION)
    actions = np.empty((ds.num_frames, *shapes.pop()), np.float32) if shapes else None
    for e in range(ds.num_episodes):
        r, rows, index = results[e], ds.episode_rows(e), ds.episodes[e].index
        if actions is not None:
            actions[rows] = r.actions
        if r.phases is not None:
            phases[rows] = r.phases
        window_of_frame[rows] = len(windows) + r.window_of_frame
        windows.extend((index, int(s), int(t), c) for (s, t), c in zip(r.windows, r.cues))
    return actions, Labels(phases, windows, window_of_frame)


def run_episodes(ds: RobotDataset, spec: WorkerSpec, executor, partial: Path,
                 hook: Callable[[EpisodeResult], None] | None = None) -> tuple[dict[int, EpisodeResult], dict]:
    """Annotate every episode not yet staged in `partial`, staging each as it finishes; returns all of them."""
    done = staged_episodes(partial) & set(range(ds.num_episodes))
    pending = [e for e in range(ds.num_episodes) if e not in done]
    if done:
        print(f"resuming: {len(done)} of {ds.num_episodes} episodes already annotated in {partial}", file=sys.stderr)
    initial = sum(ds.episodes[e].length for e in done)
    with tqdm(total=ds.num_frames, initial=initial, desc=f"annotate ({executor.name})", unit="frame", file=sys.stderr,
              dynamic_ncols=True) as bar:
        def keep(result: EpisodeResult) -> None:
            stage(partial, result)
            bar.update(len(result.window_of_frame))
            if hook is not None:
                hook(result)

        info = executor.run(spec, pending, keep)
    # Every episode read back from its staged file, fresh or resumed: one representation, so a resumed run's
    # dataset is byte for byte a fresh one's.
    return {e: load_staged(partial, e) for e in range(ds.num_episodes)}, info


# ---------------------------------------------------------------- the command
LAYOUT_FIELDS = ("state_map", "robot_model", "ee_frame", "joint_units")


def _plan(ds: RobotDataset, cfg: AnnotateConfig) -> dict:
    c = asdict(cfg)
    c.pop("audit")
    for k in LAYOUT_FIELDS:  # at their defaults they are left out: earlier annotations keep their plans
        if c[k] == getattr(AnnotateConfig, k):
            c.pop(k)
    return {"dataset": str(ds.root), "fingerprint": ds.fingerprint(), "config": c}


def annotate(dataset: str | Path, out: str | Path, cfg: AnnotateConfig = AnnotateConfig(),
             executor: LocalExecutor | RayExecutor | None = None,
             hook: Callable[[EpisodeResult], None] | None = None) -> Path:
    """hook: called with each episode's result as it is staged (progress, tests)."""
    t0 = time.perf_counter()
    ds = RobotDataset(dataset)
    ds.check_videos()  # before any work: the output hard-links these files
    layout = _layout(ds, cfg)  # a state it cannot read fails here, before anything is written
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if out.exists():
        if not _annotated_by(out, _plan(ds, cfg)):
            raise DatasetError("output directory already exists (annotation writes a new dataset)", path=out)
        return _finish(out, partial, cfg)  # this command's own output: a kill landed after it was written
    with single_writer(partial):
        try:
            return _annotate(ds, out, partial, cfg, executor or LocalExecutor(), hook, t0, layout)
        except BaseException:
            if not staged_episodes(partial) and not _journal_has_answers(partial):
                shutil.rmtree(partial, ignore_errors=True)  # nothing to resume from: leave nothing behind
            raise


def _journal_has_answers(partial: Path) -> bool:
    path = partial / "teacher.sqlite"
    if not path.exists():
        return False
    with closing(sqlite3.connect(path)) as db:
        try:
            return db.execute("SELECT 1 FROM actions LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:
            return False


def _layout(ds: RobotDataset, cfg: AnnotateConfig) -> StateLayout | None:
    if "kinematic" not in (cfg.phases, cfg.directions):
        return None
    layout = dataset_layout(ds, cfg.state_map, cfg.robot_model, cfg.ee_frame, cfg.joint_units)
    for what in layout.left_out():
        print(f"notice: {what}", file=sys.stderr)
    return layout


def _annotate(ds: RobotDataset, out: Path, partial: Path, cfg: AnnotateConfig, executor, hook, t0: float,
              layout: StateLayout | None) -> Path:
    plan = _plan(ds, cfg)
    plan_path = partial / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != json.loads(json.dumps(plan)):
        raise ConfigError(f"an interrupted annotation with different settings or data is in {partial}; "
                          "rerun it with its own settings or delete that directory", path=plan_path)
    write_json_atomic(plan_path, plan)
    vlm_cache = str(Path(cfg.vlm_cache) if cfg.vlm_cache else cache_root() / "vlm.sqlite") if cfg.uses_vlm else ""
    spec = WorkerSpec(str(ds.root.resolve()), cfg, plan["fingerprint"], vlm_cache, str(partial / "teacher.sqlite"))
    results, run_info = run_episodes(ds, spec, executor, partial, hook)
    actions, labels = merge_episodes(ds, results)

    columns: dict[str, np.ndarray] = {}
    features: dict[str, dict] = {}
    extra: dict[str, bytes] = {}
    provenance: dict = {"dataset": plan["dataset"], "dataset_fingerprint": plan["fingerprint"],
                        "config": plan["config"]}
    if layout is not None:
        provenance["state_layout"] = layout.describe()
    timings = {k: sum(r.stats.get(k, 0.0) for r in results.values()) for k in ("teacher_s", "labels_s")}
    if actions is not None:
        provenance["teacher"] = results[0].teacher
        h, d = actions.shape[1:]
        names = ds.features.get(ACTION, {}).get("names")
        columns[TEACHER_ACTION] = actions[:, 0] if h == 1 else actions
        features[TEACHER_ACTION] = {"dtype": "float32", "shape": [d] if h == 1 else [h, d],
                                    "names": names if h == 1 else None}
    if cfg.uses_vlm:
        provenance.update({k: int(sum(r.stats.get(k, 0) for r in results.values())) for k in ("vlm_requests",
                                                                                              "vlm_invalid_windows")})
        provenance["vlm_cache"] = vlm_cache
    if cfg.phases != "none":
        columns[PHASE_INDEX] = labels.phases
        features[PHASE_INDEX] = {"dtype": "int64", "shape": [1], "names": None}
        extra[PHASES_PATH] = parquet_bytes(phases_table(cfg.taxonomy))
    if cfg.directions != "none":
        t = time.perf_counter()
        cue_ids, texts, counts, encoder_name, emb, task_emb = _embed(labels.windows, cfg.text_encoder, ds.tasks)
        timings["embed_s"] = time.perf_counter() - t
        columns[DIRECTION_INDEX] = cue_ids[labels.window_of_frame]
        features[DIRECTION_INDEX] = {"dtype": "int64", "shape": [1], "names": None}
        extra[DIRECTIONS_PATH] = parquet_bytes(directions_table(texts, emb, counts, cfg.directions))
        extra[TASK_EMBEDDINGS_PATH] = parquet_bytes(task_embeddings_table(ds.tasks, task_emb))
        extra[WINDOWS_PATH] = parquet_bytes(windows_table([w[:3] for w in labels.windows], cue_ids))
        provenance["text_encoder"] = {"name": encoder_name, "dim": int(emb.shape[1])}
    provenance["timings_s"] = {k: round(v, 3) for k, v in timings.items()}  # worker seconds, summed over episodes
    provenance["run"] = run_info
    provenance["frames"] = ds.num_frames
    extra[ANNOTATION_PATH] = json.dumps(provenance, indent=2, default=str).encode()
    add_columns(ds.root, columns, features, out=out, extra_files=extra)
    _finish(out, partial, cfg)
    print(f"annotated {ds.num_frames} frames in {time.perf_counter() - t0:.1f} s -> {out}", file=sys.stderr)
    return out


def _annotated_by(out: Path, plan: dict) -> bool:
    """Whether `out` is the annotation this plan describes (same input data, same settings)."""
    try:
        done = json.loads((out / ANNOTATION_PATH).read_text())
    except (OSError, ValueError):
        return False
    return (done.get("dataset_fingerprint") == plan["fingerprint"]
            and done.get("config") == json.loads(json.dumps(plan["config"])))


def _finish(out: Path, partial: Path, cfg: AnnotateConfig) -> Path:
    """What follows writing the annotated dataset, repeated when a rerun finds it written: the staging removed and the
    audit, unless it is complete."""
    shutil.rmtree(partial, ignore_errors=True)
    if cfg.audit and cfg.phases != "none" and not all((out / p).is_file() for p in (AUDIT_PATH, AUDIT_REPORT_PATH)):
        from vla_distill.annotate.audit import audit_dataset

        audit_dataset(out)
    return out


def _embed(windows: list, encoder_path: str, tasks: list[str]):
    """Distinct cues and the instructions, embedded once. Returns (cue id per window, texts, counts, encoder name,
    (Q, E) cue embeddings, (T_tasks, E) instruction embeddings)."""
    from vla_distill.models.text import TextEncoder

    texts = sorted({w[3] for w in windows if w[3] is not None})
    lookup = {t: i for i, t in enumerate(texts)}
    cue_ids = np.array([lookup[w[3]] if w[3] is not None else -1 for w in windows], np.int64)
    counts = np.bincount(cue_ids[cue_ids >= 0], minlength=len(texts)).tolist()
    encoder = TextEncoder(encoder_path)
    return cue_ids, texts, counts, encoder.name, encoder.encode(texts), encoder.encode(list(tasks))
