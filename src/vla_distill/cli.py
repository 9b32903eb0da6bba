"""`vla-distill <stage>`: one subcommand per pipeline stage.

Errors in user input print one line naming the file or field and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shlex
import sys
from pathlib import Path

from vla_distill.errors import ConfigError, VlaDistillError

# Errors of the machine's disks rather than of the code: one line naming the path, as for bad input.
DISK_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
RESUMABLE = ("collect", "annotate", "train", "eval")  # stages whose rerun continues what a failed run left

# Each stage below is a pair: `_<stage>_args(parser)` declares its flags, `_<stage>(args)` runs it. Flags that set a
# config field are declared with `_field`: they take the field's dataclass default (shown in --help), and only the
# flags given on the command line reach the config. Only the stage being run imports its modules.


# ---------------------------------------------------------------- flags backed by config dataclasses
def _field(parser, flag: str, cls, help: str = "", field: str | None = None, **kw) -> None:
    """`flag` sets `cls`'s field `field` (by default the flag's own name); left out, the dataclass default applies."""
    name = field or flag.lstrip("-").replace("-", "_")
    f = cls.__dataclass_fields__[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is not dataclasses.MISSING and default not in ("", (), None) and kw.get("action") is None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{help} (default {shown})" if help else f"default {shown}"
    if "choices" not in kw and "action" not in kw:  # the flag's name, not the field's (--ema EMA, not EMA_DECAY)
        kw["metavar"] = flag.lstrip("-").upper().replace("-", "_")
    parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help, **kw)


def _given(args: argparse.Namespace, cls) -> dict:
    """The fields of config class `cls` given on the command line, over those of the named --recipe (if any)."""
    from_recipe = _recipe(args).get(args.command, {}) if "recipe" in vars(args) else {}
    return {k: v for k, v in {**from_recipe, **vars(args)}.items() if k in cls.__dataclass_fields__}


def _recipe(args: argparse.Namespace) -> dict:
    """{stage: fields} of the named recipe (vla_distill.config.RECIPES)."""
    if not getattr(args, "recipe", ""):
        return {}
    from vla_distill.config import recipe

    r = _config(recipe, args.recipe)
    return {"collect": r.collect, "train": r.train}


def _recipe_flag(parser: argparse.ArgumentParser) -> None:
    from vla_distill.config import RECIPES

    names = "; ".join(f"{k}: {r.summary}; use {r.use}" for k, r in RECIPES.items())
    parser.add_argument("--recipe", default="", metavar="NAME",
                        help=f"a benchmark's settings by name, flags given here override them ({names})")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _bounded(kind, low: float, high: float | None = None):
    """An argparse type: `kind` within [low, high], else argparse's one-line usage error (exit 2) before any work."""
    def parse(text: str):
        value = kind(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not in [{low}, {high if high is not None else 'inf'}]")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in _csv(text))


def _key_values(items: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", field=flag)
        out.append((key, value))
    return tuple(out)


def _config(cls, *args, **fields):
    """cls(*args, **fields), a ValueError from its validation as the one-line ConfigError."""
    try:
        return cls(*args, **fields)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _resume_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """What a resumed run takes from this command line: --steps, and what else a resume may change when given."""
    from vla_distill.train.fit import RESUMABLE

    return tuple(k for k in RESUMABLE if k == "steps" or k in vars(args))


def _print_rank0(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate every process runs this
        print(line)


def _passive_omp() -> None:
    """Before torch loads OpenMP: a simulator's renderer shares the cores with the policy, and spinning OpenMP
    threads made batch-1 calls far slower when one more process was busy (BENCHMARKS.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---------------------------------------------------------------- collect
def _collect_args(c: argparse.ArgumentParser) -> None:
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.base import CameraConfig
    from vla_distill.sim.registry import ENVS

    c.add_argument("--tasks", dest="task_spec", metavar="TASKS", required=True,
                   help="MetaWorld: task names (reach-v3,push-v3), mt10, mt50, easy, medium, hard or very_hard; "
                        "LIBERO: libero_object, libero_spatial/3, ...")
    _field(c, "--env", CollectConfig, choices=list(ENVS))
    _recipe_flag(c)
    _field(c, "--episodes", CollectConfig, "successful episodes kept per task", type=int)
    c.add_argument("--out", required=True, help="output dataset directory (rerun the same command to resume)")
    _field(c, "--seed", CollectConfig, type=int)
    _field(c, "--cameras", CameraConfig, "camera names (default: the simulator's; MetaWorld corner2,gripper)",
           field="names", type=_csv)
    _field(c, "--image-size", CameraConfig, field="height", type=int)
    _field(c, "--image-format", CollectConfig, "AV1 mp4 or PNG in parquet", choices=["video", "image"])
    _field(c, "--steps-after-success", CollectConfig, "frames kept after the first success", type=int)
    _field(c, "--action-noise", CollectConfig, "std of Gaussian noise added to the expert's xyz actions before they "
           "are executed (DART): the demonstrations leave the expert's path and the teacher's relabels show the way "
           "back; the action column records what was executed", type=float)
    _field(c, "--rotation-noise", CollectConfig, "std of the same noise on the end effector's rotation commands "
           "(LIBERO's axis-angle delta), so the demonstrations show the hand's orientation corrected too", type=float)
    _field(c, "--policy", CollectConfig, "a trained policy (run or checkpoint directory) drives instead of the expert "
           "(DAgger): every rollout is kept, failures included, for `annotate --teacher scripted` to relabel; "
           "--cameras and --image-size must be the policy's, and a --seed other than the demonstrations' gives new "
           "placements")
    _field(c, "--max-attempts-factor", CollectConfig, "attempts per task at most episodes x this", type=float)
    _field(c, "--workers", CollectConfig, "worker processes (0: one per core)", type=int)


def _collect(args: argparse.Namespace) -> None:
    from vla_distill.collect.collect import collect
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.base import CameraConfig
    from vla_distill.sim.registry import DEFAULT_ENV, get_simulator

    camera = _given(args, CameraConfig)
    if "height" in camera:
        camera["width"] = camera["height"]
    tasks = get_simulator(vars(args).get("env", DEFAULT_ENV)).resolve_tasks(args.task_spec)
    cfg = CollectConfig(tasks=tuple(tasks), cameras=CameraConfig(**camera), **_given(args, CollectConfig))
    collect(cfg, args.out)


# ---------------------------------------------------------------- merge
def _merge_args(m: argparse.ArgumentParser) -> None:
    m.add_argument("datasets", nargs="+", help="LeRobot v3.0 datasets with the same features, in episode order")
    m.add_argument("--out", required=True, help="the merged dataset's directory (new or empty)")
    m.add_argument("--drop-features", type=_csv, default=(), metavar="KEYS",
                   help="features to leave out of the merge, comma-separated: one that only some datasets have (e.g. "
                        "observation.contact, recorded since a later version) is otherwise refused")


def _merge(args: argparse.Namespace) -> None:
    from vla_distill.data.merge import merge

    merge(args.datasets, args.out, args.drop_features)


# ---------------------------------------------------------------- inspect
def _inspect_args(i: argparse.ArgumentParser) -> None:
    i.add_argument("dataset")
    i.add_argument("--quick", action="store_true", help="skip decoding every video frame")


def _inspect(args: argparse.Namespace) -> None:
    from vla_distill.data.dataset import RobotDataset

    ds = RobotDataset(args.dataset)
    if args.quick:
        ds.check_videos()
    else:
        ds.validate(decode_videos=True)  # every frame, which covers check_videos
    print(f"{ds.root}: LeRobotDataset {ds.version}, {ds.num_episodes} episodes, {ds.num_frames} frames at {ds.fps:g} "
          f"fps, {len(ds.tasks)} tasks")
    for key, ft in ds.features.items():
        extra = f" ({ft['info'].get('video.codec')})" if ft["dtype"] == "video" and "info" in ft else ""
        print(f"  {key:<34} {ft['dtype']:<8} {ft['shape']}{extra}")
    for i, task in enumerate(ds.tasks):
        n = sum(task in ep.tasks for ep in ds.episodes)
        print(f"  task {i}: {task!r} ({n} episodes)")
    print(_layout_line(ds))
    print("ok" if not args.quick else "ok (metadata, parquet and each video's container and extent checked; not every "
          "frame decoded)")


def _layout_line(ds) -> str:
    """How `annotate` will read observation.state (sim.layout), or why it cannot without --state-map."""
    from vla_distill.annotate.episode import dataset_layout
    from vla_distill.errors import VlaDistillError

    try:
        layout = dataset_layout(ds)
    except VlaDistillError as e:
        return f"  state layout: none ({str(e).split(': ', 1)[-1]})"
    d = layout.describe()
    return f"  state layout: {d['layout']} ({d['state_map']})" + "".join(f"; {x}" for x in d["left_out"][:1])


# ---------------------------------------------------------------- annotate
def _annotate_args(a: argparse.ArgumentParser) -> None:
    from vla_distill.annotate.config import SOURCES, AnnotateConfig
    from vla_distill.annotate.vlm import VLMConfig
    from vla_distill.sim.robot_model import JOINT_UNITS
    from vla_distill.types import TAXONOMIES

    a.add_argument("--dataset", required=True, help="input LeRobot dataset")
    a.add_argument("--out", required=True, help="new annotated dataset (rerun the same command to resume)")
    _field(a, "--teacher", AnnotateConfig,
           "scripted | noisy[std=,toggle=,burst=,stale=,seed=]:KIND | checkpoint:PATH | openpi://HOST:PORT | "
           "openvla://HOST:PORT | none")
    a.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="remote teacher option, repeatable: obs_map.<server key>=<our key>, image_size, action_dim, "
                        "horizon, gripper (keep|flip|unit_to_signed|unit_to_signed_flip), concurrency, timeout_s, "
                        "retries, unnorm_key, api_key; checkpoint teachers: device (auto|cpu|cuda)")
    _field(a, "--phases", AnnotateConfig, choices=list(SOURCES))
    _field(a, "--taxonomy", AnnotateConfig, "4: approach/grasp/transport/release; 9: idle ... completed",
           choices=sorted(TAXONOMIES))
    _field(a, "--directions", AnnotateConfig, choices=list(SOURCES))
    _field(a, "--window", AnnotateConfig, "frames per direction-cue window", type=int)
    _field(a, "--stride", AnnotateConfig, "frames between window starts", type=int)
    _field(a, "--text-encoder", AnnotateConfig,
           "local sentence-transformers model dir (default: bundled all-MiniLM-L6-v2)")
    _field(a, "--vlm-url", VLMConfig, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1", field="url")
    _field(a, "--vlm-model", VLMConfig, field="model")
    _field(a, "--vlm-api-key", VLMConfig, field="api_key")
    _field(a, "--vlm-camera", AnnotateConfig, "camera key shown to the VLM (default: the first)")
    _field(a, "--vlm-keyframes", VLMConfig, field="keyframes", type=int)
    a.add_argument("--vlm-separate-images", dest="contact_sheet", action="store_false", default=argparse.SUPPRESS,
                   help="send keyframes as separate images, not one contact sheet")
    _field(a, "--vlm-concurrency", VLMConfig, field="concurrency", type=int)
    _field(a, "--vlm-cache", AnnotateConfig, "answer cache (default $VLA_DISTILL_CACHE/vlm.sqlite)")
    a.add_argument("--no-audit", dest="audit", action="store_false", default=argparse.SUPPRESS)
    k = a.add_argument_group("your robot's state (read from info.json's names where they say it; see README)")
    _field(k, "--state-map", AnnotateConfig, "roles of observation.state's values: ee=0:3 (x y z), gripper=6 (an "
           "opening; larger = open) or gripper=6-7 (two fingers), joints=0:5")
    _field(k, "--robot-model", AnnotateConfig,
           "MJCF or URDF of a joint-space arm: the end effector by forward kinematics")
    _field(k, "--ee-frame", AnnotateConfig, "the end effector's site or body in --robot-model (e.g. gripperframe)")
    _field(k, "--joint-units", AnnotateConfig, "the dataset's joint values: deg, rad, or m100 (lerobot's default "
           "-100..100 over the calibrated range)", choices=list(JOINT_UNITS))
    r = a.add_argument_group("scale out (pip install 'vla-distill[ray]')")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: this process; ray: episodes sharded over Ray actors, one teacher/VLM client each")
    r.add_argument("--address", default="local",
                   help="Ray: local (start one here) | auto (the cluster of `ray start`) | "
                   "HOST:PORT | ray://HOST:10001 (default local)")
    r.add_argument("--workers", type=int, default=0,
                   help="Ray actors (default: as many as the cluster's CPUs/GPUs hold)")
    r.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    r.add_argument("--worker-gpus", type=float, default=None,
                   help="GPUs per Ray actor (default: 1 for a checkpoint: teacher when the cluster has GPUs, else 0)")
    r.add_argument("--max-retries", type=int, default=3,
                   help="times an episode is asked again after its worker was lost")


def _annotate(args: argparse.Namespace) -> None:
    from vla_distill.annotate.annotate import annotate
    from vla_distill.annotate.config import AnnotateConfig
    from vla_distill.annotate.executors import make_executor
    from vla_distill.annotate.vlm import VLMConfig

    vlm = _given(args, VLMConfig)
    if vlm.get("url") or vlm.get("model"):
        vlm = _config(VLMConfig, **{"url": "", "model": "", **vlm})
    else:
        vlm = None
    cfg = _config(AnnotateConfig, **_given(args, AnnotateConfig), vlm=vlm,
                  teacher_options=_key_values(args.teacher_opt, "--teacher-opt"))
    executor = None
    if args.executor == "ray":
        executor = make_executor("ray", address=args.address, workers=args.workers, worker_cpus=args.worker_cpus,
                                 worker_gpus=args.worker_gpus, max_retries=args.max_retries)
    elif args.workers or args.address != "local" or args.worker_gpus is not None:
        raise ConfigError("--workers, --address and --worker-gpus need --executor ray", field="executor")
    annotate(args.dataset, args.out, cfg, executor)


# ---------------------------------------------------------------- audit
def _audit_args(au: argparse.ArgumentParser) -> None:
    au.add_argument("--dataset", required=True)
    au.add_argument("--mask", action="store_true", help="set flagged phase and cue labels to -1 (ignored in training)")
    au.add_argument("--drop", action="store_true", help="leave every flagged episode out of training (kept on disk, "
                    "listed in meta/audit.json)")


def _audit(args: argparse.Namespace) -> None:
    from vla_distill.annotate.audit import audit_dataset

    report = audit_dataset(args.dataset, mask=args.mask, drop=args.drop)
    s = report["summary"]
    print(f"{s['episodes_with_phase_flags']} of {s['episodes']} episodes with phase flags ({s['phase_flags']} flags); "
          f"{s['cue_windows_flagged']} of {s['cue_windows']} cue windows flagged; "
          f"{s['spread_groups_flagged']} kinematic groups with widely spread cues")
    dropped = f"{len(report['dropped_episodes'])} flagged episodes dropped from training"
    done = [x for x, on in (("flagged labels masked", args.mask), (dropped, args.drop)) if on]
    print(f"report: {report['dataset']}/meta/audit.md" + (f" ({'; '.join(done)})" if done else ""))


# ---------------------------------------------------------------- train, vita-train
def _run_args(t: argparse.ArgumentParser, cls) -> None:
    """The flags of the training loop both jobs share (train.config.RunConfig)."""
    t.add_argument("--dataset", default=argparse.SUPPRESS, help="annotated dataset (vla-distill annotate); a --resume "
                   "takes the run's own")
    t.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, train_config.json")
    t.add_argument("--resume", action="store_true", help="continue --out from checkpoints/last without repeating its "
                   "flags (rerunning the command that started it also continues it; --steps may extend it)")
    _field(t, "--target", cls, "train on action.teacher (distillation) or the demonstrations' own actions",
           choices=["teacher", "dataset"])
    _field(t, "--steps", cls, type=int)
    _field(t, "--batch-size", cls, "per process; under torchrun the optimizer's batch is this x processes x "
           "--grad-accum; with --resume, given to re-split the batch on another number of processes", type=int)
    _field(t, "--grad-accum", cls, "micro-batches per optimizer step", type=int)
    _field(t, "--lr", cls, type=float)
    _field(t, "--weight-decay", cls, type=float)
    _field(t, "--warmup-steps", cls, type=int)
    _field(t, "--grad-clip", cls, type=float)
    _field(t, "--ema", cls, "EMA decay of the shipped weights (0 = off)", field="ema_decay", type=float)
    _field(t, "--seed", cls, type=int)
    _field(t, "--val-fraction", cls, type=float)
    _field(t, "--val-batches", cls, type=int)
    _field(t, "--save-every", cls, "checkpoint every N steps (a rerun or --resume may change it)", type=int)
    _field(t, "--log-every", cls, type=int)
    _field(t, "--precision", cls, choices=["auto", "fp32", "bf16"])
    _field(t, "--device", cls, "auto | cpu | cuda | cuda:N")
    t.add_argument("--keep-dropped", dest="drop_audited", action="store_false", default=argparse.SUPPRESS,
                   help="train on episodes `audit --drop` excluded")


def _run_config(args: argparse.Namespace, cls, **fields):
    """The job's config from the command line; with --resume, the run's own (its dataset and flags need not be
    repeated) with what may change (--steps, the batch split) from this command line."""
    if args.resume:
        from vla_distill.train.fit import resumed_config

        return resumed_config(cls, args.out, {k: getattr(args, k) for k in _resume_overrides(args) if k in vars(args)})
    if "dataset" not in vars(args):
        raise ConfigError("--dataset is required (or --resume to continue the run in --out)", field="dataset")
    return _config(cls, **_given(args, cls), **fields)


def _train_args(t: argparse.ArgumentParser) -> None:
    from vla_distill.models.losses import ACTION_LOSSES, LossConfig
    from vla_distill.models.vision import VISION_KINDS
    from vla_distill.train.config import TrainConfig

    _run_args(t, TrainConfig)
    _recipe_flag(t)
    _field(t, "--preset", TrainConfig, "tiny (~2.7M) | small (~37M) | base (~158M, the paper's size)")
    _field(t, "--horizon", TrainConfig, "action chunk length K (the paper's variant: 5)", type=int)
    _field(t, "--n-action-steps", TrainConfig, "actions of each chunk the deployed student executes before it "
           "replans, kept in the checkpoint as lerobot's n_action_steps: eval and run use it unless told (0: all K)",
           type=int)
    _field(t, "--action-loss", LossConfig, field="action", choices=list(ACTION_LOSSES))
    _field(t, "--dim-weights", LossConfig, "per action dimension, comma-separated (default all 1)", type=_floats)
    _field(t, "--phase-weight", LossConfig, type=float)
    _field(t, "--direction-weight", LossConfig, type=float)
    t.add_argument("--no-phase-loss", action="store_true")
    t.add_argument("--no-direction-loss", action="store_true")
    _field(t, "--cameras", TrainConfig, "camera keys, comma-separated (default: all of the dataset's)", type=_csv)
    _field(t, "--depth-keys", TrainConfig, "one depth image key per camera (RGB-D input)", type=_csv)
    _field(t, "--state-keys", TrainConfig, type=_csv)
    _field(t, "--vision", TrainConfig, "vision encoder (default: the preset's); efficientnet-lite0 is ImageNet-"
           "pretrained and frozen (unless --vision-tune-from), with a trained keypoint head",
           choices=["", *VISION_KINDS])
    t.add_argument("--no-feature-cache", dest="feature_cache", action="store_false", default=argparse.SUPPRESS,
                   help="run the frozen encoder on every sample (pixel augmentation on) instead of once per frame")
    _field(t, "--vision-tune-from", TrainConfig, "fine-tune the pretrained trunk's stages after this stride (2 or 4 "
           "of its 8; 1: all of it, no feature cache, ~20x slower a step on a CPU) instead of freezing it; the stages "
           "up to it stay frozen and cached (default 0: all frozen)", type=int)
    _field(t, "--vision-lr-scale", TrainConfig, "the fine-tuned stages' factor on --lr (lerobot's ACT gives its "
           "backbone its own lr)", type=float)
    _field(t, "--feature-shift", TrainConfig, "random shift of cached features in training, in feature cells (8 px "
           "at stride 8): the cached path's augmentation", type=int)
    _field(t, "--aux-state", TrainConfig, "a numeric column the student learns to predict in training only, e.g. "
           "observation.environment_state (object and goal positions): it teaches the vision where small targets "
           "are; nothing extra is needed at run time")
    _field(t, "--aux-state-weight", LossConfig, type=float)
    t.add_argument("--delta-actions", action="store_true", default=argparse.SUPPRESS,
                   help="predict each action dimension that observation.state names alike (an arm's absolute joint "
                        "targets; not grippers) relative to the current state, as openpi's delta actions do")
    t.add_argument("--gripper-from-phases", action="store_true", default=argparse.SUPPRESS,
                   help="train the gripper (the last action dimension) on the median of the teacher's commands over "
                        "each phase segment: phase labels filter a teacher's gripper toggling and jitter")
    _field(t, "--rollout-steps", TrainConfig, "on the episodes a policy drove (a DAgger round's rollouts, told by the "
           "merge's sources), the action loss counts only the first N steps of each chunk (0: all)", type=int)


def _train(args: argparse.Namespace) -> None:
    from vla_distill.models.losses import LossConfig
    from vla_distill.train.config import TrainConfig
    from vla_distill.train.student import train

    loss = _given(args, LossConfig)
    if args.no_phase_loss:
        loss["phase_weight"] = 0.0
    if args.no_direction_loss:
        loss["direction_weight"] = 0.0
    cfg = _run_config(args, TrainConfig, loss=_config(LossConfig, **loss))
    last = train(cfg, resume=args.resume, overrides=_resume_overrides(args))
    _print_rank0(f"checkpoint: {last}/pretrained_model")


def _vita_train_args(v: argparse.ArgumentParser) -> None:
    from vla_distill.models.vita import FAMILIES, STAGES
    from vla_distill.train.config import GRIPPER_MODES, VLM_CAMERAS, VitaTrainConfig

    _run_args(v, VitaTrainConfig)
    _field(v, "--expert", VitaTrainConfig, "the expert: a student checkpoint (its action decoder is reused)")
    _field(v, "--vlm", VitaTrainConfig, "local transformers VLM directory; parts (a VLM from the pretrained parts that "
           "ship offline: EfficientNet-Lite0, a projector, all-MiniLM-L6-v2) or parts:random (the same, untrained); "
           "tiny:paligemma | tiny:idefics3 | tiny:qwen2_vl | tiny:qwen2_5_vl (small, random, offline)")
    _field(v, "--family", VitaTrainConfig, "for a local VLM directory (default: from its config's model_type)",
           choices=["", *FAMILIES])
    _field(v, "--vlm-image-size", VitaTrainConfig, "image side fed to the VLM (default: its vision config's; Qwen "
           "families 56, any multiple of 28; parts 128, any multiple of 32)", type=int)
    _field(v, "--vlm-cameras", VitaTrainConfig, "the cameras the VLM sees: the expert's first, or all the expert "
           "reads, each camera's image tokens after the last's (the parts VLM only; finetune inherits it)",
           choices=list(VLM_CAMERAS))
    _field(v, "--stage", VitaTrainConfig, choices=list(STAGES))
    _field(v, "--init", VitaTrainConfig, "finetune: the align run to start from")
    _field(v, "--n-action-tokens", VitaTrainConfig, "1 (the paper) or the expert's chunk length", type=int)
    _field(v, "--lora-rank", VitaTrainConfig,
           "finetune: LoRA adapters (peft) on the language model's attention instead "
           "of training all of it (0: full)", type=int)
    _field(v, "--decoder-lr-scale", VitaTrainConfig, "finetune: the reused expert decoder's learning rate as a "
           "fraction of --lr (the language model's)", type=float)
    _field(v, "--gripper", VitaTrainConfig, "finetune: the gripper (the last action dimension) as a binary decision "
           "(the paper's BCE), regressed like the arm, or binary only where the teacher's targets are (auto)",
           choices=list(GRIPPER_MODES))


def _vita_train(args: argparse.Namespace) -> None:
    from vla_distill.train.config import VitaTrainConfig
    from vla_distill.train.vita import vita_train

    cfg = _run_config(args, VitaTrainConfig)
    last = vita_train(cfg, resume=args.resume, overrides=_resume_overrides(args))
    _print_rank0(f"checkpoint: {last}/pretrained_model")


# ---------------------------------------------------------------- eval, report
def _eval_args(e: argparse.ArgumentParser) -> None:
    from vla_distill.eval.config import EvalConfig
    from vla_distill.sim.registry import ENVS

    e.add_argument("--policy", required=True,
                   help="checkpoint (run dir, checkpoint dir or pretrained_model) or a teacher "
                   "kind: scripted | noisy[...]:KIND | checkpoint:PATH | openpi://HOST:PORT | openvla://HOST:PORT")
    e.add_argument("--tasks", dest="task_spec", metavar="TASKS", required=True,
                   help="MetaWorld: task names, mt10, mt50, easy...; LIBERO: libero_spatial, "
                   "libero_goal/3, ...")
    e.add_argument("--out", required=True, help="evaluation directory (rerun the same command to resume)")
    _field(e, "--env", EvalConfig, choices=list(ENVS))
    _field(e, "--episodes", EvalConfig, "episodes per task", type=int)
    _field(e, "--seed", EvalConfig, "held-out seed stream (never the demonstrations' seeds)", type=int)
    _field(e, "--max-steps", EvalConfig, "step limit (0: the simulator's, MetaWorld 500)", type=int)
    _field(e, "--steps-after-success", EvalConfig, type=int)
    _field(e, "--workers", EvalConfig, "worker processes (0: one per core)", type=int)
    _field(e, "--videos", EvalConfig, "episodes recorded per task with the predicted phase drawn", type=int)
    _field(e, "--video-failures", EvalConfig, "also record every failed episode", action="store_true")
    _field(e, "--n-action-steps", EvalConfig, "queue: actions executed per predicted chunk (0: the policy's own, "
           "else all)", type=int)
    _field(e, "--chunk", EvalConfig, "queue: execute the chunk, then replan; ensemble: infer every step, ACT temporal "
           "ensembling", choices=["queue", "ensemble"])
    _field(e, "--image-size", EvalConfig, "camera size for teachers (0: 128; LIBERO 256)", type=int)
    _field(e, "--latency-steps", EvalConfig, "closed-loop steps of the batch-1 latency measurement", type=int)
    e.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="remote teacher option (see annotate)")
    _field(e, "--device", EvalConfig)
    _field(e, "--backend", EvalConfig, "for policies: " + BACKEND_HELP)
    e.add_argument("--instructions", dest="instructions_file", default="", metavar="JSON",
                   help="prompts given instead of the tasks' own: {task: [wording, ...]}, episode i taking wording i "
                        "mod n (e.g. benchmarks/paraphrases/mt10.json, wordings no policy was trained on)")


def _eval(args: argparse.Namespace) -> None:
    _passive_omp()

    from vla_distill.eval.config import EvalConfig
    from vla_distill.eval.evaluate import evaluate
    from vla_distill.eval.report import summary_table
    from vla_distill.sim.registry import get_simulator

    fields = _given(args, EvalConfig)
    env = fields.get("env", EvalConfig.__dataclass_fields__["env"].default)
    cfg = EvalConfig(tasks=tuple(get_simulator(env).resolve_tasks(args.task_spec)),
                     teacher_options=_key_values(args.teacher_opt, "--teacher-opt"),
                     instructions=_instructions(args.instructions_file), **fields)
    info = evaluate(cfg, command="vla-distill " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "")
    o = info["overall"]
    print(summary_table([info]))
    print(f"success {o['pc_success']:.1f}% task-weighted, {o['pc_success_group_mean']:.1f}% mean of difficulty groups "
          f"({o['n_episodes']} episodes); {info['observability']['flagged_episodes']} episodes flagged -> "
          f"{args.out}/eval_info.json")


def _instructions(path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """--instructions: a JSON object {task: [wording, ...]}, checked in one line naming the file."""
    if not path:
        return ()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"unreadable ({e})", path=path, field="instructions") from None
    ok = isinstance(data, dict) and all(isinstance(w, list) and w and all(isinstance(x, str) and x.strip() for x in w)
                                        for w in data.values())
    if not ok:
        raise ConfigError("expected {task: [wording, ...]} with non-empty strings", path=path, field="instructions")
    return tuple((task, tuple(w)) for task, w in data.items())


def _report_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("evals", nargs="+", help="evaluation directories, the teacher's first")
    r.add_argument("--out", required=True)


def _report(args: argparse.Namespace) -> None:
    from vla_distill.eval.report import write_report

    path, table = write_report(args.evals, args.out)
    print(table)
    print(f"report: {path}")


# ---------------------------------------------------------------- export, run, serve
BACKEND_HELP = ("auto (default: torch, or onnx for a bundle exported --format onnx-only) | torch | torch-bf16 | onnx | "
                "onnx-int8 (onnx: bundles exported with --format onnx or onnx-only)")


def _export_args(x: argparse.ArgumentParser) -> None:
    x.add_argument("--policy", required=True, help="checkpoint (run dir, checkpoint dir or pretrained_model)")
    x.add_argument("--out", required=True, help="bundle directory (replaced if it exists)")
    x.add_argument("--format", default="bundle", choices=["bundle", "onnx", "onnx-only"],
                   help="bundle: torch backends; onnx: also model.onnx and model.int8.onnx (ONNX Runtime); "
                        "onnx-only: the graphs without the torch weights (what a reference student ships)")
    x.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="stored weight dtype (default fp32)")
    x.add_argument("--observations", default="", help="dataset whose frames are the parity observations "
                   "(default: the policy's training dataset)")
    x.add_argument("--n-observations", type=int, default=32)
    x.add_argument("--int8", default="dynamic", choices=["dynamic", "static", "none"],
                   help="onnx: how model.int8.onnx is quantized; static also quantizes convolutions, activation ranges "
                        "calibrated on other recorded observations (faster for large presets, slower for tiny); "
                        "none: no int8 graph")
    x.add_argument("--n-action-steps", type=int, default=None, help="actions of each chunk the bundle executes "
                   "before replanning, recorded in its config (default: the checkpoint's; 0: all K)")


def _export(args: argparse.Namespace) -> None:
    from vla_distill.deploy.export import export

    m = export(args.policy, args.out, args.format, args.dtype, args.observations or None, args.n_observations,
               args.int8, n_action_steps=args.n_action_steps)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir()) / 2**20
    print(f"bundle: {args.out} ({size:.1f} MB; backends {', '.join(m['backends'])}; "
          f"observation {', '.join(k for k in m['observation_spec'])}; actions {m['action']['shape']})")


def _run_loop_args(rn: argparse.ArgumentParser) -> None:
    from vla_distill.deploy.config import LOOP_CHUNK_MODES, LoopConfig
    from vla_distill.sim.registry import DEFAULT_ENV, ENVS

    rn.add_argument("--policy", default="",
                    help="bundle or checkpoint, or openpi://HOST:PORT: a policy served elsewhere "
                    "(`vla-distill serve`, or any openpi-protocol server whose metadata has an observation_spec)")
    rn.add_argument("--backend", default="auto", help=BACKEND_HELP)
    rn.add_argument("--obs-map", action="append", default=[], metavar="SERVER_KEY=ROBOT_KEY",
                    help="openpi://: a server observation key read from another robot key, repeatable "
                         "(e.g. observation/image=observation.images.corner2)")
    rn.add_argument("--timeout-s", type=_bounded(float, 0.001), default=10.0,
                    help="openpi://: seconds to wait for a reply before the tick holds (default 10)")
    rn.add_argument("--tasks", default="", help="tasks, as for eval")
    rn.add_argument("--env", default=DEFAULT_ENV, choices=list(ENVS))
    _field(rn, "--hz", LoopConfig, "control rate (a replay: the recorded rate)", type=float)
    rn.add_argument("--episodes", type=_bounded(int, 1), default=1, help="episodes per task (default 1)")
    rn.add_argument("--seed", type=_bounded(int, 0), default=0, help="held-out seed stream, as for eval")
    _field(rn, "--max-steps", LoopConfig, type=int)
    _field(rn, "--chunk", LoopConfig, "queue: execute the chunk, then replan; ensemble: infer every tick, ACT temporal "
           "ensembling; ahead: compute the next chunk on another thread while this one executes (asked early enough "
           "for the measured inference delay), the seam blended", choices=list(LOOP_CHUNK_MODES))
    _field(rn, "--n-action-steps", LoopConfig, "queue: actions executed per chunk (0: the policy's own, else all)",
           type=int)
    _field(rn, "--ensemble-coeff", LoopConfig, type=float)
    _field(rn, "--overlap", LoopConfig, "ahead: steps the queued and the next chunk overlap, blended (also the margin "
           "for an inference slower than measured)", type=int)
    _field(rn, "--max-latency-ms", LoopConfig, "drop actions later than this (0: one period)", type=float)
    rn.add_argument("--threads", type=int, default=0,
                    help="policy threads (default: half the cores, at most 4: the simulated robot renders on the rest)")
    rn.add_argument("--record", default="", help="save each episode's observations and sent actions here")
    rn.add_argument("--replay", default="", help="send a recording's actions again (DIR/TASK/episode_000) and compare")


def _run_loop(args: argparse.Namespace) -> int:
    _passive_omp()
    from vla_distill.deploy import sim_runs
    from vla_distill.deploy.config import LoopConfig
    from vla_distill.sim.registry import get_simulator

    if args.replay:
        sim_runs.replay_recording(args.replay, vars(args).get("hz"))
        return 0
    if not args.policy or not args.tasks:
        raise ConfigError("--policy and --tasks are required (or --replay RECORDING)")
    cfg = _config(LoopConfig, **_given(args, LoopConfig))
    tasks = get_simulator(args.env).resolve_tasks(args.tasks)
    summaries, interrupted = [], False
    try:  # a Ctrl-C at any moment ends the same way: what finished, then exit 130
        if not args.policy.startswith("openpi://"):
            from vla_distill.models.backends import resolve_backend

            args.backend = resolve_backend(args.policy, args.backend)
        print(f"loading {args.policy} ({args.backend})", flush=True)  # progress on stdout: stderr is for errors
        policy = _loop_policy(args, cfg)
        summaries, interrupted = sim_runs.run_tasks(policy, args.policy, args.backend, args.env, tasks, args.episodes,
                                                    args.seed, cfg, args.record or None,
                                                    log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        interrupted = True
    with sim_runs.interrupts_deferred():  # a second Ctrl-C still gets the summary
        _run_summary(summaries, interrupted, len(tasks) * args.episodes, cfg, args)
    return 130 if interrupted else 0


def _loop_policy(args: argparse.Namespace, cfg):
    """The policy `run` drives: a bundle or checkpoint on a local backend, or one served at openpi://HOST:PORT."""
    import torch

    from vla_distill.models.backends import load_policy, policy_threads

    torch.set_num_threads(policy_threads(args.threads))
    if args.policy.startswith("openpi://"):
        from vla_distill.data.openpi_client import parse_address
        from vla_distill.deploy.remote_policy import RemotePolicy

        host, port = parse_address(args.policy)
        policy = RemotePolicy(host, port, args.timeout_s, dict(_key_values(args.obs_map, "--obs-map")))
        args.backend = "remote"
    else:
        policy = load_policy(args.policy, args.backend)
    if cfg.chunk == "ahead" and policy.horizon == 1:
        print("note: --chunk ahead needs chunks of several actions to run ahead; this policy predicts one per call, so "
              "ticks hold while it computes (counted as starved)", file=sys.stderr)
    return policy


def _run_summary(summaries: list[dict], interrupted: bool, planned: int, cfg, args: argparse.Namespace) -> None:
    from vla_distill.deploy import sim_runs
    from vla_distill.eval.report import markdown_table

    if summaries:
        print(markdown_table(list(sim_runs.HEADER), sim_runs.rows(summaries)))
    late, ticks = sum(s["late_dropped"] for s in summaries), sum(s["ticks"] for s in summaries)
    if cfg.chunk != "ahead" and ticks and late > 0.5 * ticks:
        print(f"note: {late} of {ticks} actions came after their tick and were dropped: the policy is slower than the "
              f"{1e3 / cfg.hz:.0f} ms period ({cfg.chunk} waits for it in the loop); --chunk ahead computes the next "
              "chunk while the current one runs", file=sys.stderr)
    done = [s for s in summaries if not s["interrupted"]]
    ok = sum(s["success"] for s in done)
    where = f"; recordings in {args.record}" if args.record and summaries else ""
    if not interrupted:
        print(f"{ok}/{len(done)} episodes succeeded at {cfg.hz:g} Hz ({args.backend}){where}")
        return
    stopped = [s for s in summaries if s["interrupted"]]
    print(f"interrupted: {len(done)} of {planned} episodes finished, {ok} succeeded"
          + (f"; the episode running was stopped after {stopped[0]['ticks']} ticks (not counted)" if stopped else "")
          + where)


def _serve_args(sv: argparse.ArgumentParser) -> None:
    sv.add_argument("--policy", required=True, help="bundle or checkpoint")
    sv.add_argument("--backend", default="auto", help=BACKEND_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only; 0.0.0.0 to expose)")
    sv.add_argument("--port", type=_bounded(int, 0, 65535), default=8000, help="0: any free port (default 8000)")
    sv.add_argument("--max-batch", type=_bounded(int, 1), default=1,
                    help="batch up to this many concurrent requests (default 1)")
    sv.add_argument("--batch-wait-ms", type=_bounded(float, 0), default=2.0,
                    help="how long a batch waits to fill (default 2 ms)")
    sv.add_argument("--max-message-mb", type=_bounded(float, 0.001), default=16.0)
    sv.add_argument("--obs-map", action="append", default=[], metavar="CLIENT_KEY=POLICY_KEY",
                    help="repeatable: accept a client's own key for an input, e.g. openpi's LIBERO example "
                         "observation/image=observation.images.image (slash forms of our keys need none)")


def _serve(args: argparse.Namespace) -> None:
    from vla_distill.deploy.openpi_server import serve_policy
    from vla_distill.models.backends import load_policy, resolve_backend

    args.backend = resolve_backend(args.policy, args.backend)
    policy = load_policy(args.policy, args.backend)
    serve_policy(policy, args.backend, args.host, args.port, args.max_batch, args.batch_wait_ms,
                 int(args.max_message_mb * 2**20), obs_map=dict(_key_values(args.obs_map, "--obs-map")))


# ---------------------------------------------------------------- the parser
STAGES = {  # name: (help, flags, run), in pipeline order
    "collect": ("record scripted-expert MetaWorld demonstrations (or a policy's rollouts, DAgger) as a LeRobotDataset "
                "v3.0", _collect_args, _collect),
    "merge": ("merge LeRobot v3.0 datasets with the same features into one (demonstrations + DAgger rollouts)",
              _merge_args, _merge),
    "annotate": ("teacher actions, phase anchors and direction cues for every frame, then an audit", _annotate_args,
                 _annotate),
    "audit": ("cross-check phase labels and cues against the kinematics; writes meta/audit.{json,md}", _audit_args,
              _audit),
    "train": ("train a student on an annotated dataset (action + phase + direction losses)", _train_args, _train),
    "vita-train": ("VITA-VLA: teach a VLM to act from a student expert (stage align, then finetune)", _vita_train_args,
                   _vita_train),
    "eval": ("closed-loop evaluation of a checkpoint or a teacher in simulation (eval_info.json)", _eval_args, _eval),
    "report": ("gather evaluations into one Markdown + HTML page (first = reference row)", _report_args, _report),
    "export": ("a standalone bundle (torch + safetensors) or ONNX graphs, with a parity check", _export_args, _export),
    "run": ("the real-time control loop on a simulated robot: timing, safety counters, recordings", _run_loop_args,
            _run_loop),
    "serve": ("serve a policy over openpi's websocket protocol (openpi-client compatible)", _serve_args, _serve),
    "inspect": ("validate a LeRobot dataset (v3.0 or v2.1) and print its summary", _inspect_args, _inspect),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every stage's subcommand; with `only`, the flags of that stage alone are declared (the others' modules are not
    imported)."""
    p = argparse.ArgumentParser(prog="vla-distill", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help, add_flags, run) in STAGES.items():
        s = sub.add_parser(name, help=help)
        if only in (None, name):
            add_flags(s)
        s.set_defaults(func=run)
    return p


def disk_error(args: argparse.Namespace, e: OSError) -> str:
    """One line for a full disk or an unwritable output: the path (the file where the error names one, which
    pyarrow's and a plain write's do not, else the stage's output) and what a rerun does."""
    where = e.filename or getattr(args, "out", None) or "the output"
    full = e.errno in (errno.ENOSPC, errno.EDQUOT) and args.command in RESUMABLE
    again = "; free space, then run the same command again to continue" if full else ""
    return f"{where}: {os.strerror(e.errno)}{again}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(stage if stage in STAGES else None).parse_args(argv)
    try:
        code = args.func(args)
    except VlaDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vla-distill inspect DIR | head`: the reader left; Python's documented way out
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: {disk_error(args, e)}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
