"""Semantic guidance where the gripper matters: does it make a student robust to a noisy teacher?

Usage (every stage runs through the CLI as a user would, and is skipped or resumed when its output exists):
  python benchmarks/bench_guidance.py robustness [--noise heavy,seed] [--arms unguided,guided,phase-gripper] [--seeds 3]
                                                 [--steps 6000] [--episodes 50] [--finished-only]
      GRIPPER_TASKS x 50 DART demonstrations (the recipe's data), relabelled by `noisy:scripted` at each NOISE
      level; one multi-task student of the recipe per (level, arm, training seed); training seed s is evaluated on
      held-out seed stream s, the same episodes for every arm -> results/guidance_robustness.json, which reports
      every arm and seed evaluated so far: --arms and --seeds say what to train, not what to report
  python benchmarks/bench_guidance.py labels [--noise heavy] [--arm phase-gripper] [--rates 0.1,0.3] [--label-seeds 1,2]
                                             [--variants corrupt30,corrupt30-mask] [--finished-only]
      what bad labels cost: the same students trained on the robustness suite's annotation at one level (clean: the
      robustness runs themselves), on copies with `rate` of the episodes corrupted (corrupted(): the seed's phase
      mislabeling and directional hallucination), and on those copies after `vla-distill audit --mask` and
      `--drop`; same seeds and held-out episodes, each variant pooled over its seeds and each comparison paired on
      the seeds both sides have -> results/guidance_labels.json
  python benchmarks/bench_guidance.py summary
      results/guidance.json: the headline numbers of both suites with MT50's phase agreement and audit
      (results/annotate_mt50.json, bench_annotate.py)
Arms (ARMS): unguided = action loss only; guided = action + 0.1 phase CE + 0.05 direction InfoNCE (the paper);
guided-l1 / unguided-l1 = the same with an L1 action loss (each state's median command, not its mean);
phase-gripper = guided, its gripper target the median of the teacher's commands over each phase segment
(train --gripper-from-phases).
Besides success, each episode's physical timeline (the kinematic annotator run on the rollout, reading contact)
gives the seed's failure signatures for every arm alike, with or without a phase head: premature release (the
timeline leaves transport for approach or grasp before success: the object got away) and stuck phases (one phase
or a still hand for 2 s); the grip (the mean gripper command while the timeline says transport) and the gripper's
jitter (mean |Δ| between consecutive commands). Guided students' own phase heads add the evaluator's predicted flags.
Work directories live under --work (default outputs/bench_guidance); every evaluated run's episodes are also kept in
results/guidance_episodes.json, so a suite resumes on a fresh checkout: runs found there are neither trained nor
evaluated again.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import bench_eval
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_annotate import PHASE_ERRORS, inject_cue_error, inject_phase_error
from bench_distill import CAMERAS, DART, RECIPE, trained
from bench_eval import evaluated

from common import RESULTS, cli, write_result
from vla_distill.annotate.episode import dataset_layout, episode_kinematics
from vla_distill.data.annotations import directions_table, read_annotation, read_directions
from vla_distill.data.columns import add_columns
from vla_distill.data.dataset import RobotDataset
from vla_distill.eval.observe import TRANSPORT, phase_flags
from vla_distill.eval.stats import paired, paired_counts, wilson
from vla_distill.models.text import TextEncoder
from vla_distill.sim.kinematics import runs
from vla_distill.types import AUDIT_PATH, AUDIT_REPORT_PATH, DIRECTION_INDEX, DIRECTIONS_PATH, PHASE_INDEX, WINDOWS_PATH

# MetaWorld tasks that need a grasp (phase and gripper matter) and that the recipe's student solves from a clean
# teacher (DART + aux student, 50 held-out episodes: pick-place 92%, basketball 88%, stick-pull 86%, stick-push
# 100%, sweep 100%; results/mt10.json and results/mt50_subset.json)
GRIPPER_TASKS = "pick-place-v3,basketball-v3,stick-pull-v3,stick-push-v3,sweep-v3"
NOISE = {  # level -> teacher spec; "seed" is the noisy teacher's defaults (the seed's imperfections, mild)
    "clean": "scripted",  # the reference: what the same students reach from a clean teacher
    "seed": "noisy:scripted",
    "heavy": "noisy[std=0.3,toggle=0.1,burst=10,stale=0.2]:scripted",
}
UNGUIDED = ("--no-phase-loss", "--no-direction-loss")
L1 = ("--action-loss", "l1")
ARMS = {"unguided": UNGUIDED, "guided": (), "guided-l1": L1, "unguided-l1": UNGUIDED + L1,
        "phase-gripper": ("--gripper-from-phases",)}
PAIRS = (("guided", "unguided"), ("guided-l1", "guided"), ("guided-l1", "unguided"), ("guided-l1", "unguided-l1"),
         ("unguided-l1", "unguided"), ("phase-gripper", "guided"))


CORRUPTION = "meta/corruption.json"


def corrupted(ann: Path, out: Path, rate: float, seed: int = 0) -> Path:
    """A copy of the annotated dataset `ann` in which `rate` of the episodes carry the seed's annotation failure
    modes: one phase mislabeling each (a boundary 0.3 s later, 0.3 s earlier or two segments swapped, in turn) and
    half of their cue windows hallucinated (a claimed direction flipped or a motion invented). The teacher's actions
    are untouched; meta/corruption.json lists what was done, episode by episode."""
    if (out / CORRUPTION).exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ann, tmp, copy_function=os.link)  # videos shared; every file changed below is replaced, not edited
    for stale in (AUDIT_PATH, AUDIT_REPORT_PATH):
        (tmp / stale).unlink(missing_ok=True)
    ds = RobotDataset(tmp)
    phases, cues = np.array(ds.column(PHASE_INDEX)), np.array(ds.column(DIRECTION_INDEX))
    texts, emb = read_directions(tmp)
    windows = pq.read_table(tmp / WINDOWS_PATH).to_pydict()
    rng = np.random.default_rng(seed)
    chosen = sorted(int(e) for e in rng.choice(ds.num_episodes, round(rate * ds.num_episodes), replace=False))
    lookup, done, layout = {t: i for i, t in enumerate(texts)}, [], dataset_layout(ds)
    for k, e in enumerate(chosen):
        rows, index = ds.episode_rows(e), ds.episodes[e].index
        kin, kind = episode_kinematics(ds, rows, layout), PHASE_ERRORS[k % len(PHASE_ERRORS)]
        phases[rows] = inject_phase_error(phases[rows].reshape(-1), rng, kind).reshape(phases[rows].shape)
        flipped = 0
        for w in (i for i, ep in enumerate(windows["episode_index"]) if ep == index):
            s, t, cid = windows["start"][w], windows["end"][w], windows[DIRECTION_INDEX][w]
            if cid < 0 or rng.random() >= 0.5:
                continue
            new = lookup.setdefault(inject_cue_error(texts[cid], kin, s, t, rng), len(lookup))
            span = rows[s:t]
            cues[span] = np.where(cues[span] == cid, new, cues[span])
            windows[DIRECTION_INDEX][w], flipped = new, flipped + 1
        done.append({"episode_index": index, "phase_error": kind, "cue_windows_corrupted": flipped})
    added = list(lookup)[len(texts):]
    if added:
        encoder = read_annotation(tmp).get("text_encoder", {}).get("name", "")  # the annotation's own encoder
        emb = np.concatenate([emb, TextEncoder(encoder if Path(encoder).is_dir() else "").encode(added)])
    counts = np.bincount(np.asarray(windows[DIRECTION_INDEX])[np.asarray(windows[DIRECTION_INDEX]) >= 0],
                         minlength=len(lookup)).tolist()
    _replace_table(directions_table(list(lookup), emb, counts, "corrupted"), tmp / DIRECTIONS_PATH)
    _replace_table(pa.table({k: pa.array(v, pa.int64()) for k, v in windows.items()}), tmp / WINDOWS_PATH)
    add_columns(tmp, {PHASE_INDEX: phases, DIRECTION_INDEX: cues},
                {k: ds.features[k] for k in (PHASE_INDEX, DIRECTION_INDEX)},
                overwrite=True)
    (tmp / CORRUPTION).write_text(json.dumps({"source": str(ann), "rate": rate, "seed": seed, "episodes": done},
                                             indent=1))
    os.replace(tmp, out)
    return out


def _replace_table(table: pa.Table, path: Path) -> None:
    """Written beside and renamed over: `path` is a hard link into the source dataset until replaced."""
    pq.write_table(table, path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


def dropped(reference: np.ndarray, success: np.ndarray) -> bool:
    """The seed's premature release, seen in the rollout itself: its reference timeline leaves transport for approach
    or grasp (the object got away) before the task first succeeded."""
    horizon = int(np.argmax(success)) if success.any() else len(reference)
    seq = [v for v, _, _ in runs(reference[:horizon]) if v >= 0]
    return any(a == TRANSPORT and b < TRANSPORT for a, b in zip(seq, seq[1:]))


def episodes(out: Path) -> list[dict]:
    """Every evaluated episode of an eval directory, in (task, episode) order, with its physical signatures."""
    rows = []
    for rec_path in sorted((out / "episodes").glob("*/*.json")):
        rec = json.loads(rec_path.read_text())
        arr = np.load(rec_path.with_suffix(".npz"))
        ref = arr["reference_annotator"]
        kinds = {f["kind"] for f in phase_flags(ref, ref, arr["success"], arr["hand"])}
        grip = arr["actions"][ref == TRANSPORT, -1]
        rows.append({"task": rec["task"], "episode": rec["episode"], "success": rec["success"],
                     "premature_release": dropped(ref, arr["success"]), "stuck_phase": "stuck_phase" in kinds,
                     "transport_grip": float(grip.mean()) if len(grip) else None,
                     "gripper_jitter": float(np.abs(np.diff(arr["actions"][:, -1])).mean()) if len(ref) > 1 else 0.0,
                     "predicted_flags": sorted({f["kind"] for f in rec["flags"]})})
    return rows


def arm_summary(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"n_episodes": n}
    for key in ("success", "premature_release", "stuck_phase"):
        k = sum(r[key] for r in rows)
        out[key] = {"pc": 100 * k / n, "ci95": wilson(k, n)}
    grips = [r["transport_grip"] for r in rows if r["transport_grip"] is not None]
    out["transport_grip_mean"] = float(np.mean(grips)) if grips else None
    out["gripper_jitter_mean"] = float(np.mean([r["gripper_jitter"] for r in rows]))
    k = sum("premature_release" in r["predicted_flags"] for r in rows)  # what a guided student's phase head says
    out["predicted_premature_release"] = {"pc": 100 * k / n, "ci95": wilson(k, n)}
    out["per_task"] = {t: 100 * np.mean([r["success"] for r in rows if r["task"] == t])
                       for t in dict.fromkeys(r["task"] for r in rows)}
    return out


# Every evaluated run's episodes, kept with the results: a fresh checkout has no eval directories, and a suite of
# 15+ half-hour runs spans sessions. "counts" holds runs evaluated before episodes were kept (pooled 2x2 tables).
ARCHIVE = RESULTS / "guidance_episodes.json"
FIELDS = ("task", "episode", "success", "premature_release", "stuck_phase", "transport_grip", "gripper_jitter",
          "predicted_flags")


def _store() -> dict:
    return json.loads(ARCHIVE.read_text()) if ARCHIVE.exists() else {"episodes": {}, "counts": {}}


def archived(tag: str, out: Path) -> list[dict] | None:
    """The episodes of run `tag` ("level/arm/sSEED"): read from its eval directory (and archived) where it exists,
    else from the archive; None where neither has it."""
    if (out / "eval_info.json").exists():
        rows = episodes(out)
        cols = {k: [r[k] for r in rows] for k in FIELDS}
        with open(ARCHIVE.with_suffix(".lock"), "w") as lock:  # suites on two cores finish runs into one file
            fcntl.flock(lock, fcntl.LOCK_EX)
            store = _store()
            if store["episodes"].get(tag) != cols:  # a report over finished runs rewrites nothing
                store["episodes"][tag] = cols
                write_result(ARCHIVE, store)
        return rows
    cols = _store()["episodes"].get(tag)
    return None if cols is None else [dict(zip(FIELDS, v)) for v in zip(*(cols[k] for k in FIELDS))]


def run_key(level: str, arm: str, seed: int) -> str:
    return f"{level}/{arm}/s{seed}"


def archived_seeds(level: str) -> set[int]:
    """The training seeds with archived runs at `level` (reruns, "sN-rerun-...", are not seeds of the suite)."""
    tags = (k.split("/")[-1] for k in _store()["episodes"] if k.startswith(f"{level}/"))
    return {int(t[1:]) for t in tags if t[1:].isdigit()}


def legacy(level: str) -> dict:
    """The pooled counts of runs evaluated before episodes were archived: {"arms": {arm: arm_summary + seeds},
    "paired": {"a - b": 2x2 table + seeds}}."""
    return _store()["counts"].get(level, {"arms": {}, "paired": {}})


def pooled(parts: list[dict]) -> dict:
    """arm_summary()s of disjoint seeds -> the summary of all their episodes (rates from counts; means weighted by
    episodes; per task weighted alike, each seed holding the same episodes per task)."""
    n = sum(p["n_episodes"] for p in parts)
    out = {"n_episodes": n, "per_seed": [x for p in parts for x in p["per_seed"]],
           "seeds": [x for p in parts for x in p["seeds"]]}
    for key in ("success", "premature_release", "stuck_phase", "predicted_premature_release"):
        k = round(sum(p[key]["pc"] * p["n_episodes"] / 100 for p in parts))
        out[key] = {"pc": 100 * k / n, "ci95": wilson(k, n)}
    for key in ("transport_grip_mean", "gripper_jitter_mean"):
        have = [p for p in parts if p[key] is not None]
        out[key] = sum(p[key] * p["n_episodes"] for p in have) / sum(p["n_episodes"] for p in have) if have else None
    out["per_task"] = {t: sum(p["per_task"][t] * p["n_episodes"] for p in parts) / n for t in parts[0]["per_task"]}
    return out


def wins(by_seed: dict[int, list[dict]], seeds: list[int]) -> list[bool]:
    """Episode successes of `seeds`, in seed then episode order: what paired() lines up between two arms."""
    return [x["success"] for s in seeds for x in by_seed[s]]


def pick(d: dict, *keys: str) -> dict:
    return {k: d[k] for k in keys}


def table_counts(d: dict) -> tuple[int, int, int, int]:
    return d["both"], d["only_a"], d["only_b"], d["neither"]


def robustness(args) -> dict:
    work = Path(args.work)
    raw = bench_eval.dataset(work, args.tasks, args.demos, 128, cameras=CAMERAS, name="dataset-128-dart",
                             collect_flags=DART)
    levels = {}
    for level in args.noise.split(","):
        ann = bench_eval.annotated(work, raw, NOISE[level], f"annotated-128-{level}")
        old, wanted = legacy(level), args.arms.split(",")
        # the report covers every arm and seed evaluated so far (the file is the suite's, not this command's);
        # only the asked arms and seeds are trained
        rows: dict[str, dict[int, list[dict]]] = {arm: {} for arm in ARMS}
        n_seeds = max([args.seeds, *(s + 1 for s in archived_seeds(level))])
        for seed in range(n_seeds):
            for arm in rows:
                if seed in old["arms"].get(arm, {}).get("seeds", []):
                    continue  # measured before episodes were archived: its counts are pooled below
                run, out = work / f"{level}-{arm}-s{seed}", work / f"eval-{level}-{arm}-s{seed}"
                got = archived(run_key(level, arm, seed), out)
                if got is None and arm in wanted and seed < args.seeds and not args.finished_only:
                    trained(ann, run, args.steps, *RECIPE, "--seed", str(seed), *ARMS[arm])
                    evaluated(str(run), args.tasks, out, args.episodes, "--seed", str(seed))
                    got = archived(run_key(level, arm, seed), out)
                if got is not None:
                    rows[arm][seed] = [{**r, "seed": seed} for r in got]
        arms = {}
        for arm, by_seed in rows.items():
            parts = [old["arms"][arm]] if arm in old["arms"] else []
            parts += [{**arm_summary(r), "per_seed": [100 * np.mean([x["success"] for x in r])], "seeds": [s]}
                      for s, r in sorted(by_seed.items())]
            if parts:
                arms[arm] = pooled(parts)
        levels[level] = {"teacher": NOISE[level], "seeds": n_seeds, "arms": arms, "paired": {}}
        for a, b in (p for p in PAIRS if p[0] in arms and p[1] in arms):
            common = sorted(set(rows[a]) & set(rows[b]))  # same seeds, same held-out episodes
            new = paired(wins(rows[b], common), wins(rows[a], common))
            cells, seeds = table_counts(new), common
            before = old["paired"].get(f"{a} - {b}")
            if before:  # its seeds were never rerun (skipped above), so the two tables hold different episodes
                cells, seeds = tuple(x + y for x,
                                     y in zip(cells, table_counts(before))), sorted(before["seeds"] + common)
            levels[level]["paired"][f"{a} - {b}"] = {
                **pick(paired_counts(*cells), "difference", "ci95", "mcnemar_p", "both", "only_a", "only_b", "neither"),
                "seeds": seeds,
                "per_seed": {s: pick(paired(wins(rows[b], [s]), wins(rows[a], [s])), "difference", "ci95", "mcnemar_p")
                             for s in common}}
        table(level, levels[level])
    return {"suite": "robustness", "tasks": args.tasks, "demos_per_task": args.demos, "steps": args.steps,
            "seeds": max(v["seeds"] for v in levels.values()), "episodes_per_task": args.episodes,
            "recipe": " ".join(RECIPE),
            "collect_flags": " ".join(DART), "levels": levels}


def labels(args) -> dict:
    """Part 3: what bad labels cost and what the audit wins back, on the robustness suite's dataset at one noise level
    with one arm (the clean-label students are the robustness suite's own)."""
    work = Path(args.work)
    ann = work / f"annotated-128-{args.noise}"
    if not (ann / "meta" / "annotation.json").exists():
        raise SystemExit(f"run the robustness suite at --noise {args.noise} first ({ann} is missing)")
    variants = {"clean": ann}
    for rate in (float(x) for x in args.rates.split(",")):
        pct = round(100 * rate)
        bad = corrupted(ann, work / f"{ann.name}-corrupt{pct}", rate)
        variants[f"corrupt{pct}"] = bad
        for how in ("mask", "drop"):
            variants[f"corrupt{pct}-{how}"] = audited(bad, work / f"{bad.name}-{how}", how)
    wanted = set(args.variants.split(",")) if args.variants else set(variants)
    rows: dict[str, dict[int, list[dict]]] = {v: {} for v in variants}
    for seed in (int(x) for x in args.label_seeds.split(",")):
        for name, ds in variants.items():
            tag = f"{args.noise}-{args.arm}-s{seed}" if name == "clean" else f"{args.noise}-{args.arm}-{name}-s{seed}"
            run, out = work / tag, work / f"eval-{tag}"
            key = run_key(args.noise, args.arm if name == "clean" else f"{args.arm}-{name}", seed)
            got = archived(key, out)
            if got is None and name in wanted and not args.finished_only:
                trained(ds, run, args.steps, *RECIPE, "--seed", str(seed), *ARMS[args.arm])
                evaluated(str(run), args.tasks, out, args.episodes, "--seed", str(seed))
                got = archived(key, out)
            if got is not None:
                rows[name][seed] = [{**r, "seed": seed} for r in got]
    missing = [name for name, r in rows.items() if not r]  # another process trains them (one variant per core)
    if "clean" in missing:
        print("the clean-label students are not evaluated yet; no report")
        return {}
    rows = {name: r for name, r in rows.items() if r}
    result = {name: {**arm_summary([x for s in sorted(r) for x in r[s]]), "seeds": sorted(r),
                     "audit": audit_catch(variants[name]) if name != "clean" else None}
              for name, r in rows.items()}
    for name in rows:
        # against the clean labels (what a bad annotator costs); an audited copy also against its corrupted source
        # (what the audit wins back); each pair on the seeds both have, so pooling never mixes seeds
        for ref, key in (("clean", "vs_clean"), (name.split("-")[0], "vs_corrupted")):
            if name not in ("clean", ref) and ref in rows:
                common = sorted(set(rows[ref]) & set(rows[name]))
                d = paired(wins(rows[ref], common), wins(rows[name], common))
                result[name][key] = {**pick(d, "difference", "ci95", "mcnemar_p", "only_a", "only_b"), "seeds": common}
    print(f"\n{args.arm} students, teacher {NOISE[args.noise]}")
    print("| labels | seeds | success % (95% CI) | vs clean (paired, 95% CI) | vs corrupted | premature release % | "
          "stuck % | audit: caught / false alarms | n |\n|---|---|---:|---:|---:|---:|---:|---|---:|")
    for name, r in result.items():
        vs, won = r.get("vs_clean"), r.get("vs_corrupted")
        a = r["audit"]
        print(f"| {name} | {', '.join(map(str, r['seeds']))} | {r['success']['pc']:.1f} "
              f"({_ci(r['success']['ci95'])}) | "
              + (f"{vs['difference']:+.1f} ({vs['ci95'][0]:.1f} to {vs['ci95'][1]:.1f})" if vs else "-") + " | "
              + (f"{won['difference']:+.1f} ({won['ci95'][0]:.1f} to {won['ci95'][1]:.1f})" if won else "-")
              + f" | {r['premature_release']['pc']:.1f} | {r['stuck_phase']['pc']:.1f} | "
              + (f"{a['caught']}/{a['corrupted']} / {a['false_alarms']}/{a['clean']}" if a else "-")
              + f" | {r['n_episodes']} |")
    if missing:
        print(f"not evaluated yet: {', '.join(missing)}")
    return {"suite": "labels", "tasks": args.tasks, "teacher": NOISE[args.noise], "arm": args.arm, "steps": args.steps,
            "seeds": args.label_seeds, "episodes_per_task": args.episodes, "variants": result, "not_evaluated": missing}


def audited(src: Path, out: Path, how: str) -> Path:
    """A copy of `src` after `vla-distill audit --mask` or `--drop`."""
    if (out / AUDIT_PATH).exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=os.link)  # the audit replaces the files it changes
    cli("audit", "--dataset", str(tmp), f"--{how}")
    os.replace(tmp, out)
    return out


