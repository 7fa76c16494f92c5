"""The committed FedWMSAM study runs are the output of this code, not of an older one.

The fingerprint test (tests/test_fedwmsam_study.py) ties every committed run to the current params; this one ties
them to the current code. The first two rounds of each method's Dirichlet-0.6 seed-0 run, and of four ablation
variants' seed-0 runs, are retrained with the study's own settings and compared with the committed metrics.csv
rows. On the host that made a run they agree bit for bit. On another CPU the floating-point order differs:
runs made on other hosts agree to about 1e-6 (relative) in round 1 and drift by up to about 5e-3 by round 2, as
float differences grow in early training; the round-2 tolerance leaves room for that. The test is there to tie
results to code, not to replace the float64 rule tests: at these tolerances
python tests/mutation_check.py tests/test_study_reproduces.py catches 11 of its 16 family mutants (the momentum's
sign, 1/K_k and mix weight, the SAM normalisation, sampling with replacement, FedAvgM's and SCAFFOLD's signs,
FedSMOO's proximal scale and h_bar sign, FedWMSAM's delta_b index, the control variate's 1/N; the ablation cases
alone catch 7 of these); the five that first act in round 2 by a few per cent or less (FedGAMMA's correction,
FedLESAM's perturbation sign, FedSMOO's dual, FedWMSAM's alpha clip and personalised-momentum scale) are left to
tests/test_update_rules.py.
"""
import pytest
import torch

from fedlib import engine
from fedlib.stages import fedwmsam_study as study
from fedlib.stages.ablation import ablation_variants
from fedlib.stages.common import run_dir

PART, SEED, ROUNDS = "dirichlet-0.6", 0, 2
TOL = {1: 1e-4, 2: 3e-2}                                   # relative, per round
ACC_TOL = {1: 0.002, 2: 0.03}                              # absolute (20 and 300 of 10,000 test images)
STATE = ("train_loss", "test_loss", "client_loss", "alpha", "momentum_norm", "server_momentum_norm",
         "perturbation_norm", "correction_norm", "dual_norm")


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.mark.parametrize("method", study.load_params("params.yaml").study_fedwmsam.methods)
def test_the_first_rounds_of_a_committed_study_run_are_reproduced(method, cache, tmp_path):
    p = study.study_params("params.yaml", method, PART)
    retrain_and_compare(p, method, run_dir(study.OUT / "main" / PART, method, SEED), cache, tmp_path)


@pytest.mark.parametrize("variant", ["none", "MP", "PM+AA", "rho=0.1"])
def test_the_first_rounds_of_a_committed_ablation_run_are_reproduced(variant, cache, tmp_path):
    """The ablation's switch paths (all off = FedCM, the momentum-guided perturbation alone, the personalised
    momentum with the adaptive alpha) and a radius of the rho sweep, at seed 0 (made on earlier hosts)."""
    s = study.load_params("params.yaml").study_fedwmsam
    hp = ablation_variants(s.rho, s.ablation_rhos)[variant]
    p = study.study_params("params.yaml", "fedwmsam", s.ablation_partition,
                           {f"methods.fedwmsam.{k}": v for k, v in hp.items()})
    retrain_and_compare(p, "fedwmsam", run_dir(study.OUT / "ablation" / variant, "fedwmsam", SEED), cache, tmp_path)


def retrain_and_compare(p, method, committed_run, cache, tmp_path):
    old = engine._read_csv(committed_run / "metrics.csv")[:ROUNDS]
    p.train.rounds = ROUNDS                                 # eta_r, the sampling and every rule depend on r only
    torch.set_num_threads(1)
    engine.train(p, method, SEED, tmp_path, fed=study.federation(p, cache), progress=False)
    new = engine._read_csv(tmp_path / "metrics.csv")
    assert [r["round"] for r in new] == [r["round"] for r in old] == ["1", "2"]
    compared = 0
    for a, b in zip(old, new):
        tol = TOL[int(a["round"])]
        for key in STATE:
            if a.get(key, "") != "":
                assert float(b[key]) == pytest.approx(float(a[key]), rel=tol, abs=1e-9), (method, a["round"], key)
                compared += 1
        gap = abs(float(b["test_accuracy"]) - float(a["test_accuracy"]))
        assert gap <= ACC_TOL[int(a["round"])], (method, a["round"])
    assert compared >= 6
