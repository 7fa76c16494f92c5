"""Report of the long FedWMSAM study (fedlib/stages/fedwmsam_study.py): works on the runs complete so far.

Writes to results/studies/fedwmsam/:
  table1.md          final and last-10 accuracy, mean ± std over seeds, per method x partition (Table-1 analogue)
  table3.md          rounds to the chosen target per partition, mean over seeds (Table-3 analogue)
  paired.md          FedWMSAM - baseline per partition over common seeds: mean difference and 95 % t-interval
  verdicts.md        one line per claim of the paper: holds / does not hold / cannot tell
  claims.md          the same verdicts as a grid, claim x partition, beside the paper's own figures (README headline)
  diagnostics.md     the family's failure-mode diagnostics over the long run (federated.family_summary)
  ablation.md        switch combinations and rho at the ablation partition
  accuracy.png, alpha.png, echo.png, ablation.png;  summary.json (everything above as data)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from fedlib import engine, plots
from fedlib.config import load_params
from fedlib.stages.ablation import ABLATION_SWITCHES
from fedlib.stages.common import column, fmt_or_dash, run_dir
from fedlib.stages.federated import family_summary
from fedlib.stages.fedwmsam_study import OUT, ablation_variants
from fedlib.stats import EQUIV, paired, verdict

def load(root: Path, methods, seeds) -> dict:
    """{method: {seed: (summary, rows)}} for the complete runs under root."""
    out = {}
    for m in methods:
        for s in seeds:
            d = run_dir(root, m, s)
            if (d / "summary.json").exists():
                out.setdefault(m, {})[s] = (engine.read_summary(d), engine._read_csv(d / "metrics.csv"))
    return out


def interval_text(q: dict, unit: str = ".4f") -> str:
    """'mean [lo, hi]' of a paired difference; the mean alone at n = 1, a dash at n = 0."""
    if q["n"] == 0:
        return "—"
    return f"{q['mean']:+{unit}}" + (f" [{q['lo']:+{unit}}, {q['hi']:+{unit}}]" if q["n"] > 1 else "")


def rounds_or_censored(summary: dict, target: float, rounds: int) -> int:
    r = summary["rounds_to_target"].get(f"{target:g}")
    return rounds + 1 if r is None else r


def report(params_path="params.yaml") -> dict:
    s = load_params(params_path).study_fedwmsam
    OUT.mkdir(parents=True, exist_ok=True)
    acc = lambda x: x["last10_accuracy"]
    data = {part: load(OUT / "main" / part, s.methods, s.seeds) for part in s.partitions}
    res = {"table1": {}, "table3": {}, "paired": {}, "diagnostics": {}, "verdicts": [], "wall": {}}
    t1 = ["| method | " + " | ".join(f"{p}: final | {p}: last-10" for p in s.partitions) + " |",
          "|---|" + "---|---|" * len(s.partitions)]
    for m in s.methods:
        cells = []
        for part in s.partitions:
            runs = data[part].get(m, {})
            f = [x[0]["final_accuracy"] for x in runs.values()]
            l10 = [x[0]["last10_accuracy"] for x in runs.values()]
            res["table1"].setdefault(m, {})[part] = {"n": len(f), "final": f, "last10": l10}
            cells += [f"{np.mean(f):.4f} ± {np.std(f):.4f} (n={len(f)})" if f else "—",
                      f"{np.mean(l10):.4f} ± {np.std(l10):.4f}" if f else "—"]
        t1.append(f"| {m} | " + " | ".join(cells) + " |")
    (OUT / "table1.md").write_text("Mean ± std over seeds; n = seeds complete.\n\n" + "\n".join(t1) + "\n")

    t3 = ["| method | " + " | ".join(f"{p} (to {t:g})" for p, t in zip(s.partitions, s.table3_targets)) + " |",
          "|---|" + "---|" * len(s.partitions)]
    for m in s.methods:
        cells = []
        for part, target in zip(s.partitions, s.table3_targets):
            rs = [x[0]["rounds_to_target"].get(f"{target:g}") for x in data[part].get(m, {}).values()]
            hit = [r for r in rs if r is not None]
            res["table3"].setdefault(m, {})[part] = rs
            cells.append("—" if not rs else (f"{np.mean(hit):.0f}" if len(hit) == len(rs) else
                                             (f"{np.mean(hit):.0f} ({len(hit)}/{len(rs)} reached)" if hit
                                              else f"not reached (0/{len(rs)})")))
        t3.append(f"| {m} | " + " | ".join(cells) + " |")
    (OUT / "table3.md").write_text(f"Rounds to the target accuracy, mean over the seeds that reached it, within "
                                   f"{s.rounds} rounds.\n\n" + "\n".join(t3) + "\n")

    lines = ["| partition | baseline | n | Δ last-10 acc (95 % CI) | Δ final acc (95 % CI) | verdict (last-10) |",
             "|---|---|---|---|---|---|"]
    for part in s.partitions:
        for b in s.methods:
            if b == "fedwmsam":
                continue
            q = paired(data[part], "fedwmsam", b, acc)
            f = paired(data[part], "fedwmsam", b, lambda x: x["final_accuracy"])
            q["verdict"] = verdict(q["lo"], q["hi"], q["n"])
            res["paired"].setdefault(part, {})[b] = {"last10": q, "final": f}
            lines.append(f"| {part} | {b} | {q['n']} | {interval_text(q)} | {interval_text(f)} | {q['verdict']} |")
    (OUT / "paired.md").write_text("FedWMSAM minus baseline, paired by seed (same initial model, client sampling and "
                                   "batches); 95 % t-interval over seeds.\n\n" + "\n".join(lines) + "\n")

    res["verdicts"] = claims(s, data, acc)
    (OUT / "verdicts.md").write_text("\n".join(f"- {c['claim']} [{c['partition']}]: **{c['verdict']}** — "
                                               f"{c['evidence']}" for c in res["verdicts"]) + "\n")
    (OUT / "claims.md").write_text(claims_grid(s, res["verdicts"]))
    diagnostics(s, data, res)
    res["ablation"] = ablation(s)
    for part in s.partitions:
        for m, runs in data[part].items():
            res["wall"].setdefault(part, {})[m] = {
                "runs": len(runs), "total_s": float(sum(x[0].get("total_seconds", 0) for x in runs.values())),
                "s_per_round": float(np.mean([x[0].get("seconds_per_round", np.nan) for x in runs.values()]))}
    res["wall_total_hours"] = sum(v["total_s"] for p in res["wall"].values() for v in p.values()) / 3600
    (OUT / "summary.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    return res


def claims(s, data: dict, acc) -> list[dict]:
    """The paper's claims (SPEC section 2), each judged per partition from the paired differences."""
    out = []
    for part, target in zip(s.partitions, s.table3_targets):
        runs = data[part]

        def add(key, claim, q, equivalence=False, unit=".4f", part=part):
            v = verdict(q["lo"], q["hi"], q["n"], equivalence)
            out.append({"key": key, "claim": claim, "partition": part, "verdict": v, **q,
                        "evidence": f"{interval_text(q, unit)}, n = {q['n']}"})
        for b in s.methods:
            if b != "fedwmsam" and b in runs:
                add(f"accuracy>{b}", f"FedWMSAM > {b} in last-10 accuracy", paired(runs, "fedwmsam", b, acc))
        rnd = lambda x, target=target: rounds_or_censored(x, target, s.rounds)
        for b in ("fedavg", "fedsam", "mofedsam"):
            if b in runs:
                add(f"rounds<{b}", f"FedWMSAM reaches {target:g} in fewer rounds than {b} (rounds saved)",
                    paired(runs, b, "fedwmsam", rnd), unit=".1f")
        if "scaffold" in runs:
            add("scaffold>fedavg", "SCAFFOLD > FedAvg in last-10 accuracy", paired(runs, "scaffold", "fedavg", acc))
        if "fedsam" in runs:
            add("fedavg~fedsam", f"FedAvg ≈ FedSAM (last-10 difference within ±{EQUIV:g})",
                paired(runs, "fedsam", "fedavg", acc), equivalence=True)
        if "fedwmsam" in runs:
            _, a = column([x[1] for x in runs["fedwmsam"].values()], "alpha")
            mean = np.nanmean(a, 0)
            lo_r = int(np.nanargmin(mean)) + 1
            early_down, late_up = lo_r < len(mean) // 2, mean[-1] > mean.min() + 1e-3
            v = "holds" if early_down and late_up else "does not hold"
            out.append({"key": "alpha", "claim": "early momentum, late SAM: alpha_r (the weight of the SAM gradient) is lowest in "
                                 "the first half of training and higher at the end", "partition": part,
                        "verdict": v + ("" if len(a) > 1 else " (n = 1)"), "n": len(a),
                        "evidence": f"alpha_0 = {mean[0]:.4f}, min {mean.min():.4f} at round {lo_r}, "
                                    f"final {mean[-1]:.4f}"})
    return out


