"""`vla-distill annotate`: teacher actions, phase anchors and direction cues for every frame, then the audit.

DIR2 is written once, complete (add_columns assembles it beside and renames it into place). While the run is in
progress its state lives in DIR2.partial/: plan.json (what is being computed from which dataset) and
teacher.sqlite (every teacher answer, committed as it arrives). An interrupted run, rerun with the same command,
reuses every stored answer and never asks the teacher twice for a frame.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from vla_distill.annotate import directions as dirs
from vla_distill.annotate.phases import TAXONOMIES, Kinematics, PhaseConfig, label_phases
from vla_distill.annotate.vlm import VLMConfig
from vla_distill.data.columns import add_columns
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import cache_root, write_json_atomic
from vla_distill.errors import ConfigError, DatasetError
from vla_distill.teachers import make_teacher
from vla_distill.teachers.noisy import NoisyTeacher, corrupt
from vla_distill.teachers.remote import RemoteTeacher
from vla_distill.types import OBS_ENV_STATE, OBS_STATE, SUCCESS

TEACHER_KEY = "action.teacher"
PHASE_KEY = "phase_index"
DIRECTION_KEY = "direction_index"
PHASES_PATH = "meta/phases.parquet"
DIRECTIONS_PATH = "meta/directions.parquet"
WINDOWS_PATH = "meta/direction_windows.parquet"
TASK_EMBEDDINGS_PATH = "meta/task_embeddings.parquet"
ANNOTATION_PATH = "meta/annotation.json"
SOURCES = ("kinematic", "vlm", "none")


@dataclass(frozen=True)
class AnnotateConfig:
    teacher: str = "scripted"
    teacher_options: tuple[tuple[str, str], ...] = ()
    phases: str = "kinematic"
    taxonomy: str = "4"
    directions: str = "kinematic"
    window: int = 8
    stride: int = 4
    text_encoder: str = ""  # "" = bundled all-MiniLM-L6-v2; else a local sentence-transformers directory
    vlm: VLMConfig | None = None
    vlm_camera: str = ""  # "" = the dataset's first camera
    vlm_cache: str = ""  # "" = $VLA_DISTILL_CACHE/vlm.sqlite (kept across runs: a rerun costs nothing)
    audit: bool = True
    phase: PhaseConfig = field(default_factory=PhaseConfig)

    def __post_init__(self):
        for name in ("phases", "directions"):
            if getattr(self, name) not in SOURCES:
                raise ConfigError(f"{getattr(self, name)!r} is not one of {SOURCES}", field=name)
        if self.taxonomy not in TAXONOMIES:
            raise ConfigError(f"{self.taxonomy!r} is not one of {sorted(TAXONOMIES)}", field="taxonomy")
        if "vlm" in (self.phases, self.directions) and self.vlm is None:
            raise ConfigError("phases or directions from the VLM need --vlm-url and --vlm-model", field="vlm")
        dirs.DirectionConfig(window=self.window, stride=self.stride)

    @property
    def cue_config(self) -> dirs.DirectionConfig:
        return dirs.DirectionConfig(window=self.window, stride=self.stride)


# ---------------------------------------------------------------- kinematics of any dataset we know the layout of
def episode_kinematics(ds: RobotDataset, rows: np.ndarray) -> Kinematics:
    success = ds.column(SUCCESS)[rows].astype(bool) if SUCCESS in ds.features else None
    env = ds.column(OBS_ENV_STATE)[rows] if OBS_ENV_STATE in ds.features else None
    return kinematics(ds.column(OBS_STATE)[rows], env, success, ds.fps)


def kinematics(state: np.ndarray, env: np.ndarray | None, success: np.ndarray | None, fps: float) -> Kinematics:
    """MetaWorld: state 4 (hand xyz, opening) + 39-d env state with the object at [4:7]. LIBERO (openpi layout):
    state 8 = eef xyz, axis-angle, two finger joints (opening = their difference); no object state."""
    state = np.asarray(state, np.float64)
    env = None if env is None else np.asarray(env, np.float64)
    if state.shape[1] == 4 and env is not None and env.shape[1] == 39:
        return Kinematics(ee=state[:, :3], gripper=state[:, 3], fps=fps, obj=env[:, 4:7], goal=env[:, 36:39], success=success)
    if state.shape[1] == 8:
        return Kinematics(ee=state[:, :3], gripper=state[:, 6] - state[:, 7], fps=fps, success=success)
    raise DatasetError(f"unknown state layout of {state.shape[1]} values: kinematic phases and cues support MetaWorld "
                       "(4 + 39-d environment state) and LIBERO (8); use --phases vlm --directions vlm", field=OBS_STATE)


# ---------------------------------------------------------------- teacher answers, journaled
class Journal:
    """Teacher answers by global frame index, committed as they arrive (SQLite, WAL)."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS actions (frame INTEGER PRIMARY KEY, h INTEGER, d INTEGER, data BLOB)")

    def get(self, frames: np.ndarray) -> dict[int, np.ndarray]:
        out = {}
        for lo in range(0, len(frames), 900):  # SQLite's bound-parameter limit
            chunk = [int(f) for f in frames[lo : lo + 900]]
            q = f"SELECT frame, h, d, data FROM actions WHERE frame IN ({','.join('?' * len(chunk))})"
            for f, h, d, data in self.db.execute(q, chunk):
                out[f] = np.frombuffer(data, np.float32).reshape(h, d)
        return out

    def put(self, frame: int, action: np.ndarray, commit: bool) -> None:
        a = np.ascontiguousarray(action, np.float32)
        self.db.execute("INSERT OR REPLACE INTO actions VALUES (?, ?, ?, ?)", (int(frame), a.shape[0], a.shape[1], a.tobytes()))
        if commit:
            self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def episode_frames(ds: RobotDataset, e: int, cameras: list[str]):
    from vla_distill.teachers.base import EpisodeFrames

    ep, rows = ds.episodes[e], ds.episode_rows(e)
    return EpisodeFrames(
        episode_index=ep.index, task=ep.tasks[0], task_name=ep.extra.get("task_name"),
        frame_index=ds.column("frame_index")[rows], state=ds.column(OBS_STATE)[rows].astype(np.float32),
        env_state=ds.column(OBS_ENV_STATE)[rows].astype(np.float32) if OBS_ENV_STATE in ds.features else None,
        images={k: ds.frames(k, rows) for k in cameras},
    )


