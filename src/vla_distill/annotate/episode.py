"""One episode's annotation, the unit every executor runs and every resume counts in.

An `EpisodeWorker` opens the dataset, builds its own teacher and VLM client, and turns an episode position into an
`EpisodeResult`. The local executor runs one in-process; the Ray executor runs one per actor. Both stage each result
as DIR2.partial/episodes/CCC/EEEEEE.npz (written by the driver alone, renamed into place), so a killed job or a lost
worker never costs a finished episode, and a job started on one executor can be finished on the other.

Shapes of an EpisodeResult (T frames, K cue windows of this episode):
  actions          (T, K, D) float32 teacher action chunks, noise applied; None without a teacher
  phases           (T,) int64 phase index, -1 = invalid; None when phases are off
  windows          (K, 2) int64 [start, end) frame positions within the episode
  cues             K x (str | None) direction cue per window
  window_of_frame  (T,) int64 position in `windows` whose cue each frame trains on
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla_distill.annotate import directions as dirs
from vla_distill.annotate.config import AnnotateConfig
from vla_distill.annotate.phases import PhaseConfig, label_phases
from vla_distill.data.dataset import RobotDataset
from vla_distill.data.format import collection_config, feature_names
from vla_distill.errors import ConfigError
from vla_distill.sim.kinematics import Kinematics
from vla_distill.sim.layout import StateLayout, resolve_layout
from vla_distill.sim.registry import robot_description
from vla_distill.types import ACTION, OBS_CONTACT, OBS_ENV_STATE, OBS_STATE, SUCCESS, TAXONOMIES

STAGING_DIR = "episodes"


# ---------------------------------------------------------------- a dataset episode's kinematics
def dataset_layout(ds: RobotDataset, state_map: str = "", robot_model: str = "", ee_frame: str = "",
                   joint_units: str = "deg") -> StateLayout:
    """The dataset's state layout (sim.layout): the user's map, a simulator's, or its feature names'."""
    if OBS_STATE not in ds.features:
        raise ConfigError("the dataset has no observation.state: kinematic phases and cues need one; "
                          "use --phases vlm --directions vlm", field=OBS_STATE)
    state = ds.column(OBS_STATE)
    env = ds.features.get(OBS_ENV_STATE, {}).get("shape", [None])[-1]
    if not robot_model and not state_map:  # collected here in a simulator that describes its robot (ALOHA's MJCF)
        robot_model, ee_frame, joint_units = collected_robot(ds) or (robot_model, ee_frame, joint_units)
    return resolve_layout(state.shape[1], env, feature_names(ds.features[OBS_STATE]), state.min(0), state.max(0),
                          state_map, robot_model, ee_frame, joint_units,
                          feature_names(ds.features.get(OBS_ENV_STATE, {})))


def collected_robot(ds: RobotDataset) -> tuple[str, str, str] | None:
    """The robot description of the simulator this dataset was collected in (meta/collection.json's env), or None:
    a real robot's dataset of the same robot_type may use other joint units, so only our own collections get one."""
    env = collection_config(ds.root).get("env")
    return robot_description(env) if isinstance(env, str) else None


def episode_kinematics(ds: RobotDataset, rows: np.ndarray, layout: StateLayout) -> Kinematics:
    """The kinematics of a dataset's rows (one episode), decoded by `layout` (dataset_layout(ds), resolved once per
    dataset: it reads the whole state column)."""
    success = ds.column(SUCCESS)[rows].astype(bool) if SUCCESS in ds.features else None
    env = ds.column(OBS_ENV_STATE)[rows] if OBS_ENV_STATE in ds.features else None
    contact = ds.column(OBS_CONTACT)[rows].reshape(len(rows), -1) > 0.5 if OBS_CONTACT in ds.features else None
    if contact is not None and contact.shape[1] == 1:  # one gripper's (a multi-arm robot records one per arm)
        contact = contact[:, 0]
    return layout.decode(ds.column(OBS_STATE)[rows], env, success, ds.fps, contact)


# ---------------------------------------------------------------- teacher answers, journaled
class Journal:
    """Teacher answers by global frame index, committed as they arrive (SQLite, WAL): a remote teacher's answer
    survives a kill even in the middle of an episode."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS actions (frame INTEGER PRIMARY KEY, h INTEGER, d INTEGER, data "
                        "BLOB)")

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
        self.db.execute("INSERT OR REPLACE INTO actions VALUES (?, ?, ?, ?)",
                        (int(frame), a.shape[0], a.shape[1], a.tobytes()))
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


# ---------------------------------------------------------------- one episode
@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is built from; plain data, so it travels to Ray actors as it is."""

    dataset: str
    cfg: AnnotateConfig
    dataset_id: str
    vlm_cache: str = ""
    journal: str = ""  # teacher answers by frame (in-process runs only: the driver's disk)


@dataclass
class EpisodeResult:
    episode: int  # position in the dataset's episode list
    actions: np.ndarray | None
    phases: np.ndarray | None
    windows: np.ndarray
    cues: list[str | None]
    window_of_frame: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)  # teacher_s, labels_s, vlm_requests, vlm_invalid_windows
    teacher: dict | None = None  # the teacher's provenance once it has answered (a server's metadata comes on connect)