# The paper's own figures for each claim (SPEC section 2: CIFAR-10, ResNet-18-GN, Dirichlet 0.1, 500 rounds)
PAPER = {"accuracy>fedavg": ("FedWMSAM > FedAvg, last-10 accuracy", "76.6 vs 70.1 (+6.5)"),
         "accuracy>fedsam": ("FedWMSAM > FedSAM", "76.6 vs 69.6 (+7.0)"),
         "accuracy>mofedsam": ("FedWMSAM > MoFedSAM", "76.6 vs 73.9 (+2.7)"),
         "accuracy>scaffold": ("FedWMSAM > SCAFFOLD", "76.6 vs 74.3 (+2.3)"),
         "accuracy>fedavgm": ("FedWMSAM > FedAvgM", "no figure given"),
         "accuracy>fedcm": ("FedWMSAM > FedCM (FedWMSAM with its switches off)", "no figure given"),
         "accuracy>fedgamma": ("FedWMSAM > FedGAMMA", "no figure given"),
         "accuracy>fedlesam": ("FedWMSAM > FedLESAM", "no figure given"),
         "accuracy>fedsmoo": ("FedWMSAM > FedSMOO", "no figure given"),
         "rounds<fedavg": ("FedWMSAM needs fewer rounds to the target than FedAvg (rounds saved)", "97 vs 254 to 70 %"),
         "rounds<fedsam": ("… than FedSAM", "97 vs 247"),
         "rounds<mofedsam": ("… than MoFedSAM", "97 vs 97 (equal)"),
         "scaffold>fedavg": ("SCAFFOLD > FedAvg", "74.3 vs 70.1 (+4.2)"),
         "fedavg~fedsam": (f"FedAvg ≈ FedSAM (within ±{EQUIV:g})", "70.1 vs 69.6"),
         "alpha": ("early momentum, late SAM (α_r low early, higher at the end)", "described, no figure")}