def audit_catch(ds: Path) -> dict | None:
    """Episodes the dataset's audit flagged, against the episodes corrupted() corrupted."""
    if not (ds / AUDIT_PATH).exists() or not (ds / CORRUPTION).exists():
        return None
    report = json.loads((ds / AUDIT_PATH).read_text())
    bad = {e["episode_index"] for e in json.loads((ds / CORRUPTION).read_text())["episodes"]}
    flagged = {e["episode_index"] for e in report["episodes"] if e["phase_flags"] or e["cue_flags"]}
    n = len(report["episodes"])
    return {"corrupted": len(bad), "caught": len(flagged & bad), "clean": n - len(bad),
            "false_alarms": len(flagged - bad), "dropped": len(report.get("dropped_episodes", []))}


def _ci(ci) -> str:
    return f"{ci[0]:.1f}–{ci[1]:.1f}"


def table(level: str, r: dict) -> None:
    print(f"\n{level}: {r['teacher']}")
    print("| arm | success % (95% CI) | per seed | premature release % | stuck % | grip in transport | gripper "
          "jitter | n |\n|---|---:|---|---:|---:|---:|---:|---:|")
    for arm, a in r["arms"].items():
        print(f"| {arm} | {a['success']['pc']:.1f} ({_ci(a['success']['ci95'])}) | "
              f"{', '.join(f'{x:.0f}' for x in a['per_seed'])} | {a['premature_release']['pc']:.1f} | "
              f"{a['stuck_phase']['pc']:.1f} | {a['transport_grip_mean'] or float('nan'):.2f} | "
              f"{a['gripper_jitter_mean']:.2f} | {a['n_episodes']} |")
    for name, d in r["paired"].items():
        each = "; ".join(f"seed {s} {v['difference']:+.1f} ({v['ci95'][0]:.1f} to {v['ci95'][1]:.1f})"
                         for s, v in d.get("per_seed", {}).items())
        print(f"{name}, paired: {d['difference']:+.1f} points ({d['ci95'][0]:.1f} to {d['ci95'][1]:.1f}), "
              f"McNemar p {d['mcnemar_p']:.2g}" + (f" [{each}]" if each else ""))