class EpisodeWorker:
    """Everything one process needs to annotate episodes: the dataset, a teacher client, a VLM client.

    Construction errors are kept and raised by the first call, so a Ray actor reports a bad teacher spec as the
    original one-line error instead of a dead actor."""

    def __init__(self, spec: WorkerSpec, threads: int = 0):
        self._error: BaseException | None = None
        self.teacher = self.vlm = self.journal = None
        try:
            if threads:  # processes sharing a machine must not each take every core
                import torch

                torch.set_num_threads(threads)
            self._open(spec)
        except Exception as e:  # noqa: BLE001 - re-raised by info() / annotate(), in the caller's process
            self._error = e

    def _open(self, spec: WorkerSpec) -> None:
        from vla_distill.teachers import make_teacher

        cfg = spec.cfg
        self.ds, self.cfg, self.dataset_id = RobotDataset(spec.dataset), cfg, spec.dataset_id
        self.names = TAXONOMIES[cfg.taxonomy]
        self.layout = None
        if "kinematic" in (cfg.phases, cfg.directions):
            self.layout = dataset_layout(self.ds, cfg.state_map, cfg.robot_model, cfg.ee_frame, cfg.joint_units)
        self.phase_cfg = PhaseConfig(**{**asdict(cfg.phase), "taxonomy": cfg.taxonomy})
        if cfg.teacher != "none":
            options = dict(cfg.teacher_options)
            if "://" in cfg.teacher and ACTION in self.ds.features:  # keep the dims our robot has unless told otherwise
                options.setdefault("action_dim", str(self.ds.features[ACTION]["shape"][-1]))
            self.teacher = make_teacher(cfg.teacher, options)
        self.journal = Journal(Path(spec.journal)) if spec.journal and self.teacher is not None else None
        if cfg.uses_vlm:
            from vla_distill.annotate.vlm import VLMLabeller

            self.camera = cfg.vlm_camera or (self.ds.camera_keys[0] if self.ds.camera_keys else "")
            if self.camera not in self.ds.camera_keys:
                raise ConfigError(f"no camera {self.camera!r} in the dataset (cameras: {self.ds.camera_keys})",
                                  field="vlm_camera")
            self.vlm = VLMLabeller(cfg.vlm, spec.vlm_cache)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def info(self) -> dict:
        """Where this worker runs (raises the construction error, if any)."""
        self._check()
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def annotate(self, e: int) -> EpisodeResult:
        self._check()
        rows = self.ds.episode_rows(e)
        t0 = time.perf_counter()
        actions = self._teacher_actions(e, rows) if self.teacher is not None else None
        t1 = time.perf_counter()
        before = (self.vlm.requests, self.vlm.invalid) if self.vlm is not None else (0, 0)
        phases, wins, cues, window_of_frame = self._labels(e, rows)
        stats = {"teacher_s": t1 - t0, "labels_s": time.perf_counter() - t1}
        if self.vlm is not None:
            stats["vlm_requests"] = self.vlm.requests - before[0]
            stats["vlm_invalid_windows"] = self.vlm.invalid - before[1]
        teacher = {"spec": self.cfg.teacher, **self.teacher.provenance()} if self.teacher is not None else None
        return EpisodeResult(e, actions, phases, wins, cues, window_of_frame, stats, teacher)

    def _journaled(self, teacher, frame_ids: np.ndarray, missing: np.ndarray):
        """The on_result hook that files each answer in the journal as it arrives (None without a journal)."""
        from vla_distill.teachers.remote import RemoteTeacher

        if self.journal is None:
            return None
        commit_each = isinstance(teacher, RemoteTeacher)  # a remote answer is costly: keep it the moment it arrives
        return lambda i, a: self.journal.put(frame_ids[missing[i]], a, commit=commit_each)

    def _teacher_actions(self, e: int, rows: np.ndarray) -> np.ndarray:
        """(T, K, D) for every frame of episode e; answers already in the journal are not asked again."""
        from vla_distill.teachers.noisy import NoisyTeacher, corrupt

        # The journal holds the clean answers; noise is applied per episode afterwards, so it is reproducible on resume.
        noisy = isinstance(self.teacher, NoisyTeacher)
        base, noise = (self.teacher.inner, self.teacher.cfg) if noisy else (self.teacher, None)
        frame_ids = self.ds.column("index")[rows]
        known = self.journal.get(frame_ids) if self.journal is not None else {}
        missing = np.array([i for i, f in enumerate(frame_ids) if int(f) not in known], np.int64)
        if len(missing):
            frames = episode_frames(self.ds, e, self.ds.camera_keys if base.needs_images else [])
            answers = base.label(frames, missing, self._journaled(base, frame_ids, missing))
            if self.journal is not None:
                self.journal.db.commit()
            known.update((int(frame_ids[i]), a) for i, a in zip(missing, answers))
        clean = np.stack([known[int(f)] for f in frame_ids]).astype(np.float32)
        return corrupt(clean, self.ds.episodes[e].index, noise) if noise is not None else clean

    def _labels(self, e: int, rows: np.ndarray):
        cfg, ep = self.cfg, self.ds.episodes[e]
        wins = dirs.windows(len(rows), cfg.cue_config)
        window_of_frame = dirs.frame_windows(len(rows), cfg.cue_config).astype(np.int64)
        if cfg.phases == "none" and cfg.directions == "none":
            return None, wins, [None] * len(wins), window_of_frame
        kin = episode_kinematics(self.ds, rows, self.layout) if self.layout is not None else None
        phases = label_phases(kin, self.phase_cfg).astype(np.int64) if cfg.phases == "kinematic" else None
        vlm_out = None
        if self.vlm is not None:
            vlm_out = self.vlm.label_episode(self.dataset_id, ep.index, ep.tasks[0], self.ds.frames(self.camera, rows),
                                             wins, self.names)
        if cfg.phases == "vlm":
            phases = np.array([vlm_out[k][0] for k in window_of_frame], np.int64)
        if cfg.directions == "kinematic":
            cue_phases = np.maximum(phases, 0) if phases is not None else label_phases(kin, self.phase_cfg)
            cues = dirs.kinematic_cues(kin, cue_phases, self.names, dirs.object_noun(ep.tasks[0]), cfg.cue_config)
        elif cfg.directions == "vlm":
            cues = [text for _, text in vlm_out]
        else:
            cues = [None] * len(wins)
        return phases, wins, list(cues), window_of_frame

    def close(self) -> None:
        for part in (self.journal, self.teacher, self.vlm):
            if part is not None:
                part.close()


