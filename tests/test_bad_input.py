"""Each kind of bad input gives a one-line error naming the file and field, and a non-zero exit. Corrupt datasets run
through every stage that reads one are in test_faults.py."""

import numpy as np
import pytest

from conftest import write_fake_dataset
from vla_distill.cli import main
from vla_distill.data.writer import DatasetWriter, Episode
from vla_distill.errors import DatasetError


def run_inspect(root, capsys):
    code = main(["inspect", str(root)])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def ds_root(tmp_path):
    root = tmp_path / "ds"
    write_fake_dataset(root)
    return root


def test_valid_dataset_passes(ds_root, capsys):
    assert main(["inspect", str(ds_root)]) == 0
    assert "4 episodes, 28 frames" in capsys.readouterr().out


def test_writer_refuses_nan_and_bad_shapes(tmp_path):
    feats = {"action": {"dtype": "float32", "shape": [2], "names": None}}
    w = DatasetWriter(tmp_path / "w", 10, feats)
    with pytest.raises(DatasetError, match="'action'.*NaN"):
        w.add_episode(Episode({"action": np.array([[0.0, np.nan]], np.float32)}, task="t"))
    with pytest.raises(DatasetError, match="'action'.*shape"):
        w.add_episode(Episode({"action": np.zeros((3, 5), np.float32)}, task="t"))
    w.abort()
    assert not (tmp_path / "w/meta/info.json").exists()


def test_missing_dataset_and_info(tmp_path, capsys):
    code, err = run_inspect(tmp_path / "nope", capsys)
    assert code == 2 and "nope" in err
    (tmp_path / "empty").mkdir()
    code, err = run_inspect(tmp_path / "empty", capsys)
    assert code == 2 and "meta/info.json" in err


@pytest.mark.parametrize("command", ["collect", "train"])
def test_a_second_run_on_a_busy_output_is_one_line_error(command, annotated, tmp_path, capsys):
    from vla_distill.data.format import single_writer

    out = tmp_path / "out"
    out.mkdir()
    args = {"collect": ["collect", "--tasks", "reach-v3", "--episodes", "1", "--out", str(out)],
            "train": ["train", "--dataset", str(annotated), "--preset", "tiny", "--steps", "1", "--out",
                      str(out)]}[command]
    first = out / ("meta" if command == "collect" else "metrics.jsonl")  # what a first run has written so far
    first.write_text("the first run's")
    with single_writer(out):  # a first run, still going, before its first checkpoint
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {out}: another vla-distill run is writing this output; wait for it or stop it"
    assert list(out.iterdir()) == [first] and first.read_text() == "the first run's"  # neither tidied nor joined


@pytest.mark.parametrize(("flag", "value", "bounds"),
                         [("--port", "70000", "[0, 65535]"), ("--port", "-5", "[0, 65535]"),
                                                     ("--max-batch", "0", "[1, inf]"),
                                                     ("--batch-wait-ms", "-1", "[0, inf]")])
def test_serve_flags_out_of_range_are_refused_before_any_work(flag, value, bounds, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--policy", "does-not-exist", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].endswith(f"argument {flag}: {value} is not in {bounds}")
    assert "Traceback" not in "\n".join(err)


def test_a_reader_that_leaves_early_ends_no_traceback(ds_root):
    import subprocess
    import sys

    code = f"import sys; from vla_distill.cli import main; sys.exit(main(['inspect', {str(ds_root)!r}]))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the pipe's reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == ""


def test_an_unwritable_output_is_one_line_naming_it(tiny_student, tmp_path, capsys, monkeypatch):
    """A disk error (here a read-only output, simulated where it is raised: root ignores file permissions) is one line
    naming the path, exit 2, not a traceback."""
    import errno

    from vla_distill.deploy import export as export_mod

    def refuse(*_, **__):
        raise PermissionError(errno.EROFS, "Read-only file system", str(tmp_path / "bundle.partial"))

    monkeypatch.setattr(export_mod, "_write", refuse)
    code = main(["export", "--policy", str(tiny_student), "--out", str(tmp_path / "bundle")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {tmp_path / 'bundle.partial'}: Read-only file system"


@pytest.mark.parametrize("text", [  # the installed safetensors' text (seen on a real full tmpfs), and an older one's
    "Error while serializing: I/O error: No space left on device (os error 28)",
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'])
def test_a_full_disk_while_saving_weights_is_an_os_error_naming_the_file(text, tmp_path, monkeypatch):
    """safetensors reports a full disk as SafetensorError text; the checkpoint writers raise it as the OSError it is
    (errno, path), which the CLI prints in one line."""
    import errno

    import torch
    from safetensors import SafetensorError

    from vla_distill.models import checkpoint

    def full(*_, **__):
        raise SafetensorError(text)

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError) as e:
        checkpoint.save_tensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model.safetensors")
