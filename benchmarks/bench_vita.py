"""VITA-VLA: a VLM taught to act by a student of ours (the expert), through the CLI.

Usage (each stage is skipped when its output exists, so a rerun resumes):
  python benchmarks/bench_vita.py [demo] [--family paligemma] [--align-steps 2000] [--finetune-steps 1500]
      after `make demo`: a tiny random VLM of a real architecture (or --family parts: the pretrained-parts VLM;
      parts:random: the same architecture untrained) around the demo's student, on the demo's tasks ->
      results/vita_<family>.json: trainable parameters per stage, the alignment curve, closed-loop success beside the
      expert (paired, on the same held-out episodes), the expert and stage 2 again with every prompt an unseen
      paraphrase (benchmarks/paraphrases/mt10.json), batch-1 latency; parts:random also paired against parts' stages
  python benchmarks/bench_vita.py mt10 [--align-steps 2000] [--finetune-steps 1500]
      after `make mt10`: the parts VLM (EfficientNet-Lite0, a projector, all-MiniLM-L6-v2; models/parts_vlm.py) around
      the MT10 recipe's student on its data; stage 2 once per --decoder-lr-scales, each run's checkpoint chosen by
      closed-loop success on validation seeds (stream 1), never on the test seeds; the same architecture untrained
      (parts:random) through the same stages; expert, stage 1, stage 2 and stage 2 random on the 500 test episodes
      (stream 0), paired, then again with every prompt replaced by an unseen paraphrase
      (benchmarks/paraphrases/mt10.json) -> results/vita.json["mt10"]
  python benchmarks/bench_vita.py libero_object [--expert RUN] [--episodes 50]   (or libero_spatial, libero_goal)
      the same around a LIBERO suite's kept student (results/libero.json's student_run, or --expert) on the data it
      was trained on: validation on new placements (eval stream 1), the test on the suite's standard initial states,
      paraphrases from benchmarks/paraphrases/libero.json; the VLM sees the agent view and the wrist (--vlm-cameras
      all), each camera's image tokens after the other's -> results/vita.json["<suite>"]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_distill import paired_with, rate, train_minutes
from bench_eval import eval_info, evaluated, has_outcomes

from common import DEMO_TASKS, RESULTS, cli, update_result, write_result

PARAPHRASES = Path(__file__).parent / "paraphrases"


def curve(run: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], round(r[key], 4)) for r in rows if key in r and r.get("split", "train") == "train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="demo", choices=["demo", "mt10", *LIBERO_SUITES])
    p.add_argument("--family", default="paligemma",
                   choices=["paligemma", "idefics3", "qwen2_vl", "qwen2_5_vl", "parts", "parts:random"],
                   help="demo: a tiny random VLM of this architecture, parts (models/parts_vlm.py, pretrained) or "
                        "parts:random (its architecture untrained: what the pretrained weights bring)")
    p.add_argument("--dataset", default="outputs/demo/annotated")
    p.add_argument("--expert", default="", help="the action expert's run (demo: outputs/demo/student; mt10: make "
                                                "mt10's DAgger student; LIBERO: the suite's kept student)")
    p.add_argument("--align-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--episodes", type=int, default=0, help="per task (default: demo 10, mt10 and LIBERO 50)")
    p.add_argument("--tasks", default="", help="default: the demo's three; mt10: mt10; LIBERO: the whole suite")
    p.add_argument("--lora-rank", type=int, default=0, help="stage 2 with LoRA adapters of this rank (default: full)")
    p.add_argument("--work", default="outputs/bench_vita")
    p.add_argument("--mt10", default="outputs/bench_distill/mt10", help="mt10: make mt10's work directory")
    p.add_argument("--decoder-lr-scales", default="1.0,0.1", help="mt10, LIBERO: the stage-2 variants, chosen between")
    p.add_argument("--val-episodes", type=int, default=5, help="mt10, LIBERO: per task, for choosing checkpoints")
    p.add_argument("--vlm-cameras", default="", choices=["", "first", "all"],
                   help="the cameras the parts VLM sees (vita-train --vlm-cameras; default: LIBERO all, its agent "
                        "view and wrist as the expert and the published LIBERO VLAs read them; mt10 and demo first; "
                        "demo all -> results/vita_parts_allcams.json, paired against the one-camera run)")
    args = p.parse_args()
    if args.what != "demo":
        args.episodes = args.episodes or 50
        # one key per benchmark: the others' stay
        result = benchmark(args, *setting(args))
        update_result("vita.json", lambda old: old | {args.what: result})
        return
    args.episodes = args.episodes or 10
    args.expert, args.tasks = args.expert or "outputs/demo/student", args.tasks or DEMO_TASKS
    result, tag = demo(args)
    write_result(RESULTS / f"vita_{tag}{f'_lora{args.lora_rank}' if args.lora_rank else ''}.json", result)


def demo(args) -> tuple[dict, str]:
    """Both stages around the demo's student, each evaluated beside it with the simulator's instructions and with
    unseen paraphrases -> (the result, the family's tag)."""
    cameras = args.vlm_cameras or "first"
    tag = args.family.replace(":", "_") + ("_allcams" if cameras == "all" else "")
    work = Path(args.work) / tag
    align, ft = work / "align", work / ("finetune" + (f"_lora{args.lora_rank}" if args.lora_rank else ""))
    common = ["--dataset", args.dataset, "--batch-size", str(args.batch_size), "--log-every", "50"]
    vlm = args.family if args.family.startswith("parts") else f"tiny:{args.family}"
    staged(align, common + ["--expert", args.expert, "--vlm", vlm, "--stage", "align", "--lr", "1e-3",
                            "--vlm-cameras", cameras], args.align_steps)
    staged(ft, common + ["--init", str(align), "--stage", "finetune", "--lr", "3e-4",
                         "--lora-rank", str(args.lora_rank)], args.finetune_steps)
    arms = {"expert": args.expert, "vita_align": str(align), f"vita_{ft.name}": str(ft)}
    evals = {name: evaluated(policy, args.tasks, work / f"eval_{name}", args.episodes) for name, policy in arms.items()}
    cli("report", *(str(work / f"eval_{n}") for n in evals), "--out", str(work / "report"))
    val = [json.loads(line) for line in (align / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    trainable = {stage: _trainable(run) for stage, run in (("align", align), (ft.name, ft))}
    result = {
        "family": args.family, "vlm_cameras": cameras, "tasks": args.tasks, "episodes": args.episodes,
        "trainable_parameters": trainable,
        "align_curve_train": curve(align, "align"), "align_curve_val": [(r["step"], round(r["loss"], 4)) for r in val],
        "finetune_curve": curve(ft, "loss"),
        "success": {n: e["overall"]["pc_success"] for n, e in evals.items()},
        "rates": {n: rate(e) for n, e in evals.items()},
        "paired": arms_paired(evals, ft.name),
        "gripper": json.loads((ft / "train_config.json").read_text()).get("gripper"),
        "command": "python " + " ".join(sys.argv),
        "latency_ms_p50": {n: e["policy"]["latency_ms_p50"] for n, e in evals.items()},
        "parameters": {n: e["policy"]["parameters"] for n, e in evals.items()},
    }
    wordings = PARAPHRASES / "mt10.json"  # the demo's tasks are MT10 tasks
    if set(args.tasks.split(",")) <= set(json.loads(wordings.read_text())):
        # the three arms: the expert, the VITA student, (its run with --family parts:random) the untrained one
        stage2 = f"vita_{ft.name}"
        para = {n: evaluated(arms[n], args.tasks, work / f"eval_{n}_paraphrase", args.episodes,
                             "--instructions", str(wordings)) for n in ("expert", stage2)}
        paired = {f"{n}_paraphrase_minus_original": paired_with(f"{n} as worded", evals[n], e) for n, e in para.items()}
        paired[f"{stage2}_vs_expert"] = paired_with("the expert", para["expert"], para[stage2])
        result["paraphrase"] = {"instructions": str(wordings), "rates": {n: rate(e) for n, e in para.items()},
                                "paired": paired}
    # parts:random: the pretrained VLM's stages minus this run's; parts with all cameras: this run's minus one camera's
    comparisons = {"parts_random": ("pretrained_minus_random", "the untrained VLM", False),
                   "parts_allcams": ("all_minus_first_camera", "the first camera", True)}
    if tag in comparisons:
        key, label, this_minus_other = comparisons[tag]
        other = Path(args.work) / "parts"
        result["paired"] |= against_run(other, evals, "", key, label, this_minus_other)
        if "paraphrase" in result:
            result["paraphrase"]["paired"] |= against_run(other, para, "_paraphrase", key, label, this_minus_other)
    print(json.dumps({k: result[k] for k in ("trainable_parameters", "success", "latency_ms_p50")}, indent=1))
    return result, tag


def arms_paired(evals: dict, finetune: str) -> dict:
    """Stage 2 against stage 1, and each stage against the expert, on the same episodes."""
    return {"stage2_vs_stage1": paired_with("stage 1", evals["vita_align"], evals[f"vita_{finetune}"]),
            **{f"{n}_vs_expert": paired_with("the expert", evals["expert"], e)
               for n, e in evals.items() if n != "expert"}}


def against_run(other: Path, evals: dict, suffix: str, key: str, label: str, this_minus_other: bool) -> dict:
    """Each VITA stage of this demo run against the same stage of another (`other`: the demo's run of another
    --family or --vlm-cameras, where it was evaluated with the same --episodes), on the same episodes ->
    {key_<stage>: this minus other}, or other minus this; `label` names the side subtracted."""
    out = {}
    for stage in (n for n in evals if n != "expert"):
        if has_outcomes(other / f"eval_{stage}{suffix}"):
            theirs = eval_info(other / f"eval_{stage}{suffix}")
            out[f"{key}_{stage}"] = (paired_with(label, theirs, evals[stage]) if this_minus_other
                                     else paired_with(label, evals[stage], theirs))
    return out


# ------------------------------------------------------------------------------------------------ mt10, LIBERO
LIBERO_SUITES = ("libero_object", "libero_spatial", "libero_goal")


def setting(args) -> tuple[Path, str, tuple[str, ...], Path]:
    """What differs between the benchmarks -> (the expert's run, the tasks, the environment's flags, the wordings)."""
    if args.what == "mt10":
        expert = Path(args.expert or Path(args.mt10) / "student-dagger")
        return expert, args.tasks or "mt10", (), PARAPHRASES / "mt10.json"
    kept = args.expert or json.loads((RESULTS / "libero.json").read_text())[args.what]["student_run"]
    return Path(kept), args.tasks or args.what, ("--env", "libero"), PARAPHRASES / "libero.json"


def benchmark(args, expert: Path, tasks: str, env: tuple[str, ...], wordings: Path) -> dict:
    """The parts VLM and its untrained twin around `expert`, on the data the expert was trained on: stage 1, stage 2
    per decoder learning-rate scale with its checkpoint chosen on validation episodes, then every arm on the test
    episodes, as worded and paraphrased."""
    dataset = json.loads((expert / "train_config.json").read_text())["dataset"]
    work = Path(args.work) / args.what
    common = ["--dataset", dataset, "--batch-size", str(args.batch_size), "--log-every", "50"]
    arms, chosen = {}, {}
    cameras = args.vlm_cameras or ("first" if args.what == "mt10" else "all")
    for vlm in ("parts", "parts:random"):
        tag = vlm.replace(":", "_") + ("-allcams" if cameras == "all" else "")
        align = staged(work / f"{tag}-align", common + ["--expert", str(expert), "--vlm", vlm, "--stage", "align",
                                                        "--lr", "1e-3", "--vlm-cameras", cameras], args.align_steps)
        candidates = {}
        for scale in args.decoder_lr_scales.split(","):
            run = staged(work / f"{tag}-finetune-dec{scale}", common + [
                "--init", str(align), "--stage", "finetune", "--lr", "3e-4", "--decoder-lr-scale", scale],
                args.finetune_steps)
            candidates |= {ckpt: val_success(ckpt, work / "val" / f"{tag}-dec{scale}-{ckpt.name}", args, tasks, env)
                           for ckpt in sorted((run / "checkpoints").glob("[0-9]*"))}
        best = max(candidates, key=lambda c: (candidates[c], c.parent.parent.name, c.name))
        chosen[tag] = {"checkpoint": str(best), "val_success": candidates[best],
                       "candidates": {str(c): v for c, v in candidates.items()}}
        arms["stage1" if vlm == "parts" else "stage1_random_vlm"] = align
        arms["stage2" if vlm == "parts" else "stage2_random_vlm"] = best
    # the arms as worded at the top level and again under "paraphrase" (the shape of vita.json)
    result = {"expert_run": str(expert), "dataset": dataset, "checkpoint_choice": chosen, "vlm_cameras": cameras,
              "episodes_per_task": args.episodes, "train_minutes": stage_minutes(arms),
              "command": "python " + " ".join(sys.argv)}
    for prompts in ("original", "paraphrase"):
        extra = () if prompts == "original" else ("--instructions", str(wordings))
        evals = {arm: evaluated(str(run), tasks, work / prompts / arm, args.episodes, *env, *extra)
                 for arm, run in {"expert": expert, **arms}.items()}
        block = {arm: rate(info) for arm, info in evals.items()}
        block["paired"] = {f"{arm}_vs_expert": paired_with("the expert", evals["expert"], info)
                           for arm, info in evals.items() if arm != "expert"}
        block["paired"]["stage2_vs_stage1"] = paired_with("stage 1", evals["stage1"], evals["stage2"])
        block["paired"]["stage2_vs_random_vlm"] = paired_with("the random VLM", evals["stage2_random_vlm"],
                                                              evals["stage2"])
        if prompts == "original":  # eval's batch-1 pass beside whatever else ran: bench_deploy.py times quietly
            result["hz"] = {arm: round(1000 / info["policy"]["latency_ms_p50"], 1) for arm, info in evals.items()}
            result |= block
        else:
            result["paraphrase"] = block
    return result


def stage_minutes(arms: dict[str, Path]) -> dict[str, float]:
    """Each stage's training steps' own time; a stage-2 arm is a checkpoint, timed by the run it belongs to (the
    steps up to it and past it alike)."""
    runs = {arm: ckpt if (ckpt / "metrics.jsonl").exists() else ckpt.parent.parent for arm, ckpt in arms.items()}
    return {arm: round(train_minutes(run), 1) for arm, run in runs.items()}


def staged(run: Path, flags: list[str], steps: int) -> Path:
    """A vita-train stage, trained or resumed to `steps` (a resumed run keeps its settings)."""
    from vla_distill.train.checkpoint import last_step

    if not (run / "checkpoints" / "last").exists():
        cli("vita-train", *flags, "--steps", str(steps), "--save-every", str(max(steps // 4, 1)), "--out", str(run))
    elif last_step(run) < steps:
        cli("vita-train", "--out", str(run), "--steps", str(steps), "--resume")
    return run


def val_success(ckpt: Path, out: Path, args, tasks: str, env: tuple[str, ...]) -> float:
    """Closed-loop success on the validation seeds (stream 1): what picks a checkpoint, never the test seeds."""
    return evaluated(str(ckpt), tasks, out, args.val_episodes, *env, "--seed", "1")["overall"]["pc_success"]


def _trainable(run: Path) -> int:
    """Trainable parameters of a stage, rebuilt from its saved config (what set_stage unfreezes)."""
    from vla_distill.models.checkpoint import load_pretrained

    policy = load_pretrained(run)
    stage = json.loads((run / "train_config.json").read_text())["stage"]
    names = set(policy.set_stage(stage))
    return sum(q.numel() for n, q in policy.named_parameters() if n in names)


if __name__ == "__main__":
    main()
