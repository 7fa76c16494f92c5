"""The long FedWMSAM study's machinery on a tiny setting: runs, skip when complete, report, statistics."""
import json

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from fedlib.config import ParamsError
from fedlib.stages import fedwmsam_claims as claims_mod
from fedlib.stages import fedwmsam_report as rep
from fedlib.stages import fedwmsam_study as study
from fedlib import stats as paired_stats
from tests.conftest import tiny_raw


@pytest.fixture
def project(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    raw = tiny_raw()
    raw["study_fedwmsam"] = {
        "methods": ["fedsam", "fedwmsam"], "partitions": ["dirichlet-0.5", "shards-2"],
        "seeds": [0, 1], "num_clients": 10, "rounds": 2, "clients_per_round": 2, "local_epochs": 1,
        "batch_size": 16, "lr": 0.05, "target_accuracies": [0.2, 0.99], "table3_targets": [0.2, 0.2],
        "ablation_partition": "dirichlet-0.5", "ablation_seeds": [0], "ablation_rhos": [0.01, 0.05],
        "diag_every": 2, "model": "mlp", "train_loss_samples": 200,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_study_runs_skip_when_complete_and_report(project):
    study.main_runs("params.yaml")
    run = study.OUT / "main" / "shards-2" / "fedwmsam" / "1"
    assert (run / "summary.json").exists() and (run / "fingerprint.txt").exists()
    before = (run / "metrics.csv").stat().st_mtime_ns
    study.main_runs("params.yaml", seeds=[1])                       # complete: skipped, files untouched
    assert (run / "metrics.csv").stat().st_mtime_ns == before
    p = study.study_params("params.yaml", "fedsam", "shards-2")
    assert p.partition.scheme == "shards" and p.partition.classes_per_client == 2 and p.methods.fedsam.rho == 0.01
    assert p.train.weight_decay == 1e-3 and p.train.clip == 10.0 and p.train.eval_every == 1
    study.main_ablation("params.yaml")
    assert len(list((study.OUT / "ablation").iterdir())) == 9      # 8 switch combinations + rho = 0.05
    res = rep.report("params.yaml")
    for f in ("table1.md", "table3.md", "paired.md", "verdicts.md", "claims.md", "diagnostics.md", "ablation.md", "curves.png",
              "ablation.png", "summary.json"):
        assert (study.OUT / f).exists(), f
    assert res["table1"]["fedwmsam"]["shards-2"]["n"] == 2
    q = res["paired"]["dirichlet-0.5"]["fedsam"]["last10"]
    a = [json.loads((study.OUT / "main/dirichlet-0.5" / m / str(s) / "summary.json").read_text())["last10_accuracy"]
         for m in ("fedwmsam", "fedsam") for s in (0, 1)]
    assert q["n"] == 2 and q["mean"] == pytest.approx(np.mean([a[0] - a[2], a[1] - a[3]]))
    assert {v["verdict"].split(" (")[0] for v in res["verdicts"]} <= {"holds", "does not hold", "cannot tell"}
    assert res["ablation"]["none"]["personalised_momentum"] is False
    effects = res["ablation_effects"]
    assert set(effects) == {"PM", "MP", "AA", "all three", "rho 0.01 vs 0.05"} and effects["PM"]["n"] == 1
    assert effects["rho 0.01 vs 0.05"]["n"] == 1


def test_paired_interval_and_verdicts():
    d = [0.02, 0.03, 0.025, 0.01]
    _, lo, hi = paired_stats.interval(d)
    ref = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    assert (lo, hi) == pytest.approx(ref)
    assert paired_stats.verdict(lo, hi, 4) == "holds"
    assert paired_stats.verdict(-hi, -lo, 4) == "does not hold"
    assert paired_stats.verdict(-0.01, 0.02, 4).startswith("cannot tell")
    assert paired_stats.verdict(*paired_stats.interval([0.01])[1:], 1).startswith("cannot tell")
    equal = [0.0042000000000000925, 0.0041999999999999815]   # two seeds 42 test samples apart, float-rounded
    assert paired_stats.verdict(*paired_stats.interval(equal)[1:], 2) == "cannot tell (no spread; n = 2)"
    assert paired_stats.verdict(-0.004, 0.005, 3, equivalence=True) == "holds"
    assert paired_stats.verdict(0.02, 0.03, 3, equivalence=True) == "does not hold"
    assert claims_mod.rounds_or_censored({"rounds_to_target": {"0.9": None}}, 0.9, 300) == 301


def test_claims_grid_puts_each_verdict_in_its_partition_column_beside_the_papers_figure():
    s = type("S", (), {"partitions": ["p1", "p2"]})
    v = [{"key": "accuracy>fedavg", "claim": "x", "partition": "p2", "verdict": "holds", "n": 3,
          "evidence": "+0.0100 [+0.0040, +0.0160], n = 3"},
         {"key": "accuracy>fedsam", "claim": "x", "partition": "p1", "verdict": "cannot tell (n = 0)", "n": 0,
          "evidence": "—, n = 0"},
         {"key": "new-claim", "claim": "a claim the paper has no figure for", "partition": "p1",
          "verdict": "cannot tell (n = 1)", "n": 1, "evidence": "+0.0004, n = 1"}]
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in claims_mod.claims_grid(s, v).splitlines()
            if line.startswith("| ") and not line.startswith("| claim")}
    label = claims_mod.PAPER["accuracy>fedavg"][0]
    assert rows[label] == [label, "76.6 vs 70.1 (+6.5)", "not run yet", "**holds**: +0.0100 [+0.0040, +0.0160] (n = 3)"]
    assert rows["FedWMSAM > FedSAM"][2:] == ["not run yet", "not run yet"]              # n = 0 is not a verdict
    assert rows["a claim the paper has no figure for"][1:] == ["—", "observed: +0.0004 (n = 1)", "not run yet"]
    assert list(rows)[:len(claims_mod.PAPER)] == [c for c, _ in claims_mod.PAPER.values()]          # the paper's claims first


def test_echo_claim_pairs_the_late_test_loss_swing_by_seed():
    def run(seed, swing, alpha=None):   # test loss 1.0 with one spike of `swing` in the last 10 rounds; alpha 0.1 -> alpha
        rows = [{"round": r, "test_loss": 1.0 + (swing if r == 25 else 0.0),
                 "alpha": "" if alpha is None else 0.1 + (alpha - 0.1) * (r - 1) / 29} for r in range(1, 31)]
        rows[0]["test_loss"] = ""                    # a round without evaluation is skipped
        summ = {"last10_accuracy": 0.9, "final_accuracy": 0.9, "rounds_to_target": {"0.9": 10}, "seconds_per_round": 1.0}
        return summ, rows
    assert claims_mod.loss_swing(*run(0, 0.05)) == pytest.approx(0.05)
    assert claims_mod.loss_swing(*run(0, 0.05), window=5) == 0.0   # the spike is 6th from the end
    data = {"p": {"fedcm": {0: run(0, 0.05), 1: run(1, 0.04)}, "fedwmsam": {0: run(0, 0.01, 0.2), 1: run(1, 0.02, 0.21)}}}
    s = type("S", (), {"partitions": ["p"], "table3_targets": [0.9], "methods": ["fedcm", "fedwmsam"], "rounds": 30})
    got = {c["key"]: c for c in claims_mod.claims(s, data, lambda x: x["last10_accuracy"])}
    assert got["echo<fedcm"]["n"] == 2 and got["echo<fedcm"]["mean"] == pytest.approx(0.03)   # FedCM - FedWMSAM > 0
    assert got["alpha"]["mean"] == pytest.approx(0.105) and got["alpha"]["verdict"] == "holds"   # rises 0.10, 0.11
    assert got["alpha>0.5"]["mean"] == pytest.approx(-0.295) and got["alpha>0.5"]["verdict"] == "does not hold"


def test_rounds_claims_censor_never_reached_runs_refuse_zero_spread_and_level_uses_its_band(monkeypatch):
    def run(rounds_to_095, last10=0.97):
        return {"last10_accuracy": last10, "final_accuracy": last10, "rounds_to_target": {"0.95": rounds_to_095}}, []
    s = type("S", (), {"partitions": ["p"], "table3_targets": [0.95], "methods": ["fedavg", "fedsam"], "rounds": 300})
    data = {"p": {"fedavg": {0: run(60), 1: run(None), 2: run(70)}, "fedwmsam": {0: run(50), 1: run(80), 2: run(60)},
                  "fedsam": {0: run(60, 0.9718), 1: run(60, 0.9722), 2: run(60, 0.972)}}}
    monkeypatch.setattr(claims_mod, "loss_swing", lambda *run: 0.0)     # rows are not needed for these claims
    got = {c["key"]: c for c in claims_mod.claims(s, data, lambda x: x["last10_accuracy"])}
    saved = got["rounds<fedavg"]                          # FedAvg seed 1 never reached 0.95: counted as 301
    assert saved["mean"] == pytest.approx(np.mean([10, 221, 10])) and "1 of 6 runs never reached it" in saved["evidence"]
    assert got["rounds<fedsam"]["verdict"] == "cannot tell (n = 3)"
    data["p"]["fedwmsam"] = {sd: run(55) for sd in (0, 1, 2)}
    got = {c["key"]: c for c in claims_mod.claims(s, data, lambda x: x["last10_accuracy"]) if c["key"] == "rounds<fedsam"}
    assert got["rounds<fedsam"]["verdict"] == "cannot tell (no spread; n = 3)"     # 5, 5, 5: a zero-width interval
    level = [c for c in claims_mod.claims(s, data, lambda x: x["last10_accuracy"]) if c["key"] == "fedavg~fedsam"][0]
    assert level["mean"] == pytest.approx(0.002) and level["verdict"] == "holds"    # inside ±LEVEL = 0.003
    data["p"]["fedsam"] = {sd: run(60, 0.975 + 0.0002 * (sd - 1)) for sd in (0, 1, 2)}   # 0.005 apart: not level
    level = [c for c in claims_mod.claims(s, data, lambda x: x["last10_accuracy"]) if c["key"] == "fedavg~fedsam"][0]
    assert level["verdict"] == "does not hold"                                       # (±0.01 would call it level)
    with pytest.raises(KeyError, match="table3_targets: 0.9 is not one of"):
        claims_mod.rounds_or_censored(run(60)[0], 0.9, 300)


def test_switch_effects_average_the_on_minus_off_pairs_and_pair_by_seed():
    from fedlib.stages.ablation import ablation_variants

    variants = ablation_variants(0.01, [0.01, 0.1])
    gain = {"PM": 0.010, "MP": 0.0, "AA": 0.004}                  # additive switch effects, plus a seed offset
    last10 = {n: {sd: 0.9 + 0.003 * sd + sum(g for k, g in gain.items() if k in n.split("+"))
                  for sd in (0, 1, 2)} for n, hp in variants.items() if hp["rho"] == 0.01}
    last10["PM+AA"] = {0: last10["PM+AA"][0], 1: last10["PM+AA"][1]}   # seed 2 incomplete: left out everywhere
    e = rep.switch_effects(last10, variants, 0.01)
    assert e["PM"]["n"] == 2 and e["PM"]["mean"] == pytest.approx(0.010) and e["MP"]["mean"] == pytest.approx(0.0)
    assert e["AA"]["mean"] == pytest.approx(0.004) and e["all three"]["mean"] == pytest.approx(0.014)
    last10["PM"][1] += 0.004                                       # one pair of one seed moves: 1/4 of it shows
    e = rep.switch_effects(last10, variants, 0.01)
    d = [0.010, 0.011]
    assert (e["PM"]["mean"], e["PM"]["lo"], e["PM"]["hi"]) == pytest.approx(paired_stats.interval(d))
    assert e["PM"]["verdict"] == paired_stats.verdict(*paired_stats.interval(d)[1:], 2)
    assert rep.switch_effects({}, variants, 0.01)["AA"]["verdict"] == "cannot tell (n = 0)"


def test_rho_effects_pair_the_full_variant_at_rho_against_each_other_radius_by_seed():
    from fedlib.stages.ablation import ablation_variants

    variants = ablation_variants(0.01, [0.005, 0.01, 0.1])
    last10 = {"PM+MP+AA": {0: 0.977, 1: 0.975, 2: 0.976}, "rho=0.1": {0: 0.972, 1: 0.969},   # seed 2 not run
              "rho=0.005": {0: 0.978, 1: 0.975, 2: 0.974}, "PM+AA": {0: 0.5, 1: 0.5, 2: 0.5}}   # not a radius
    e = rep.rho_effects(last10, variants, 0.01)
    assert list(e) == ["rho 0.01 vs 0.005", "rho 0.01 vs 0.1"]
    d = [0.005, 0.006]                                              # 0.977 - 0.972, 0.975 - 0.969
    assert e["rho 0.01 vs 0.1"]["n"] == 2
    assert (e["rho 0.01 vs 0.1"]["mean"], e["rho 0.01 vs 0.1"]["lo"], e["rho 0.01 vs 0.1"]["hi"]) == \
        pytest.approx(paired_stats.interval(d))
    assert e["rho 0.01 vs 0.1"]["verdict"] == paired_stats.verdict(*paired_stats.interval(d)[1:], 2)
    assert e["rho 0.01 vs 0.005"]["mean"] == pytest.approx((-0.001 + 0.0 + 0.002) / 3)
    assert rep.rho_effects({}, variants, 0.01)["rho 0.01 vs 0.1"]["verdict"] == "cannot tell (n = 0)"


def test_accuracy_drift_is_the_last_window_minus_the_one_before():
    t = np.arange(300, dtype=float)
    ramp = np.stack([0.5 + 1e-4 * t, 0.6 + 3e-4 * t])            # two seeds rising 1e-4 and 3e-4 per round
    assert rep.accuracy_drift(ramp, 50) == pytest.approx(np.mean([50 * 1e-4, 50 * 3e-4]))
    flat = np.full((2, 300), 0.9)
    flat[:, -100:-50] = 0.8                                       # the window before is lower: positive drift
    assert rep.accuracy_drift(flat, 50) == pytest.approx(0.1)
    assert rep.accuracy_drift(ramp[:, :99], 50) is None           # fewer than two windows


def test_rolling_mean_averages_the_finite_entries_in_the_window():
    v = np.array([[np.nan, 1.0, 1.0, 1.0, 1.0, 5.0]])
    got = rep.rolling_mean(v, 3)
    assert got[0, 0] == 1.0 and got[0, 2] == 1.0                  # the missing first round and the edge: no pull to 0
    assert got[0, 5] == pytest.approx(3.0) and got[0, 4] == pytest.approx(7 / 3)


def test_bad_study_params_and_fingerprint(project):
    with pytest.raises(ParamsError, match="dirichlet-<alpha>"):
        study.partition_overrides("dirichlet0.1")
    s = study.load_params("params.yaml").study_fedwmsam
    with pytest.raises(ParamsError, match="table3_targets"):
        study.check_study(type(s)(**{**vars(s), "table3_targets": [0.9]}))
    with pytest.raises(ParamsError, match="study_fedwmsam.methods"):
        study.check_study(type(s)(**{**vars(s), "methods": ["fedavg", "nosuch"]}))
    fp = lambda **o: study.study_fingerprint(study.study_params("params.yaml", "fedsam", "shards-2", o), "fedsam", 0)
    assert fp() == fp(**{"train.workers": 3}) != fp(**{"train.lr": 0.2})   # threads do not change the numbers
    assert study.partition_overrides("shards-3") == {"partition.scheme": "shards", "partition.classes_per_client": 3}


def test_the_default_pipelines_train_settings_do_not_reach_a_study_run(project):
    """Every root train.* key the study does not set itself is one it pins: changing all of them at once leaves
    a study run's fingerprint as it was. A new train key fails here until the study pins it (or it is listed as
    not reaching the numbers, like workers)."""
    from fedlib.sections import SECTIONS

    other = {"model": "cnn_half", "rounds": 7, "clients_per_round": 4, "local_epochs": 3, "batch_size": 8,
             "lr": 0.3, "lr_decay": 0.9, "weight_decay": 0.01, "clip": 2.0, "server_lr": 0.5, "eval_every": 2,
             "checkpoint_every": 3, "snapshot_rounds": [1], "target_accuracies": [0.5], "train_loss_samples": 50,
             "grad_norm_every": 0, "eval_batch_size": 99, "device": "cuda", "batched": "on"}
    assert set(other) == set(SECTIONS["train"]) - {"methods", "seeds", "workers"}
    fp = lambda: study.study_fingerprint(study.study_params("params.yaml", "fedsam", "shards-2"), "fedsam", 0)
    base, raw = fp(), yaml.safe_load((project / "params.yaml").read_text())
    raw["train"].update(other)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    assert fp() == base
    for key, value in {"train_loss_samples": 100, "device": "cuda", "batched": "on", "model": "cnn_half"}.items():
        changed = {**raw, "study_fedwmsam": {**raw["study_fedwmsam"], key: value}}   # the study's own keys reach it
        (project / "params.yaml").write_text(yaml.safe_dump(changed))
        assert fp() != base, key


def test_every_committed_study_run_matches_the_current_params():
    """A change of params.yaml that would silently orphan the committed study runs fails here, not in a
    several-hour rerun (dvc status cannot see train.* keys the study inherits)."""
    from fedlib.stages.ablation import ablation_variants

    s = study.load_params("params.yaml").study_fedwmsam
    runs = {study.OUT / "main" / part / m / str(seed): study.study_params("params.yaml", m, part)
            for part in s.partitions for m in s.methods for seed in s.seeds}
    for name, hp in ablation_variants(s.rho, s.ablation_rhos).items():
        over = {f"methods.fedwmsam.{k}": v for k, v in hp.items()}
        for seed in s.ablation_seeds:
            runs[study.OUT / "ablation" / name / "fedwmsam" / str(seed)] = study.study_params(
                "params.yaml", "fedwmsam", s.ablation_partition, over)
    done = {d: p for d, p in runs.items() if (d / "summary.json").exists()}
    assert done                                                          # the committed results are there
    for d, p in done.items():
        method, seed = d.parent.name, int(d.name)
        assert (d / "fingerprint.txt").read_text().strip() == study.study_fingerprint(p, method, seed), d


def test_a_run_locked_by_a_live_process_is_left_to_it_and_a_dead_owners_lock_is_taken(project):
    import os
    import subprocess
    import sys

    lock = project / "runs" / "x" / "lock"
    assert study.claim(lock) and lock.read_text() == str(os.getpid())
    assert not study.claim(lock)                                    # held by a live process (this one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())                            # its owner has exited
    assert study.claim(lock) and lock.read_text() == str(os.getpid())
    lock.write_text(str(os.getpid()))
    scratch = study.run_dir(study.SCRATCH / "runs" / "shards-2", "fedsam", 0)
    study.claim(scratch / "lock")
    study.main_runs("params.yaml", seeds=[0], partitions=["shards-2"], methods=["fedsam"])
    assert not (study.OUT / "main" / "shards-2" / "fedsam" / "0" / "summary.json").exists()   # busy: not trained
    (scratch / "lock").unlink()
    study.main_runs("params.yaml", seeds=[0], partitions=["shards-2"], methods=["fedsam"])
    assert (study.OUT / "main" / "shards-2" / "fedsam" / "0" / "summary.json").exists()
    assert not (scratch / "lock").exists()                          # released after the run
    assert not (study.OUT / "main" / "shards-2" / "fedwmsam").exists()   # --methods restricts the runs