def headline(level: dict) -> dict:
    """guided vs unguided at one noise level: each arm's success and n, their paired difference and its seeds."""
    arms, d = level["arms"], level["paired"].get("guided - unguided", {})
    return {"noise": level["teacher"], **{a: {"success": arms[a]["success"], "seeds": arms[a]["seeds"],
                                             "n_episodes": arms[a]["n_episodes"]} for a in ("guided",
                                                                                            "unguided") if a in arms},
            **{k: d.get(k) for k in ("difference", "ci95", "mcnemar_p", "seeds")}}


def summary(args) -> dict:
    """results/guidance.json: the headline numbers of the three parts, each with the command that measured it."""
    rob = json.loads((RESULTS / "guidance_robustness.json").read_text())
    ann = json.loads((RESULTS / "annotate_mt50.json").read_text())
    level = "heavy" if "heavy" in rob["levels"] else next(iter(rob["levels"]))
    r = rob["levels"][level]
    arms = {a: v["success"]["pc"] for a, v in r["arms"].items()}
    per_level = {name: headline(lv) for name, lv in rob["levels"].items()}
    h = per_level[level]
    out = {"robustness": {"guided": arms.get("guided"), "unguided": arms.get("unguided"),
                          "difference": h["difference"], "ci95": h["ci95"], "tasks": rob["tasks"].split(","),
                          "noise": h["noise"], "arms": arms, "paired": r["paired"],
                          "n_episodes": r["arms"][next(iter(r["arms"]))]["n_episodes"], "seeds": rob["seeds"],
                          "per_level": per_level,
                          "levels": rob["levels"]},
           "mt50_phases": {"mean": ann["mean_agreement_4"],
                           "min": min(t["agreement_4"] for t in ann["per_task"].values()),
                           "per_task": {k: t["agreement_4"] for k, t in ann["per_task"].items()}},
           "audit_mt50": {k: ann["audit"]["phase"][k] for k in ("recall", "false_alarm", "recall_ci95",
                                                                "false_alarm_ci95")},
           "command": {"robustness": rob["command"], "mt50": "cd benchmarks && ../.venv/bin/python bench_annotate.py "
                       "--dataset ../outputs/diag/mt50-4c --out results/annotate_mt50.json"}}
    labels_path = RESULTS / "guidance_labels.json"
    if labels_path.exists():
        lab = json.loads(labels_path.read_text())
        v = lab["variants"]
        worst = max((k for k in v if k.startswith("corrupt") and k.count("-") == 0), key=lambda k: int(k[7:]))
        audits = [k for k in v if k.startswith(worst + "-") and "vs_corrupted" in v[k]]
        best = max(audits, key=lambda k: v[k]["vs_corrupted"]["difference"])
        won = v[best]["vs_corrupted"]
        out["audit_value"] = {"clean": v["clean"]["success"]["pc"], "corrupted": v[worst]["success"]["pc"],
                              "audited": v[best]["success"]["pc"], "rate": worst, "audit": best,
                              "recovered_points": won["difference"], "recovered_ci95": won["ci95"],
                              "recovered_seeds": won["seeds"],
                              "cost_points": v[worst]["vs_clean"]["difference"],
                              "cost_ci95": v[worst]["vs_clean"]["ci95"],
                              "cost_seeds": v[worst]["vs_clean"]["seeds"], "seeds": lab["seeds"], "variants": v,
                              "note": "paired differences over the held-out episodes of the training seeds both "
                                      "variants have; the intervals do not cover training variance, which a change "
                                      "of labels perturbs as a new seed would (BENCHMARKS.md, part 3)"}
        out["command"]["labels"] = lab["command"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=["robustness", "labels", "summary"])
    p.add_argument("--work", default="outputs/bench_guidance")
    p.add_argument("--tasks", default=GRIPPER_TASKS)
    p.add_argument("--noise", default="heavy,seed", help=f"comma-separated levels of {sorted(NOISE)} (labels: one)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--arm", default="phase-gripper", help="labels: the arm whose students the labels train")
    p.add_argument("--rates", default="0.1,0.3", help="labels: shares of corrupted episodes")
    p.add_argument("--variants", default="",
                   help="labels: train and evaluate only these (e.g. corrupt30-mask, to run variants on two cores "
                        "side by side); the report shows the variants evaluated so far and lists the others")
    p.add_argument("--label-seeds", default="1",
                   help="labels: comma-separated training seeds (seed 0's clean runs were evaluated before episodes "
                        "were archived)")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--finished-only", action="store_true",
                   help="robustness, labels: report the runs already evaluated; train and evaluate nothing")
    p.add_argument("--episodes", type=int, default=50)
    args = p.parse_args()
    result = {"robustness": robustness, "labels": labels, "summary": summary}[args.suite](args)
    if not result:
        return
    if args.suite != "summary":
        result["command"] = "python benchmarks/bench_guidance.py " + " ".join(sys.argv[1:])
    write_result(RESULTS / (f"guidance_{args.suite}.json" if args.suite != "summary" else "guidance.json"), result)


if __name__ == "__main__":
    main()
