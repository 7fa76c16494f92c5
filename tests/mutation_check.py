"""Mutation check: each one-line change below to an update rule must make the rule tests fail.

    python tests/mutation_check.py [test files ...]

Each mutant is applied to a scratch copy of fedlib/ (the repository is not touched) and the rule tests run
against it; a line per mutant says CAUGHT (a test failed, naming the first) or MISSED. Not collected by pytest
(it runs the suite 20 times); run it after changing an update rule or its tests.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_update_rules.py", "tests/test_sam_family.py", "tests/test_sam_perturbations.py",
         "tests/test_split_rules.py", "tests/test_split_rules_gas_fslsage.py", "tests/test_zo.py"]
# (file, text, replacement, what the change breaks)
MUTANTS = [
 ("fedlib/algorithms/sam.py", "mean(0).div_(-lr)", "mean(0).div_(lr)", "momentum m_{r+1} sign"),
 ("fedlib/algorithms/sam.py", "r.delta / r.steps", "r.delta", "momentum 1/K_k dropped"),
 ("fedlib/algorithms/sam.py", "add_(m, alpha=1.0 - alpha)", "add_(m, alpha=alpha)", "momentum mix weight"),
 ("fedlib/algorithms/sam.py", "rho / norm, out=out", "rho, out=out", "SAM perturbation not normalised"),
 ("fedlib/engine.py", "per_round, replace=False", "per_round, replace=True", "client sampling with replacement"),
 ("fedlib/algorithms/fedavgm.py", "self.hp.beta * v + mean_delta", "self.hp.beta * v - mean_delta", "FedAvgM server momentum sign"),
 ("fedlib/algorithms/scaffold.py", "self.worker.grad.add_(correction)", "self.worker.grad.sub_(correction)", "SCAFFOLD correction sign"),
 ("fedlib/algorithms/fedgamma.py", "self.worker.grad.add_(ctx.correction)", "self.worker.grad.sub_(ctx.correction)", "FedGAMMA correction sign"),
 ("fedlib/algorithms/fedlesam.py", "sam_perturbation(prev, -self.hp.rho, ctx.e)", "sam_perturbation(prev, self.hp.rho, ctx.e)", "FedLESAM perturbation sign"),
 ("fedlib/algorithms/fedsmoo.py", "ctx.mu.add_(e).sub_(ctx.s)", "ctx.mu.add_(e)", "FedSMOO dual mu_k drops s"),
 ("fedlib/algorithms/fedsmoo.py", "add_(w.flat, alpha=self.hp.lam)", "add_(w.flat, alpha=2 * self.hp.lam)", "FedSMOO proximal scale"),
 ("fedlib/algorithms/fedwmsam.py", "(alpha / (1 - alpha)) * control_correction", "alpha * control_correction", "FedWMSAM personalised momentum scale"),
 ("fedlib/algorithms/fedwmsam.py", "min(max(s, 0.1), 0.9)", "min(max(s, 0.1), 1.0)", "FedWMSAM alpha clip"),
 ("fedlib/zo.py", "self.u.add_(s, -lr * c)", "self.u.add_(s, lr * c)", "ZO step sign"),
 ("fedlib/zo.py", "diff = (plus - minus) / (2 * self.mu)", "diff = (plus - minus) / self.mu", "ZO central scale"),
 ("fedlib/algorithms/musplitfed.py", "self.xs.add_(self.gs, alpha=-self.hp.eta_s)", "self.xs.add_(self.gs, alpha=self.hp.eta_s)", "MU FO server step sign"),
 ("fedlib/algorithms/musplitfed.py", "server_seeds = [draw_seed(data) for _ in range(hp.tau)]", "server_seeds = [draw_seed(data) for _ in range(max(1, hp.tau - 1))]", "MU tau-1 server steps"),
 ("fedlib/algorithms/musplitfed.py", "deltas = [lp - lm for lp, lm in pm_losses]", "deltas = [lm - lp for lp, lm in pm_losses]", "MU client scalar sign"),
 ("fedlib/algorithms/csefsl.py", "upload = done % hp.upload_every == 0", "upload = (done + 1) % hp.upload_every == 0", "upload interval offset"),
 ("fedlib/algorithms/fedwmsam.py", "alpha=b, out=ctx.delta", "alpha=b + 1, out=ctx.delta", "FedWMSAM delta_b index"),
 ("fedlib/algorithms/sam.py", "state[\"c\"] = c + change / num_clients", "state[\"c\"] = c + change", "control variate c divides by S not N"),
 ("fedlib/algorithms/fedsmoo.py", "x_next = x_next + h_sum / self.num_clients", "x_next = x_next - h_sum / self.num_clients", "FedSMOO h_bar sign"),
 ("fedlib/algorithms/gas.py", "return (1.0 + version_now - version_made) ** (-power)", "return (1.0 + version_now - version_made) ** power", "GAS staleness weight"),
 ("fedlib/algorithms/gas.py", "return (tau * torch.log(pi.clamp_min(1e-8))).float()", "return (-tau * torch.log(pi.clamp_min(1e-8))).float()", "GAS logit adjustment sign"),
 ("fedlib/algorithms/fslsage.py", "if info.r % self.hp.align_every:", "if (info.r + 1) % self.hp.align_every:", "FSL-SAGE alignment rounds"),
]


def main(tests: list[str]) -> int:
    missed = 0
    for f, old, new, what in MUTANTS:
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp)
            shutil.copytree(ROOT / "fedlib", dst / "fedlib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            shutil.copytree(ROOT / "tests", dst / "tests", ignore=shutil.ignore_patterns("__pycache__"))
            for name in ("data", "params.yaml", "pyproject.toml", "results"):
                (dst / name).symlink_to(ROOT / name)
            src = (dst / f).read_text()
            assert src.count(old) == 1, f"{f}: {old!r} found {src.count(old)} times"
            (dst / f).write_text(src.replace(old, new))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                               cwd=dst, capture_output=True, text=True)
        failed = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("FAILED")]
        missed += r.returncode == 0
        print(f"{'CAUGHT' if r.returncode else 'MISSED'} | {what} | {f} | {failed[0] if failed else '-'}", flush=True)
    print(f"{len(MUTANTS) - missed}/{len(MUTANTS)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or TESTS))
