"""benchmarks/common.py's result files: two benchmarks on two cores (LIBERO's suites) update one file at once."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
from pathlib import Path

COMMON = Path(__file__).parent.parent / "benchmarks" / "common.py"


def _common(results: Path):
    spec = importlib.util.spec_from_file_location("bench_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RESULTS = results
    return module


def _writer(results: str, key: str, n: int) -> None:
    common = _common(Path(results))
    for i in range(n):
        common.update_key("shared.json", key, {str(i): i})


def test_concurrent_updates_of_one_result_file_keep_every_key(tmp_path):
    """Each process's read-merge-write ran under no lock and wrote in place: one could read the file half-written, or
    write back a copy read before the other's update and drop it."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per writer, as two benchmark scripts are
    keys = ("libero_object", "libero_spatial")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), key, 40)) for key in keys]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    result = json.loads((tmp_path / "shared.json").read_text())
    for key in keys:
        assert result[key] == {str(i): i for i in range(40)}, key
    assert "cpu" in result  # written by write_result, with the machine it ran on
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"


def test_update_key_keeps_the_key_s_other_entries_and_the_file_s_other_keys(tmp_path):
    common = _common(tmp_path)
    common.write_result(tmp_path / "r.json", {"a": {"x": 1, "y": 2}, "b": {"z": 3}})
    common.update_key("r.json", "a", {"y": 5, "w": 6})
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["a"] == {"x": 1, "y": 5, "w": 6} and result["b"] == {"z": 3}


def _bench_eval(results: Path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(COMMON.parent))
    sys.modules.pop("bench_eval", None)
    import bench_eval

    monkeypatch.setattr(bench_eval, "KEPT", results / "episodes")
    return bench_eval


def test_an_evaluation_s_kept_outcomes_pair_as_its_eval_info_did_once_its_work_directory_is_gone(tmp_path,
                                                                                                  monkeypatch):
    """A later session may start on a fresh machine without outputs/: the pairing against an earlier evaluation
    must still find every episode's seed and success."""
    import shutil

    from vla_distill.eval.stats import compare

    bench_eval = _bench_eval(tmp_path, monkeypatch)
    seeds = list(range(100, 120))

    def info(successes):
        return {"per_task": [{"task": "t", "task_group": "g", "pc_success": 100 * sum(successes) / 20, "n_episodes": 20,
                              "pc_success_ci95": [0, 100], "metrics": {"seeds": seeds, "successes": successes,
                                                                       "sum_rewards": [0.0] * 20}}],
                "overall": {"pc_success": 0.0}, "policy": {"spec": "run", "n_action_steps": 5, "chunk": "queue"},
                "eval": {"env": "libero", "seeds": {"t": seeds}}}

    first, second = info([i % 3 != 0 for i in range(20)]), info([i % 4 != 0 for i in range(20)])
    out = tmp_path / "outputs" / "bench" / "eval-student"
    out.mkdir(parents=True)
    (out / "eval_info.json").write_text(json.dumps(first))
    bench_eval.keep_outcomes(out, first)
    assert bench_eval.kept_path(out).parent == tmp_path / "episodes"
    shutil.rmtree(out)
    assert bench_eval.has_outcomes(out) and not bench_eval.has_outcomes(tmp_path / "outputs" / "bench" / "other")
    kept = bench_eval.eval_info(out)
    assert compare(kept, second) == compare(first, second)
    assert "sum_rewards" not in kept["per_task"][0]["metrics"]  # only what pairing needs: ~10 KB for 500 episodes


def test_an_evaluation_run_again_into_the_same_directory_replaces_its_kept_outcomes(tmp_path, monkeypatch):
    bench_eval = _bench_eval(tmp_path, monkeypatch)
    out = tmp_path / "outputs" / "bench" / "eval-student"
    out.mkdir(parents=True)
    for successes in ([True, False], [False, True]):
        info = {"per_task": [{"task": "t", "task_group": "g", "pc_success": 50.0, "n_episodes": 2,
                              "pc_success_ci95": [0, 100], "metrics": {"seeds": [1, 2], "successes": successes}}],
                "overall": {"pc_success": 50.0}, "policy": {"spec": "run"}, "eval": {"env": "aloha"}}
        (out / "eval_info.json").write_text(json.dumps(info))
        monkeypatch.setattr(bench_eval, "cli", lambda *a: None)  # the evaluation itself already ran
        bench_eval.evaluated("run", "t", out, 2)
        (out / "eval_info.json").unlink()
        assert bench_eval.eval_info(out)["per_task"][0]["metrics"]["successes"] == successes
    assert not list((tmp_path / "episodes").glob("*.tmp")), "a temporary file was left behind"
