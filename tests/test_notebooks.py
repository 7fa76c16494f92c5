"""The source notebooks are clean and parameterised, every one is a pipeline stage, and the core
stages' notebooks execute through papermill on tiny params."""
import json
from pathlib import Path

import pytest

from tests import tiny_project

NOTEBOOKS = sorted((tiny_project.ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_is_clean_and_used(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit notebooks without outputs"
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == "fedlib"
    pipelines = [(tiny_project.ROOT / f).read_text() for f in ("dvc.yaml", "notebooks/studies/dvc.yaml")]
    rel = path.relative_to(tiny_project.ROOT).as_posix()
    assert any(rel in text for text in pipelines), "every notebook is a stage (dvc.yaml or notebooks/studies/dvc.yaml)"


@pytest.mark.slow
def test_core_notebooks_execute(tmp_path, monkeypatch):
    from fedlib.notebook import run

    proj = tiny_project.make(tmp_path / "proj", {"train.methods": ["fedavg", "fedavgm"]})
    monkeypatch.chdir(proj)
    run("notebooks/partition.ipynb", "results/notebooks/partition.ipynb")
    for m in ("fedavg", "fedavgm"):
        run("notebooks/train.ipynb", f"results/notebooks/train-{m}.ipynb", {"method": m})
    run("notebooks/report.ipynb", "results/notebooks/report.ipynb")
    table = json.loads(Path("results/report/summary.json").read_text())
    assert set(table) == {"fedavg", "fedavgm"} and 0 < table["fedavg"]["final_accuracy"] <= 1
    assert Path("results/report/test_accuracy.png").stat().st_size > 10_000
    assert Path("results/notebooks/report.html").exists()
    assert Path("models/fedavg/0/models.pt").exists() and Path("results/train/fedavgm/0/timing.json").exists()


def test_two_notebooks_run_at_once_without_sharing_kernel_sockets(tmp_path, monkeypatch):
    """Two studies started together used to pick the same ./kernel-ipc-N sockets and break each other."""
    import nbformat
    from concurrent.futures import ThreadPoolExecutor

    from fedlib.notebook import run

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("import time; time.sleep(1); y = x * 2; y")])
    nb.metadata["kernelspec"] = {"name": "fedlib", "display_name": "fedlib", "language": "python"}
    nbformat.write(nb, tmp_path / "src.ipynb")
    monkeypatch.chdir(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: run("src.ipynb", f"out{i}.ipynb", {"x": i}, html=False), (3, 4)))
    for i, out in zip((3, 4), outs):
        last = nbformat.read(out, as_version=4).cells[-1]
        assert last.outputs[0]["data"]["text/plain"] == str(2 * i)
    assert not list(tmp_path.glob("kernel-ipc*"))                   # no sockets left in the working directory


def test_the_runner_trusts_dvcs_check_only_when_it_passed_on_these_params(tmp_path, monkeypatch, capsys):
    """Inside `dvc repro` the check stage validated params.yaml: the runner skips its own check only when the
    marker is at least as new as the params (a failed check leaves it older) and DVC_STAGE is set."""
    import os

    from fedlib.notebook import checked_by_dvc, main

    params, marker = tmp_path / "params.yaml", tmp_path / "check.txt"
    params.write_text("train: {rounds: -1}\n")
    marker.write_text("valid\n")
    os.utime(params, (1000, 1000))
    os.utime(marker, (2000, 2000))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert not checked_by_dvc(params, marker)                          # by hand: always check
    monkeypatch.setenv("DVC_STAGE", "train@fedavg")
    assert checked_by_dvc(params, marker)
    os.utime(params, (3000, 3000))                                     # edited after the last passing check
    assert not checked_by_dvc(params, marker) and not checked_by_dvc(params, tmp_path / "none.txt")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]})])
    nbformat.write(nb, tmp_path / "src.ipynb")
    monkeypatch.chdir(tmp_path)                                        # no results/check.txt here: checked
    assert main(["src.ipynb", "out.ipynb", "--params-file", "params.yaml"]) == 2
    assert "train.rounds" in capsys.readouterr().err and not (tmp_path / "out.ipynb").exists()