def label_with_teacher(ds: RobotDataset, teacher, journal: Journal, progress: tqdm) -> np.ndarray:
    """(N, H, D) teacher actions for every frame, in global row order."""
    # The journal holds the clean answers; noise is applied per episode afterwards, so it is reproducible on resume.
    base, noise = (teacher.inner, teacher.cfg) if isinstance(teacher, NoisyTeacher) else (teacher, None)
    commit_each = isinstance(base, RemoteTeacher)  # a remote answer is costly: keep it the moment it arrives
    out: list[np.ndarray] = []
    index = ds.column("index")
    for e in range(ds.num_episodes):
        frame_ids = index[ds.episode_rows(e)]
        known = journal.get(frame_ids)
        missing = np.array([i for i, f in enumerate(frame_ids) if int(f) not in known], np.int64)
        if len(missing):
            frames = episode_frames(ds, e, ds.camera_keys if base.needs_images else [])
            answers = base.label(frames, missing, lambda i, a: (journal.put(frame_ids[missing[i]], a, commit=commit_each), progress.update(1)))
            journal.db.commit()
            known.update((int(frame_ids[i]), a) for i, a in zip(missing, answers))
        progress.update(len(frame_ids) - len(missing))
        clean = np.stack([known[int(f)] for f in frame_ids])
        out.append(corrupt(clean, ds.episodes[e].index, noise) if noise is not None else clean)
    horizons = {a.shape[1:] for a in out}
    if len(horizons) != 1:
        raise DatasetError(f"the teacher answered with different action shapes {sorted(horizons)}", field=TEACHER_KEY)
    return np.concatenate(out)


# ---------------------------------------------------------------- phases and cues
@dataclass
class Labels:
    phases: np.ndarray  # (N,) int64, -1 = invalid
    windows: list[tuple[int, int, int, str | None]]  # (episode_index, start, end, cue or None)
    window_of_frame: np.ndarray  # (N,) position in `windows`


