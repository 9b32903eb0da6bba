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
