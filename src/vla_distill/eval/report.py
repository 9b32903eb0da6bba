"""`vla-distill report`: evaluations gathered into one Markdown and one HTML page, with their plots and videos; and
the summary table `vla-distill eval` prints.

The first evaluation given is the reference row of the table (normally the teacher); "relative" is each row's
success divided by the reference's, as the VLA-AD paper reports its student against the teacher. Every rate carries
its 95% interval and n; every later evaluation is compared with the reference episode by episode on their common
seeds (stats.compare), and the table says whether the two are distinguishable.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from vla_distill.errors import ConfigError
from vla_distill.eval.evaluate import INFO, OBSERVABILITY
from vla_distill.eval.stats import compare, distinguishable

MAX_FLAGS = 30
MAX_VIDEOS = 6


# ---------------------------------------------------------------- tables
SUMMARY_HEADER = ["policy", "params", "p50 ms", "p99 ms", "control Hz", "peak RSS MB", "success % (all episodes)",
                  "95% CI", "n", "success % (mean of groups)", "relative to first", "paired vs first (95% CI)",
                  "distinguishable"]


def summary_rows(infos: list[dict]) -> list[list[str]]:
    """The paper's table, one row per evaluation: parameters, Hz, memory, success with its interval, the gap to the
    first (teacher) row, and the paired difference from it on common seeds with McNemar's verdict."""
    rows = []
    ref = infos[0]["overall"]["pc_success"] if infos else 0.0
    for i, info in enumerate(infos):
        p, o = info["policy"], info["overall"]
        rel = "reference" if i == 0 else f"{100 * o['pc_success'] / ref:.1f}%" if ref else "-"
        diff, verdict = _paired_cells(infos[0], info) if i else ("-", "-")
        rows.append([p["spec"], _fmt_params(p["parameters"]), _fmt(p.get("latency_ms_p50"), 2),
                     _fmt(p.get("latency_ms_p99"), 2),
                     _fmt(p.get("control_hz"), 0), _fmt(p.get("peak_rss_mb"), 0), f"{o['pc_success']:.1f}",
                     _fmt_ci(o.get("pc_success_ci95")), str(o["n_episodes"]), f"{o['pc_success_group_mean']:.1f}", rel,
                     diff, verdict])
    return rows


def _paired_cells(ref: dict, info: dict) -> tuple[str, str]:
    c = compare(ref, info)["overall"]
    if not c["n_episodes"]:
        return "no common seeds", "-"
    word = "yes" if distinguishable(c) else "no"
    return (f"{c['difference']:+.1f} ({_fmt_ci(c['ci95'])}), n={c['n_episodes']}",
            f"{word} (McNemar p={c['mcnemar_p']:.2g})")


def _fmt_ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"{ci[0]:.1f}–{ci[1]:.1f}"


def markdown_table(header: list[str], rows: list[list[str]], right: bool = False) -> str:
    """A Markdown table; right=True aligns every column but the first to the right (numbers)."""
    rule = "|---|" + ("---:|" if right else "---|") * (len(header) - 1)
    return "\n".join(["| " + " | ".join(header) + " |",
                      rule] + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows])


def summary_table(infos: list[dict]) -> str:
    return markdown_table(SUMMARY_HEADER, summary_rows(infos), right=True)


def _task_cell(t: dict | None) -> str:
    if t is None:
        return "-"
    k = sum(t["metrics"]["successes"])
    return f"{t['pc_success']:.0f}% ({k}/{t['n_episodes']}; {_fmt_ci(t.get('pc_success_ci95'))})"


def _rate_cell(o: dict) -> str:
    return f"{o['pc_success']:.1f} ({_fmt_ci(o.get('pc_success_ci95'))}, n={o['n_episodes']})"