def label_episodes(ds: RobotDataset, cfg: AnnotateConfig, dataset_id: str, progress: tqdm) -> tuple[Labels, dict]:
    names = TAXONOMIES[cfg.taxonomy]
    phase_cfg = PhaseConfig(**{**asdict(cfg.phase), "taxonomy": cfg.taxonomy})
    vlm = None
    if cfg.vlm is not None and "vlm" in (cfg.phases, cfg.directions):
        from vla_distill.annotate.vlm import VLMLabeller

        cache = Path(cfg.vlm_cache) if cfg.vlm_cache else cache_root() / "vlm.sqlite"
        vlm = VLMLabeller(cfg.vlm, cache)
        camera = cfg.vlm_camera or (ds.camera_keys[0] if ds.camera_keys else "")
        if camera not in ds.camera_keys:
            raise ConfigError(f"no camera {camera!r} in the dataset (cameras: {ds.camera_keys})", field="vlm_camera")
    phases = np.full(ds.num_frames, -1, np.int64)
    windows: list = []
    window_of_frame = np.zeros(ds.num_frames, np.int64)
    for e in range(ds.num_episodes):
        ep, rows = ds.episodes[e], ds.episode_rows(e)
        kin = episode_kinematics(ds, rows) if "kinematic" in (cfg.phases, cfg.directions) else None
        wins = dirs.windows(len(rows), cfg.cue_config)
        if cfg.phases == "kinematic":
            phases[rows] = label_phases(kin, phase_cfg)
        vlm_out = None
        if vlm is not None:
            vlm_out = vlm.label_episode(dataset_id, ep.index, ep.tasks[0], ds.frames(camera, rows), wins, names)
        if cfg.phases == "vlm":
            fw = dirs.frame_windows(len(rows), cfg.cue_config)
            phases[rows] = np.array([vlm_out[k][0] for k in fw])
        if cfg.directions == "kinematic":
            cues = dirs.kinematic_cues(kin, np.maximum(phases[rows], 0) if cfg.phases != "none" else label_phases(kin, phase_cfg),
                                       names, dirs.object_noun(ep.tasks[0]), cfg.cue_config)
        elif cfg.directions == "vlm":
            cues = [text for _, text in vlm_out]
        else:
            cues = [None] * len(wins)
        window_of_frame[rows] = len(windows) + dirs.frame_windows(len(rows), cfg.cue_config)
        windows.extend((ep.index, int(s), int(t), c) for (s, t), c in zip(wins, cues))
        progress.update(len(rows))
    stats = {}
    if vlm is not None:
        stats = {"vlm_requests": vlm.requests, "vlm_invalid_windows": vlm.invalid, "vlm_cache": str(vlm.cache_path)}
        vlm.close()
    return Labels(phases, windows, window_of_frame), stats


# ---------------------------------------------------------------- tables
def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def phases_table(taxonomy: str) -> pa.Table:
    names = TAXONOMIES[taxonomy]
    return pa.table({"phase_index": pa.array(range(len(names)), pa.int64()), "phase": list(names), "taxonomy": [taxonomy] * len(names)})


def directions_table(texts: list[str], embeddings: np.ndarray, counts: list[int], source: str) -> pa.Table:
    return pa.table({
        "direction_index": pa.array(range(len(texts)), pa.int64()), "text": texts,
        "embedding": _fixed_list(embeddings), "count": pa.array(counts, pa.int64()),
        "source": [source] * len(texts),
    })


def _fixed_list(emb: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).reshape(-1), pa.float32()), emb.shape[1])


def _read_embeddings(path: Path, text_column: str) -> tuple[list[str], np.ndarray]:
    t = pq.read_table(path)
    emb = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
    texts = t.column(text_column).to_pylist()
    return texts, emb.reshape(len(texts), -1)


def read_directions(root: Path) -> tuple[list[str], np.ndarray]:
    """Distinct cue texts and their (C, E) embeddings, indexed by direction_index."""
    return _read_embeddings(Path(root) / DIRECTIONS_PATH, "text")


def read_task_embeddings(root: Path) -> tuple[list[str], np.ndarray] | None:
    """Instructions and their (T, E) embeddings by task_index, or None for datasets annotated without cues."""
    path = Path(root) / TASK_EMBEDDINGS_PATH
    return _read_embeddings(path, "task") if path.exists() else None


# ---------------------------------------------------------------- the command
def _plan(ds: RobotDataset, cfg: AnnotateConfig) -> dict:
    c = asdict(cfg)
    c.pop("audit")
    return {"dataset": str(ds.root), "fingerprint": ds.fingerprint(), "config": c}


