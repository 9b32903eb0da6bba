"""`vla-distill <stage>`: one subcommand per pipeline stage.

Errors in user input print one line naming the file or field and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from vla_distill.errors import VlaDistillError


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