def _diff_cell(c: dict | None) -> str:
    if not c or not c["n_episodes"]:
        return "-"
    return f"{c['difference']:+.0f} ({_fmt_ci(c['ci95'])}){' *' if distinguishable(c) else ''}"


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _fmt_params(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------- the report


def _videos(info: dict) -> list[tuple[bool, str]]:
    """(succeeded, path) of every recorded episode: failures sort first, they are what a reader wants to watch."""
    out = []
    for t in info["per_task"]:
        for v in t["metrics"]["video_paths"]:
            episode = int(Path(v).stem.rpartition("_")[2])
            out.append((bool(t["metrics"]["successes"][episode]), v))
    return out


def _load(path: Path) -> tuple[dict, dict]:
    p = Path(path)
    if not (p / INFO).is_file():
        raise ConfigError("not an evaluation directory (no eval_info.json); run `vla-distill eval` first", path=p)
    info = json.loads((p / INFO).read_text())
    obs = json.loads((p / OBSERVABILITY).read_text()) if (p / OBSERVABILITY).exists() else {"flags": [], "per_task": {}}
    return info, obs


def _label(info: dict, path: Path) -> str:
    """'<evaluation dir name>: <policy as given>', e.g. 'teacher: scripted', 'student: outputs/demo/student'."""
    return f"{path.name}: {info['policy']['spec']}"


def build(evals: list[Path], out: Path) -> list[tuple]:
    """Blocks of the page: ("h", level, text) | ("p", text) | ("table", header, rows[, numbers right-aligned]) |
    ("img", path, caption) |
    ("video", path, caption) | ("pre", text)."""
    loaded = [(Path(e), *_load(e)) for e in evals]
    blocks: list[tuple] = [("h", 1, "vla-distill evaluation report")]
    labels = [_label(info, p) for p, info, _ in loaded]
    for (_, info, _), label in zip(loaded, labels):
        info["policy"]["spec"] = label
    blocks.append(("p",
                   "Closed-loop success in simulation, batch-1 latency and memory of each policy. The first row is "
                        "the reference; 'relative' divides each row's success by it."))
    blocks.append(("table", SUMMARY_HEADER, summary_rows([info for _, info, _ in loaded]), True))
    # per-task success side by side
    tasks = list(dict.fromkeys(t["task"] for _, info, _ in loaded for t in info["per_task"]))
    by = [{t["task"]: t for t in info["per_task"]} for _, info, _ in loaded]
    comparisons = [compare(loaded[0][1], info) for _, info, _ in loaded[1:]]
    rows = [[t, next(b[t]["task_group"] for b in by if t in b)] + [_task_cell(b.get(t)) for b in by] +
            [_diff_cell(c["per_task"].get(t)) for c in comparisons] for t in tasks]
    head = (["task", "group"] + [f"[{i + 1}]" for i in range(len(loaded))]
            + [f"[{i + 2}] − [1]" for i in range(len(comparisons))])
    blocks += [("h", 2, "Success per task"), ("table", head, rows)]
    blocks.append(("p", "  ".join(f"[{i + 1}] {label}" for i, label in enumerate(labels)) +
                   ". Success with its 95% Wilson interval; differences are paired on common seeds, with Newcombe's "
                   "95% interval and an exact McNemar test (* where the interval leaves out 0)."))
    groups = list(dict.fromkeys(g for _, info, _ in loaded for g in info["per_group"]))
    grows = [[g] + [_rate_cell(info["per_group"][g]) if g in info["per_group"] else "-" for _, info, _ in loaded]
             for g in groups]
    grows.append(["mean of group means"] + [f"{info['overall']['pc_success_group_mean']:.1f}" for _, info, _ in loaded])
    grows.append(["task-weighted (lerobot overall)"] + [_rate_cell(info["overall"]) for _, info, _ in loaded])
    blocks += [("h", 3, "Per difficulty group"),
               ("table", ["group"] + [f"[{i + 1}]" for i in range(len(loaded))], grows)]
    assets = out / "assets"
    for i, ((p, info, obs), label) in enumerate(zip(loaded, labels)):
        blocks.append(("h", 2, f"[{i + 1}] {label}"))
        agree = info.get("observability", {}).get("phase_agreement", {})
        if any(v is not None for v in agree.values()):
            blocks.append(("p", "Predicted phase agreement with " + ", ".join(
                f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in agree.items() if v is not None) + "."))
        for name, rel in info.get("plots", {}).items():
            dst = assets / f"e{i + 1}" / Path(rel).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p / rel, dst)
            blocks.append(("img", dst.relative_to(out), name.replace("_", " ")))
        videos = [v for _, v in sorted(_videos(info))][:MAX_VIDEOS]
        for v in videos:
            dst = assets / f"e{i + 1}" / v.replace("/", "_")
            shutil.copyfile(p / v, dst)
            blocks.append(("video", dst.relative_to(out), v))
        flags = obs.get("flags", [])
        if flags:
            blocks.append(("h", 3, f"Flagged episodes ({len({(f['task'], f['episode']) for f in flags})})"))
            blocks.append(("table", ["task", "episode", "success", "flag", "detail"],
                           [[f["task"], str(f["episode"]), "yes" if f["success"] else "no", f["kind"], f["detail"]]
                            for f in flags[:MAX_FLAGS]]))
            if len(flags) > MAX_FLAGS:
                blocks.append(("p", f"... and {len(flags) - MAX_FLAGS} more in {p / OBSERVABILITY}."))
        spreads = {t: v["direction_spread"] for t,
                   v in obs.get("per_task", {}).items() if v.get("direction_spread") is not None}
        if spreads:
            blocks.append(("p",
                           "Direction-embedding spread across episodes of a task (mean 1 - cosine to the task "
                           "centroid at equal progress): " + ", ".join(f"{t} {s:.3f}" for t, s in spreads.items())
                           + "."))
    blocks.append(("h", 2, "How these numbers were obtained"))
    for (_, info, _), label in zip(loaded, labels):
        e, pol = info["eval"], info["policy"]
        blocks.append(("p", f"{label}: {e['env']}, {e['episodes_per_task']} episodes per task on held-out seeds "
                            f"(seed stream {e['seed']}), step limit {e['max_steps']}, success = {e['success']}, "
                            f"{e['workers']} worker processes; latency: {pol.get('calls', 0)} batch-1 model calls in "
                            f"closed loop on {pol.get('device', 'cpu')} with {pol.get('threads', '?')} threads after "
                            f"the episodes (1-minute load average then: {pol.get('load_avg_1m', '?')}); peak RSS of "
                            "that "
                            f"process (policy + simulator). vla-distill {e['code_version']}."))
        if e.get("command"):
            blocks.append(("pre", e["command"]))
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            out.append(markdown_table(b[1], b[2], right=len(b) > 3 and b[3]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "video":
            out.append(f"[video: {b[2]}]({b[1]})")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```")
    return "\n\n".join(out) + "\n"


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def to_html(blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "table":
            parts.append(_table_html(b[1], b[2]))
        elif kind == "img":
            parts.append(f'<figure><img src="{html.escape(str(b[1]))}" alt="{html.escape(b[2])}"><figcaption>'
                         f"{html.escape(b[2])}</figcaption></figure>")
        elif kind == "video":
            parts.append(f'<figure><video src="{html.escape(str(b[1]))}" controls muted loop></video><figcaption>'
                         f"{html.escape(b[2])}</figcaption></figure>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(b[1])}</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}"
             "th{background:#f3f3f3}img{max-width:100%}figure{display:inline-block;margin:0.5em}video{width:256px}"
             "pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vla-distill report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def write_report(evals: list[str | Path], out: str | Path) -> tuple[Path, str]:
    """Writes out/report.md and out/report.html (images and videos under out/assets); returns the HTML path and the
    teacher/student table (Markdown)."""
    if not evals:
        raise ConfigError("give at least one evaluation directory", field="evals")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build([Path(e) for e in evals], out)
    for name, text in (("report.md", to_markdown(blocks)), ("report.html", to_html(blocks))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    summary = next(b for b in blocks if b[0] == "table" and b[1] is SUMMARY_HEADER)
    return out / "report.html", markdown_table(SUMMARY_HEADER, summary[2], right=True)