def annotate(dataset: str | Path, out: str | Path, cfg: AnnotateConfig = AnnotateConfig()) -> Path:
    t0 = time.perf_counter()
    ds = RobotDataset(dataset)
    out = Path(out)
    if out.exists():
        raise DatasetError("output directory already exists (annotation writes a new dataset)", path=out)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    plan = _plan(ds, cfg)
    plan_path = partial / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != json.loads(json.dumps(plan)):
        raise ConfigError(f"an interrupted annotation with different settings or data is in {partial}; "
                          "rerun it with its own settings or delete that directory", path=plan_path)
    write_json_atomic(plan_path, plan)
    columns: dict[str, np.ndarray] = {}
    features: dict[str, dict] = {}
    extra: dict[str, bytes] = {}
    provenance: dict = {"dataset": plan["dataset"], "dataset_fingerprint": plan["fingerprint"], "config": plan["config"]}
    timings: dict[str, float] = {}

    if cfg.teacher != "none":
        options = dict(cfg.teacher_options)
        if "://" in cfg.teacher and "action" in ds.features:  # keep the dims our robot has unless told otherwise
            options.setdefault("action_dim", str(ds.features["action"]["shape"][-1]))
        teacher = make_teacher(cfg.teacher, options)
        journal = Journal(partial / "teacher.sqlite")
        try:
            t = time.perf_counter()
            with tqdm(total=ds.num_frames, desc=f"teacher {cfg.teacher}", unit="frame", file=sys.stderr, dynamic_ncols=True) as bar:
                actions = label_with_teacher(ds, teacher, journal, bar)
            timings["teacher_s"] = time.perf_counter() - t
            provenance["teacher"] = {"spec": cfg.teacher, **teacher.provenance()}
        finally:
            journal.close()
            teacher.close()
        h, d = actions.shape[1:]
        names = ds.features.get("action", {}).get("names")
        columns[TEACHER_KEY] = actions[:, 0] if h == 1 else actions
        features[TEACHER_KEY] = {"dtype": "float32", "shape": [d] if h == 1 else [h, d], "names": names if h == 1 else None}

    if cfg.phases != "none" or cfg.directions != "none":
        t = time.perf_counter()
        with tqdm(total=ds.num_frames, desc="phases and cues", unit="frame", file=sys.stderr, dynamic_ncols=True) as bar:
            labels, vlm_stats = label_episodes(ds, cfg, plan["fingerprint"], bar)
        timings["labels_s"] = time.perf_counter() - t
        provenance.update(vlm_stats)
        if cfg.phases != "none":
            columns[PHASE_KEY] = labels.phases
            features[PHASE_KEY] = {"dtype": "int64", "shape": [1], "names": None}
            extra[PHASES_PATH] = _parquet_bytes(phases_table(cfg.taxonomy))
        if cfg.directions != "none":
            t = time.perf_counter()
            cue_ids, texts, counts, encoder_name, emb, task_emb = _embed(labels.windows, cfg.text_encoder, ds.tasks)
            timings["embed_s"] = time.perf_counter() - t
            columns[DIRECTION_KEY] = cue_ids[labels.window_of_frame]
            features[DIRECTION_KEY] = {"dtype": "int64", "shape": [1], "names": None}
            extra[DIRECTIONS_PATH] = _parquet_bytes(directions_table(texts, emb, counts, cfg.directions))
            extra[TASK_EMBEDDINGS_PATH] = _parquet_bytes(pa.table({
                "task_index": pa.array(range(len(ds.tasks)), pa.int64()), "task": ds.tasks,
                "embedding": _fixed_list(task_emb)}))
            w = labels.windows
            extra[WINDOWS_PATH] = _parquet_bytes(pa.table({
                "episode_index": pa.array([x[0] for x in w], pa.int64()), "start": pa.array([x[1] for x in w], pa.int64()),
                "end": pa.array([x[2] for x in w], pa.int64()), "direction_index": pa.array(cue_ids, pa.int64()),
            }))
            provenance["text_encoder"] = {"name": encoder_name, "dim": int(emb.shape[1])}
    provenance["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    provenance["frames"] = ds.num_frames
    extra[ANNOTATION_PATH] = json.dumps(provenance, indent=2, default=str).encode()
    add_columns(ds.root, columns, features, out=out, extra_files=extra)
    shutil.rmtree(partial, ignore_errors=True)
    if cfg.audit and PHASE_KEY in columns:
        from vla_distill.annotate.audit import audit_dataset

        audit_dataset(out)
    print(f"annotated {ds.num_frames} frames in {time.perf_counter() - t0:.1f} s -> {out}", file=sys.stderr)
    return out


def _embed(windows: list, encoder_path: str, tasks: list[str]):
    """Distinct cues and the instructions, embedded once. Returns (cue id per window, texts, counts, encoder name,
    (C, dim) cue embeddings, (T, dim) instruction embeddings)."""
    from vla_distill.annotate.text import TextEncoder

    texts = sorted({w[3] for w in windows if w[3] is not None})
    lookup = {t: i for i, t in enumerate(texts)}
    cue_ids = np.array([lookup[w[3]] if w[3] is not None else -1 for w in windows], np.int64)
    counts = np.bincount(cue_ids[cue_ids >= 0], minlength=len(texts)).tolist()
    encoder = TextEncoder(encoder_path)
    return cue_ids, texts, counts, encoder.name, encoder.encode(texts), encoder.encode(list(tasks))
