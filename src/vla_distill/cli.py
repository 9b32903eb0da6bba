"""`vla-distill <stage>`: one subcommand per pipeline stage.

Errors in user input print one line naming the file or field and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from vla_distill.errors import ConfigError, VlaDistillError


def _cmd_collect(args: argparse.Namespace) -> None:
    from vla_distill.collect.collect import collect
    from vla_distill.collect.config import CollectConfig
    from vla_distill.sim.metaworld import CameraConfig
    from vla_distill.sim.metaworld_tasks import resolve_tasks

    cameras = CameraConfig(
        names=tuple(c.strip() for c in args.cameras.split(",") if c.strip()), height=args.image_size, width=args.image_size
    )
    cfg = CollectConfig(
        tasks=tuple(resolve_tasks(args.tasks)),
        episodes=args.episodes,
        seed=args.seed,
        steps_after_success=args.steps_after_success,
        max_attempts_factor=args.max_attempts_factor,
        cameras=cameras,
        image_format=args.image_format,
        workers=args.workers,
    )
    collect(cfg, args.out)


def _cmd_inspect(args: argparse.Namespace) -> None:
    from vla_distill.data.dataset import RobotDataset

    ds = RobotDataset(args.dataset)
    if not args.quick:
        ds.validate(decode_videos=True)
    print(f"{ds.root}: LeRobotDataset {ds.version}, {ds.num_episodes} episodes, {ds.num_frames} frames at {ds.fps:g} fps, {len(ds.tasks)} tasks")
    for key, ft in ds.features.items():
        extra = f" ({ft['info'].get('video.codec')})" if ft["dtype"] == "video" and "info" in ft else ""
        print(f"  {key:<34} {ft['dtype']:<8} {ft['shape']}{extra}")
    for i, task in enumerate(ds.tasks):
        n = sum(task in ep.tasks for ep in ds.episodes)
        print(f"  task {i}: {task!r} ({n} episodes)")
    print("ok" if not args.quick else "ok (metadata and parquet checked; videos not decoded)")


def _key_values(items: list[str], flag: str) -> tuple[tuple[str, str], ...]:

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", field=flag)
        out.append((key, value))
    return tuple(out)


def _cmd_annotate(args: argparse.Namespace) -> None:
    from vla_distill.annotate.run import AnnotateConfig, annotate
    from vla_distill.annotate.vlm import VLMConfig

    vlm = None
    if args.vlm_url or args.vlm_model:
        vlm = VLMConfig(url=args.vlm_url, model=args.vlm_model, api_key=args.vlm_api_key, keyframes=args.vlm_keyframes,
                        contact_sheet=not args.vlm_separate_images, concurrency=args.vlm_concurrency)
    try:
        cfg = AnnotateConfig(
            teacher=args.teacher, teacher_options=_key_values(args.teacher_opt, "--teacher-opt"), phases=args.phases,
            taxonomy=args.taxonomy, directions=args.directions, window=args.window, stride=args.stride,
            text_encoder=args.text_encoder, vlm=vlm, vlm_camera=args.vlm_camera, vlm_cache=args.vlm_cache, audit=not args.no_audit,
        )
    except ValueError as e:

        raise ConfigError(str(e)) from None
    executor = None
    if args.executor == "ray":
        from vla_distill.annotate.executors import make_executor

        executor = make_executor("ray", address=args.address, workers=args.workers, worker_cpus=args.worker_cpus,
                                 worker_gpus=args.worker_gpus, max_retries=args.max_retries)
    elif args.workers or args.address != "local" or args.worker_gpus is not None:
        raise ConfigError("--workers, --address and --worker-gpus need --executor ray", field="executor")
    annotate(args.dataset, args.out, cfg, executor)


def _cmd_audit(args: argparse.Namespace) -> None:
    from vla_distill.annotate.audit import audit_dataset

    report = audit_dataset(args.dataset, mask=args.mask, drop=args.drop)
    s = report["summary"]
    print(f"{s['episodes_with_phase_flags']} of {s['episodes']} episodes with phase flags ({s['phase_flags']} flags); "
          f"{s['cue_windows_flagged']} of {s['cue_windows']} cue windows flagged; "
          f"{s['spread_groups_flagged']} kinematic groups with widely spread cues")
    done = [x for x, on in (("flagged labels masked", args.mask),
                            (f"{len(report['dropped_episodes'])} flagged episodes dropped from training", args.drop)) if on]
    print(f"report: {report['dataset']}/meta/audit.md" + (f" ({'; '.join(done)})" if done else ""))


def _cmd_train(args: argparse.Namespace) -> None:
    from vla_distill.train.config import TrainConfig
    from vla_distill.train.losses import LossConfig
    from vla_distill.train.loop import train

    def split(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    try:
        loss = LossConfig(action=args.action_loss, dim_weights=tuple(float(x) for x in split(args.dim_weights)),
                          phase_weight=0.0 if args.no_phase_loss else args.phase_weight,
                          direction_weight=0.0 if args.no_direction_loss else args.direction_weight)
        cfg = TrainConfig(
            dataset=args.dataset, out=args.out, preset=args.preset, steps=args.steps, batch_size=args.batch_size or 64,
            grad_accum=args.grad_accum or 1, lr=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, ema_decay=args.ema,
            seed=args.seed, horizon=args.horizon, target=args.target, loss=loss, cameras=split(args.cameras),
            depth_keys=split(args.depth_keys), state_keys=split(args.state_keys), vision=args.vision,
            val_fraction=args.val_fraction, val_batches=args.val_batches, save_every=args.save_every,
            log_every=args.log_every, precision=args.precision, device=args.device, drop_audited=not args.keep_dropped)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    last = train(cfg, resume=args.resume, overrides=_given(args))
    _print_rank0(f"checkpoint: {last}/pretrained_model")


def _cmd_vita_train(args: argparse.Namespace) -> None:
    from vla_distill.train.vita import VitaTrainConfig, vita_train

    try:
        cfg = VitaTrainConfig(dataset=args.dataset, out=args.out, expert=args.expert, vlm=args.vlm, family=args.family,
                              stage=args.stage, init=args.init, n_action_tokens=args.n_action_tokens, lora_rank=args.lora_rank,
                              vlm_image_size=args.vlm_image_size, target=args.target, steps=args.steps,
                              batch_size=args.batch_size or 16, grad_accum=args.grad_accum or 1, lr=args.lr,
                              warmup_steps=args.warmup_steps, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
                              precision=args.precision, device=args.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    last = vita_train(cfg, resume=args.resume, overrides=_given(args))
    _print_rank0(f"checkpoint: {last}/pretrained_model")


def _given(args: argparse.Namespace) -> tuple[str, ...]:
    """What a resumed run takes from this command line: --steps, and the batch split when given."""
    return ("steps",) + tuple(k for k in ("batch_size", "grad_accum") if getattr(args, k) is not None)


def _print_rank0(line: str) -> None:
    import os

    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate every process runs this
        print(line)


def _cmd_eval(args: argparse.Namespace) -> None:
    import shlex

    _passive_omp()

    from vla_distill.eval import envs
    from vla_distill.eval.run import EvalConfig, evaluate, summary_table

    cfg = EvalConfig(
        policy=args.policy, out=args.out, tasks=tuple(envs.resolve_tasks(args.env, args.tasks)), env=args.env,
        episodes=args.episodes, seed=args.seed, max_steps=args.max_steps, steps_after_success=args.steps_after_success,
        workers=args.workers, videos=args.videos, video_failures=args.video_failures, n_action_steps=args.n_action_steps,
        image_size=args.image_size,
        latency_steps=args.latency_steps, teacher_options=_key_values(args.teacher_opt, "--teacher-opt"), device=args.device,
        backend=args.backend)
    info = evaluate(cfg, command="vla-distill " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "")
    o = info["overall"]
    print(summary_table([info]))
    print(f"success {o['pc_success']:.1f}% task-weighted, {o['pc_success_group_mean']:.1f}% mean of difficulty groups "
          f"({o['n_episodes']} episodes); {info['observability']['flagged_episodes']} episodes flagged -> {args.out}/eval_info.json")


def _cmd_report(args: argparse.Namespace) -> None:
    from vla_distill.eval.report import write_report

    path, table = write_report(args.evals, args.out)
    print(table)
    print(f"report: {path}")


def _cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vla_distill.deploy.bundle import export

    m = export(args.policy, args.out, args.format, args.dtype, args.observations or None, args.n_observations)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir()) / 2**20
    print(f"bundle: {args.out} ({size:.1f} MB; backends {', '.join(m['backends'])}; "
          f"observation {', '.join(k for k in m['observation_spec'])}; actions {m['action']['shape']})")


def _passive_omp() -> None:
    """Before torch loads OpenMP: a simulator's renderer shares the cores with the policy, and spinning OpenMP
    threads made batch-1 calls ~50x slower when one more process was busy (measured; see BENCHMARKS.md)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cmd_run(args: argparse.Namespace) -> None:
    _passive_omp()
    import torch

    from vla_distill.deploy.loop import LoopConfig
    from vla_distill.deploy.realtime import replay_recording, run_tasks
    from vla_distill.deploy.runtime import load_policy
    from vla_distill.eval import envs

    if args.replay:
        replay_recording(args.replay, args.hz)
        return
    if not args.policy or not args.tasks:
        raise ConfigError("--policy and --tasks are required (or --replay RECORDING)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = LoopConfig(hz=args.hz or 12.5, max_steps=args.max_steps, chunk=args.chunk, n_action_steps=args.n_action_steps,
                         ensemble_coeff=args.ensemble_coeff, max_latency_ms=args.max_latency_ms)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    policy = load_policy(args.policy, args.backend)
    summaries = run_tasks(policy, args.policy, args.backend, args.env, envs.resolve_tasks(args.env, args.tasks),
                          args.episodes, args.seed, cfg, args.record or None)
    ok = sum(s["success"] for s in summaries)
    print(f"{ok}/{len(summaries)} episodes succeeded at {cfg.hz:g} Hz ({args.backend})"
          + (f"; recordings in {args.record}" if args.record else ""))