def claims_grid(s, verdicts: list[dict]) -> str:
    """Claim x partition: the verdict with its evidence (mean difference [95 % interval]) beside the paper's
    figure; 'not run yet' where a partition has no run of the methods involved."""
    cell = {(v["key"], v["partition"]): v for v in verdicts}
    rows = {**PAPER, **{v["key"]: (v["claim"], "—") for v in verdicts if v["key"] not in PAPER}}
    lines = ["| claim | paper (CIFAR-10) | " + " | ".join(s.partitions) + " |", "|---|---|" + "---|" * len(s.partitions)]
    for key, (claim, paper) in rows.items():
        cells = []
        for part in s.partitions:
            v = cell.get((key, part))
            cells.append("not run yet" if v is None or v["n"] == 0 else f"**{v['verdict'].split(' (')[0]}**: "
                         f"{v['evidence'].rsplit(', n =', 1)[0]} (n = {v['n']})")
        lines.append(f"| {claim} | {paper} | " + " | ".join(cells) + " |")
    return ("Verdicts of the long study (mean difference over seeds with its 95 % t-interval; accuracy as a fraction, "
            "rounds to the partition's Table-3 target) beside the paper's figures.\n\n" + "\n".join(lines) + "\n")


DRIFT_WINDOW = 50   # rounds; has a curve settled? (its mean over the last window against the window before)


def accuracy_drift(acc: np.ndarray, w: int = DRIFT_WINDOW) -> float | None:
    """Mean over seeds (rows) of  mean(acc over the last w rounds) - mean(acc over the w rounds before);  None
    with fewer than 2w evaluations. Near 0: the curve has settled; positive: still rising."""
    if acc.shape[1] < 2 * w:
        return None
    return float(np.nanmean(np.nanmean(acc[:, -w:], 1) - np.nanmean(acc[:, -2 * w:-w], 1)))