# ---------------------------------------------------------------- staging: one file per finished episode
def staged_path(partial: Path, e: int) -> Path:
    # A thousand per folder, as lerobot chunks its files: Open X-Embodiment-sized datasets have a million episodes.
    return partial / STAGING_DIR / f"{e // 1000:03d}" / f"{e:06d}.npz"


def stage(partial: Path, result: EpisodeResult) -> None:
    """Write a finished episode beside its final name and rename it into place: a staged file is always whole."""
    path = staged_path(partial, result.episode)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"windows": result.windows, "window_of_frame": result.window_of_frame,
              "meta": np.array(json.dumps({"cues": result.cues, "stats": result.stats, "teacher": result.teacher},
                                          default=str))}
    if result.actions is not None:
        arrays["actions"] = result.actions
    if result.phases is not None:
        arrays["phases"] = result.phases
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_staged(partial: Path, e: int) -> EpisodeResult:
    with np.load(staged_path(partial, e), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return EpisodeResult(e, z["actions"] if "actions" in z else None, z["phases"] if "phases" in z else None,
                             z["windows"], meta["cues"], z["window_of_frame"], meta["stats"], meta["teacher"])


def staged_episodes(partial: Path) -> set[int]:
    return {int(p.stem) for p in (partial / STAGING_DIR).glob("*/[0-9]*.npz") if p.stem.isdigit()}
