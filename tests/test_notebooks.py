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


def test_the_runner_skips_a_check_only_for_params_content_that_passed_it_under_the_same_code(tmp_path, monkeypatch,
                                                                                          capsys):
    """Inside `dvc repro` a params file whose exact bytes passed the full check under the exact same fedlib code is
    not checked again (saves ~3.5 s a stage); -p names are always checked; anything else is checked first."""
    import nbformat
    import yaml

    from fedlib import check as check_mod
    from fedlib import notebook
    from fedlib.config import ParamsError
    from tests.conftest import tiny_raw

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]})])
    nb.metadata["kernelspec"] = {"name": "fedlib", "display_name": "fedlib", "language": "python"}
    nbformat.write(nb, tmp_path / "src.ipynb")
    monkeypatch.chdir(tmp_path)
    good = yaml.safe_dump(tiny_raw())
    Path("params.yaml").write_text(good)
    calls = []
    real = check_mod.check
    monkeypatch.setattr(check_mod, "check", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    monkeypatch.delenv("DVC_STAGE", raising=False)

    notebook.validate_inputs("src.ipynb", "params.yaml", {"x": 1})          # by hand: checked, digest recorded
    assert len(calls) == 1 and (notebook.CHECKED / notebook.params_digest("params.yaml")).exists()
    notebook.validate_inputs("src.ipynb", "params.yaml", {"x": 1})          # by hand: checked again
    monkeypatch.setenv("DVC_STAGE", "train@fedavg")
    notebook.validate_inputs("src.ipynb", "params.yaml", {"x": 1})          # under dvc, same bytes + code: skipped
    assert len(calls) == 2
    with pytest.raises(ParamsError, match="has no parameter 'y'"):         # names: always
        notebook.validate_inputs("src.ipynb", "params.yaml", {"y": 1})

    Path("params.yaml").write_text(good.replace("rounds: 4", "rounds: -1"))   # new content, same second
    assert notebook.main(["src.ipynb", "out.ipynb"]) == 2
    assert "train.rounds" in capsys.readouterr().err and not Path("out.ipynb").exists()
    assert len(calls) == 3 and len(list(notebook.CHECKED.iterdir())) == 1    # the bad content is not recorded

    Path("params.yaml").write_text(good)                                     # the same code, checked bytes
    fake = tmp_path / "fake" / "fedlib"
    fake.mkdir(parents=True)
    (fake / "sections.py").write_text("A = 1\n")
    monkeypatch.setattr(notebook, "__file__", str(fake / "notebook.py"))   # the code the digest covers changes
    before = notebook.params_digest("params.yaml")
    (fake / "sections.py").write_text("A = 2\n")
    assert notebook.params_digest("params.yaml") != before