def rolling_mean(v: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over k rounds of each row, over the finite entries inside the window (so the ends and the
    missing first round are not pulled toward 0)."""
    ok = np.isfinite(v)
    win = np.ones(min(k, v.shape[1]))
    num = np.array([np.convolve(np.where(o, r, 0.0), win, mode="same") for r, o in zip(v, ok)])
    den = np.array([np.convolve(o.astype(float), win, mode="same") for o in ok])
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def diagnostics(s, data: dict, res: dict) -> None:
    w = DRIFT_WINDOW
    lines = [("| partition | method | curvature cos | sign-flip share, 2nd half | test-loss swing, last 10 | "
              f"final alpha | accuracy drift, last {w} − previous {w} rounds |"), "|---|---|---|---|---|---|---|"]
    fig, axes = plots.plt.subplots(3, len(s.partitions), figsize=(6.5 * len(s.partitions), 12), squeeze=False)
    for j, part in enumerate(s.partitions):
        acc, alpha, echo = {}, {}, {}
        for m, runs in data[part].items():
            summ, rows = [x[0] for x in runs.values()], [x[1] for x in runs.values()]
            d = family_summary(summ, rows)
            x, acc[m] = column(rows, "test_accuracy")
            d["accuracy_drift"] = accuracy_drift(acc[m], w)
            res["diagnostics"].setdefault(part, {})[m] = d
            lines.append(f"| {part} | {m} | {fmt_or_dash(d['curvature_cos'], '.3f')} | "
                         f"{fmt_or_dash(d['sign_flip_share'], '.2f')} | {d['test_loss_swing']:.4f} | "
                         f"{fmt_or_dash(d['final_alpha'], '.4f')} | {fmt_or_dash(d['accuracy_drift'], '+.4f')} |")
            _, e = column(rows, "update_cos_prev")
            echo[m] = rolling_mean(e, 10)
            if m == "fedwmsam":
                alpha[m] = column(rows, "alpha")[1]
        if acc:
            n = max(len(v) for v in acc.values())
            plots.curves(acc, x, "test accuracy", ax=axes[0, j], title=f"{part} (band: min..max, {n} seeds)")
            axes[0, j].set_ylim(max(0.0, min(np.nanmin(np.nanmean(v, 0)[len(x) // 10:]) for v in acc.values()) - 0.05),
                                1.0)
            with warnings.catch_warnings():       # rounds with no echo in any seed (round 1) are left as gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                plots.curves(echo, x, "cos(Δ̄_r, Δ̄_{r-1}), 10-round mean", ax=axes[1, j], title="momentum echo")
            if alpha:
                plots.curves(alpha, x, "alpha_r", ax=axes[2, j], title="FedWMSAM alpha_r")
            else:
                axes[2, j].set_axis_off()
        else:
            for ax in axes[:, j]:
                ax.set_axis_off()
            axes[0, j].set_title(f"{part}: no run complete yet")
    fig.tight_layout()
    fig.savefig(OUT / "curves.png", dpi=110, bbox_inches="tight")
    (OUT / "diagnostics.md").write_text("\n".join(lines) + "\n")


def ablation(s) -> dict:
    variants = ablation_variants(s)
    table, curves = {}, {}
    for name, hp in variants.items():
        runs = load(OUT / "ablation" / name, ["fedwmsam"], s.ablation_seeds).get("fedwmsam", {})
        if not runs:
            continue
        summ, rows = [x[0] for x in runs.values()], [x[1] for x in runs.values()]
        l10 = [x["last10_accuracy"] for x in summ]
        table[name] = {**hp, "n": len(l10), "last10_std": float(np.std(l10)), **family_summary(summ, rows)}
        curves[name] = column(rows, "test_accuracy")
    lines = ["| variant | " + " | ".join(ABLATION_SWITCHES.values()) + " | rho | n | final acc | last-10 acc ± std | "
             "sign flips | loss swing | curv. cos |", "|---|" + "---|" * (len(ABLATION_SWITCHES) + 7)]
    for name, t in table.items():
        lines.append(f"| {name} | " + " | ".join("✓" if t[k] else "" for k in ABLATION_SWITCHES) +
                     f" | {t['rho']:g} | {t['n']} | {t['final_accuracy']:.4f} | {t['last10_accuracy']:.4f} ± "
                     f"{t['last10_std']:.4f} | {fmt_or_dash(t['sign_flip_share'], '.2f')} | "
                     f"{t['test_loss_swing']:.4f} | {fmt_or_dash(t['curvature_cos'], '.3f')} |")
    (OUT / "ablation.md").write_text(f"FedWMSAM at {s.ablation_partition}; PM personalised momentum, MP "
                                     f"momentum-guided perturbation, AA adaptive alpha; 'none' is FedCM.\n\n"
                                     + "\n".join(lines) + "\n")
    if curves:
        x = next(iter(curves.values()))[0]
        plots.curves({n: c[1] for n, c in curves.items()}, x, "test accuracy", OUT / "ablation.png",
                     title=f"FedWMSAM ablation at {s.ablation_partition}")
    return table


if __name__ == "__main__":
    import sys

    report(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