def _cmd_serve(args: argparse.Namespace) -> None:
    from vla_distill.deploy.openpi_server import serve_policy
    from vla_distill.deploy.runtime import load_policy

    policy = load_policy(args.policy, args.backend)
    serve_policy(policy, args.backend, args.host, args.port, args.max_batch, args.batch_wait_ms,
                 int(args.max_message_mb * 2**20))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-distill", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="record scripted-expert MetaWorld demonstrations as a LeRobotDataset v3.0")
    c.add_argument("--tasks", required=True, help="task names (reach-v3,push-v3), mt10, mt50, easy, medium, hard or very_hard")
    c.add_argument("--episodes", type=int, default=10, help="successful episodes kept per task (default 10)")
    c.add_argument("--out", required=True, help="output dataset directory (rerun the same command to resume)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--cameras", default="corner2,gripper", help="camera aliases (default corner2,gripper)")
    c.add_argument("--image-size", type=int, default=128)
    c.add_argument("--image-format", choices=["video", "image"], default="video", help="AV1 mp4 (default) or PNG in parquet")
    c.add_argument("--steps-after-success", type=int, default=10, help="frames kept after the first success (default 10)")
    c.add_argument("--max-attempts-factor", type=float, default=3.0, help="attempts per task at most episodes x this")
    c.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    c.set_defaults(func=_cmd_collect)

    a = sub.add_parser("annotate", help="teacher actions, phase anchors and direction cues for every frame, then an audit")
    a.add_argument("--dataset", required=True, help="input LeRobot dataset")
    a.add_argument("--out", required=True, help="new annotated dataset (rerun the same command to resume)")
    a.add_argument("--teacher", default="scripted",
                   help="scripted | noisy[std=,toggle=,burst=,stale=,seed=]:KIND | checkpoint:PATH | openpi://HOST:PORT | "
                        "openvla://HOST:PORT | none (default scripted)")
    a.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="remote teacher option, repeatable: obs_map.<server key>=<our key>, image_size, action_dim, horizon, "
                        "gripper (keep|flip|unit_to_signed|unit_to_signed_flip), concurrency, timeout_s, retries, unnorm_key, api_key; "
                        "checkpoint teachers: device (auto|cpu|cuda)")
    a.add_argument("--phases", default="kinematic", choices=["kinematic", "vlm", "none"])
    a.add_argument("--taxonomy", default="4", choices=["4", "9"], help="4: approach/grasp/transport/release; 9: idle ... completed")
    a.add_argument("--directions", default="kinematic", choices=["kinematic", "vlm", "none"])
    a.add_argument("--window", type=int, default=8, help="frames per direction-cue window (default 8)")
    a.add_argument("--stride", type=int, default=4, help="frames between window starts (default 4)")
    a.add_argument("--text-encoder", default="", help="local sentence-transformers model dir (default: bundled all-MiniLM-L6-v2)")
    a.add_argument("--vlm-url", default="", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    a.add_argument("--vlm-model", default="")
    a.add_argument("--vlm-api-key", default="")
    a.add_argument("--vlm-camera", default="", help="camera key shown to the VLM (default: the first)")
    a.add_argument("--vlm-keyframes", type=int, default=4)
    a.add_argument("--vlm-separate-images", action="store_true", help="send keyframes as separate images, not one contact sheet")
    a.add_argument("--vlm-concurrency", type=int, default=4)
    a.add_argument("--vlm-cache", default="", help="answer cache (default $VLA_DISTILL_CACHE/vlm.sqlite)")
    a.add_argument("--no-audit", action="store_true")
    r = a.add_argument_group("scale out (pip install 'vla-distill[ray]')")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: this process; ray: episodes sharded over Ray actors, one teacher/VLM client each")
    r.add_argument("--address", default="local", help="Ray: local (start one here) | auto (the cluster of `ray start`) | "
                   "HOST:PORT | ray://HOST:10001 (default local)")
    r.add_argument("--workers", type=int, default=0, help="Ray actors (default: as many as the cluster's CPUs/GPUs hold)")
    r.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    r.add_argument("--worker-gpus", type=float, default=None,
                   help="GPUs per Ray actor (default: 1 for a checkpoint: teacher when the cluster has GPUs, else 0)")
    r.add_argument("--max-retries", type=int, default=3, help="times an episode is asked again after its worker was lost")
    a.set_defaults(func=_cmd_annotate)

    au = sub.add_parser("audit", help="cross-check phase labels and cues against the kinematics; writes meta/audit.{json,md}")
    au.add_argument("--dataset", required=True)
    au.add_argument("--mask", action="store_true", help="set flagged phase and cue labels to -1 (ignored in training)")
    au.add_argument("--drop", action="store_true", help="leave every flagged episode out of training (kept on disk, "
                    "listed in meta/audit.json)")
    au.set_defaults(func=_cmd_audit)

    t = sub.add_parser("train", help="train a student on an annotated dataset (action + phase + direction losses)")
    t.add_argument("--dataset", required=True, help="annotated dataset (vla-distill annotate)")
    t.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, train_config.json")
    t.add_argument("--preset", default="tiny", help="tiny (~2.7M) | small (~37M) | base (~158M, the paper's size)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--resume", action="store_true", help="continue --out from checkpoints/last (--steps may extend it)")
    t.add_argument("--batch-size", type=int, default=None, help="per process (default 64); under torchrun the "
                   "optimizer's batch is this x processes x --grad-accum; with --resume, given to re-split the batch "
                   "on another number of processes")
    t.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--ema", type=float, default=0.0, help="EMA decay of the shipped weights (0 = off)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--horizon", type=int, default=1, help="action chunk length K (the paper's variant: 5)")
    t.add_argument("--target", default="teacher", choices=["teacher", "dataset"],
                   help="train on action.teacher (distillation) or the demonstrations' own actions")
    t.add_argument("--action-loss", default="mse", choices=["mse", "l1", "smooth_l1", "discrete"])
    t.add_argument("--dim-weights", default="", help="per action dimension, comma-separated (default all 1)")
    t.add_argument("--phase-weight", type=float, default=0.1)
    t.add_argument("--direction-weight", type=float, default=0.05)
    t.add_argument("--no-phase-loss", action="store_true")
    t.add_argument("--no-direction-loss", action="store_true")
    t.add_argument("--cameras", default="", help="camera keys, comma-separated (default: all of the dataset's)")
    t.add_argument("--depth-keys", default="", help="one depth image key per camera (RGB-D input)")
    t.add_argument("--state-keys", default="observation.state")
    t.add_argument("--vision", default="", choices=["", "resnet", "vit"], help="vision encoder (default: the preset's)")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--val-batches", type=int, default=20)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    t.add_argument("--device", default="auto")
    t.add_argument("--keep-dropped", action="store_true", help="train on episodes `audit --drop` excluded")
    t.set_defaults(func=_cmd_train)

    v = sub.add_parser("vita-train", help="VITA-VLA: teach a VLM to act from a student expert (stage align, then finetune)")
    v.add_argument("--dataset", required=True, help="annotated dataset")
    v.add_argument("--out", required=True, help="run directory (as for train)")
    v.add_argument("--expert", default="", help="the expert: a student checkpoint (its action decoder is reused)")
    v.add_argument("--vlm", default="tiny:paligemma", help="local transformers VLM directory, or tiny:paligemma | "
                   "tiny:idefics3 | tiny:qwen2_vl | tiny:qwen2_5_vl (small, random, offline)")
    v.add_argument("--family", default="", choices=["", "paligemma", "idefics3", "qwen2_vl", "qwen2_5_vl"],
                   help="for a local VLM directory (default: from its config's model_type)")
    v.add_argument("--vlm-image-size", type=int, default=0, help="image side fed to the VLM (default: its vision "
                   "config's; Qwen families 56, any multiple of 28)")
    v.add_argument("--stage", default="align", choices=["align", "finetune"])
    v.add_argument("--init", default="", help="finetune: the align run to start from")
    v.add_argument("--n-action-tokens", type=int, default=1, help="1 (the paper) or the expert's chunk length")
    v.add_argument("--lora-rank", type=int, default=0, help="finetune: LoRA adapters (peft) on the language model's "
                   "attention instead of training all of it (default 0: full)")
    v.add_argument("--target", default="teacher", choices=["teacher", "dataset"])
    v.add_argument("--steps", type=int, default=500)
    v.add_argument("--batch-size", type=int, default=None, help="per process (default 16)")
    v.add_argument("--grad-accum", type=int, default=None)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--warmup-steps", type=int, default=50)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--save-every", type=int, default=200)
    v.add_argument("--log-every", type=int, default=20)
    v.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    v.add_argument("--device", default="auto")
    v.add_argument("--resume", action="store_true")
    v.set_defaults(func=_cmd_vita_train)

    e = sub.add_parser("eval", help="closed-loop evaluation of a checkpoint or a teacher in simulation (eval_info.json)")
    e.add_argument("--policy", required=True, help="checkpoint (run dir, checkpoint dir or pretrained_model) or a teacher "
                   "kind: scripted | noisy[...]:KIND | checkpoint:PATH | openpi://HOST:PORT | openvla://HOST:PORT")
    e.add_argument("--tasks", required=True, help="MetaWorld: task names, mt10, mt50, easy...; LIBERO: libero_spatial, "
                   "libero_goal/3, ...")
    e.add_argument("--out", required=True, help="evaluation directory (rerun the same command to resume)")
    e.add_argument("--env", default="metaworld", choices=["metaworld", "libero"])
    e.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    e.add_argument("--seed", type=int, default=0, help="held-out seed stream (never the demonstrations' seeds)")
    e.add_argument("--max-steps", type=int, default=0, help="step limit (default: the simulator's, MetaWorld 500)")
    e.add_argument("--steps-after-success", type=int, default=10)
    e.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    e.add_argument("--videos", type=int, default=2, help="episodes recorded per task with the predicted phase drawn (default 2)")
    e.add_argument("--video-failures", action="store_true", help="also record every failed episode")
    e.add_argument("--n-action-steps", type=int, default=0, help="actions executed per predicted chunk (default: all)")
    e.add_argument("--image-size", type=int, default=0, help="camera size for teachers (default 128; LIBERO 256)")
    e.add_argument("--latency-steps", type=int, default=100, help="closed-loop steps of the batch-1 latency measurement")
    e.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE", help="remote teacher option (see annotate)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--backend", default="torch", help="for policies: torch | torch-bf16 | onnx | onnx-int8 (a bundle "
                   "from `vla-distill export`)")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("report", help="gather evaluations into one Markdown + HTML page (first = reference row)")
    r.add_argument("evals", nargs="+", help="evaluation directories, the teacher's first")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_cmd_report)

    x = sub.add_parser("export", help="a standalone bundle (torch + safetensors) or ONNX graphs, with a parity check")
    x.add_argument("--policy", required=True, help="checkpoint (run dir, checkpoint dir or pretrained_model)")
    x.add_argument("--out", required=True, help="bundle directory (replaced if it exists)")
    x.add_argument("--format", default="bundle", choices=["bundle", "onnx"],
                   help="bundle: torch backends; onnx: also model.onnx and model.int8.onnx (ONNX Runtime)")
    x.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="stored weight dtype (default fp32)")
    x.add_argument("--observations", default="", help="dataset whose frames are the parity observations "
                   "(default: the policy's training dataset)")
    x.add_argument("--n-observations", type=int, default=32)
    x.set_defaults(func=_cmd_export)

    rn = sub.add_parser("run", help="the real-time control loop on a simulated robot: timing, safety counters, recordings")
    rn.add_argument("--policy", default="", help="bundle or checkpoint")
    rn.add_argument("--backend", default="torch", help="torch | torch-bf16 | onnx | onnx-int8 (onnx: bundles exported "
                    "with --format onnx)")
    rn.add_argument("--tasks", default="", help="tasks, as for eval")
    rn.add_argument("--env", default="metaworld", choices=["metaworld", "libero"])
    rn.add_argument("--hz", type=float, default=None, help="control rate (default 12.5; a replay: the recorded rate)")
    rn.add_argument("--episodes", type=int, default=1, help="episodes per task (default 1)")
    rn.add_argument("--seed", type=int, default=0, help="held-out seed stream, as for eval")
    rn.add_argument("--max-steps", type=int, default=500)
    rn.add_argument("--chunk", default="queue", choices=["queue", "ensemble"],
                    help="queue: execute the chunk, then replan; ensemble: infer every tick, ACT temporal ensembling")
    rn.add_argument("--n-action-steps", type=int, default=0, help="queue: actions executed per chunk (default: all)")
    rn.add_argument("--ensemble-coeff", type=float, default=0.01)
    rn.add_argument("--max-latency-ms", type=float, default=0.0, help="drop actions later than this (default: one period)")
    rn.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    rn.add_argument("--record", default="", help="save each episode's observations and sent actions here")
    rn.add_argument("--replay", default="", help="send a recording's actions again (DIR/TASK/episode_000) and compare")
    rn.set_defaults(func=_cmd_run)

    sv = sub.add_parser("serve", help="serve a policy over openpi's websocket protocol (openpi-client compatible)")
    sv.add_argument("--policy", required=True, help="bundle or checkpoint")
    sv.add_argument("--backend", default="torch", help="torch | torch-bf16 | onnx | onnx-int8")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only; 0.0.0.0 to expose)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=1, help="batch up to this many concurrent requests (default 1)")
    sv.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits to fill (default 2 ms)")
    sv.add_argument("--max-message-mb", type=float, default=16.0)
    sv.set_defaults(func=_cmd_serve)

    i = sub.add_parser("inspect", help="validate a LeRobot dataset (v3.0 or v2.1) and print its summary")
    i.add_argument("dataset")
    i.add_argument("--quick", action="store_true", help="skip decoding every video frame")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VlaDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
