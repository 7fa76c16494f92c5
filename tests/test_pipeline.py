"""The whole DVC pipeline on tiny params in a temporary git repository."""
import json
from pathlib import Path

import pytest

from tests import tiny_project


@pytest.mark.slow
def test_dvc_pipeline_end_to_end(tmp_path):
    proj = tiny_project.make(tmp_path / "proj")
    run = lambda *cmd: tiny_project.run(list(cmd), proj)  # noqa: E731
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro")

    for f in ("data/partition/clients.json", "results/partition/heatmap.png", "results/report/summary.json",
              "results/report/test_accuracy.png", "results/notebooks/report.html",
              "results/train/fedavg-0/metrics.csv", "models/fedavgm-0/models.pt"):
        assert (proj / f).exists(), f
    metrics = json.loads(run("dvc", "metrics", "show", "--json"))
    shown = json.dumps(metrics)
    assert "final_accuracy" in shown and "results/train/fedavg-0/summary.json" in shown
    assert "Data and pipelines are up to date" in run("dvc", "status")

    second = run("dvc", "repro")                      # nothing to do right after a full run
    assert "Running stage" not in second

    run("git", "add", "-A")
    run("git", "commit", "-qm", "tiny")
    exp = run("dvc", "exp", "run", "-S", "train.rounds=2")
    assert "Running stage 'partition'" not in exp      # partition does not depend on train.*
    assert "Running stage 'train@fedavg-0'" in exp and "Running stage 'report'" in exp
