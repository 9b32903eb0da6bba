"""VITA-VLA on the demo: a tiny random VLM taught to act by the demo's student (the expert), through the CLI.

Usage (after `make demo`, whose dataset and student it uses; each stage is skipped when its output exists):
  python benchmarks/bench_vita.py [--family paligemma] [--align-steps 2000] [--finetune-steps 1500] [--episodes 10]
-> results/vita_<family>.json: trainable parameters per stage, the stage-1 alignment curve (train and validation
   distance), closed-loop success of the acting VLM beside its expert on the demo's tasks, batch-1 latency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DEMO_TASKS, RESULTS, cli, write_result


def curve(run: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], round(r[key], 4)) for r in rows if key in r and r.get("split", "train") == "train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="paligemma", choices=["paligemma", "idefics3", "qwen2_vl", "qwen2_5_vl"])
    p.add_argument("--dataset", default="outputs/demo/annotated")
    p.add_argument("--expert", default="outputs/demo/student")
    p.add_argument("--align-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--tasks", default=DEMO_TASKS)
    p.add_argument("--lora-rank", type=int, default=0, help="stage 2 with LoRA adapters of this rank (default: full)")
    p.add_argument("--work", default="outputs/bench_vita")
    args = p.parse_args()
    work = Path(args.work) / args.family
    align, ft = work / "align", work / ("finetune" + (f"_lora{args.lora_rank}" if args.lora_rank else ""))
    common = ["--dataset", args.dataset, "--batch-size", str(args.batch_size), "--log-every", "50"]
    if not (align / "checkpoints" / "last").exists():
        cli("vita-train", *common, "--expert", args.expert, "--vlm", f"tiny:{args.family}", "--stage", "align",
            "--steps", str(args.align_steps), "--save-every", str(args.align_steps // 4), "--lr", "1e-3", "--out",
            str(align))
    if not (ft / "checkpoints" / "last").exists():
        cli("vita-train", *common, "--init", str(align), "--stage", "finetune", "--steps", str(args.finetune_steps),
            "--save-every", str(args.finetune_steps // 3), "--lr", "3e-4", "--lora-rank", str(args.lora_rank), "--out",
            str(ft))
    evals = {}
    for name, policy in (("expert", args.expert), ("vita_align", str(align)), (f"vita_{ft.name}", str(ft))):
        out = work / f"eval_{name}"
        if not (out / "eval_info.json").exists():
            cli("eval", "--policy", policy, "--tasks", args.tasks, "--episodes", str(args.episodes), "--videos", "0",
                "--out", str(out))
        evals[name] = json.loads((out / "eval_info.json").read_text())
    cli("report", *(str(work / f"eval_{n}") for n in evals), "--out", str(work / "report"))
    val = [json.loads(line) for line in (align / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    trainable = {stage: _trainable(run) for stage, run in (("align", align), (ft.name, ft))}
    result = {
        "family": args.family, "tasks": args.tasks, "episodes": args.episodes,
        "trainable_parameters": trainable,
        "align_curve_train": curve(align, "align"), "align_curve_val": [(r["step"], round(r["loss"], 4)) for r in val],
        "finetune_curve": curve(ft, "loss"),
        "success": {n: e["overall"]["pc_success"] for n, e in evals.items()},
        "latency_ms_p50": {n: e["policy"]["latency_ms_p50"] for n, e in evals.items()},
        "parameters": {n: e["policy"]["parameters"] for n, e in evals.items()},
    }
    print(json.dumps({k: result[k] for k in ("trainable_parameters", "success", "latency_ms_p50")}, indent=1))
    write_result(RESULTS / f"vita_{args.family}{f'_lora{args.lora_rank}' if args.lora_rank else ''}.json", result)


def _trainable(run: Path) -> int:
    """Trainable parameters of a stage, rebuilt from its saved config (what set_stage unfreezes)."""
    from vla_distill.models.checkpoint import load_pretrained

    policy = load_pretrained(run)
    stage = json.loads((run / "train_config.json").read_text())["stage"]
    names = set(policy.set_stage(stage))
    return sum(q.numel() for n, q in policy.named_parameters() if n in names)


if __name__ == "__main__":
    main()
