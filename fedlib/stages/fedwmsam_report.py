"""Report of the long FedWMSAM study (fedlib/stages/fedwmsam_study.py): works on the runs complete so far.

Writes to results/studies/fedwmsam/:
  table1.md          final and last-10 accuracy, mean ± std over seeds, per method x partition (Table-1 analogue)
  table3.md          rounds to the chosen target per partition, mean over seeds (Table-3 analogue)
  paired.md          FedWMSAM - baseline per partition over common seeds: mean difference and 95 % t-interval
  verdicts.md        one line per claim of the paper: holds / does not hold / cannot tell
  claims.md          the same verdicts as a grid, claim x partition, beside the paper's own figures (README headline)
  diagnostics.md     the family's failure-mode diagnostics over the long run (federated.family_summary)
  ablation.md        switch combinations and rho at the ablation partition, each switch's paired effect, and
                     rho = methods.fedwmsam.rho against each other radius (paired by seed)
  curves.png         accuracy, momentum echo and alpha_r per round (band: min..max over seeds), per partition
  ablation.png;  summary.json (everything above as data)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from fedlib import engine, plots
from fedlib.config import load_params
from fedlib.stages.ablation import ABLATION_SWITCHES, ablation_variants
from fedlib.stages.common import column, fmt_or_dash, run_dir
from fedlib.stages.federated import family_summary
from fedlib.stages.fedwmsam_study import OUT
from fedlib.stages.fedwmsam_claims import claims, claims_grid
from fedlib.stats import interval, interval_text, paired, verdict


def load(root: Path, methods, seeds) -> dict:
    """{method: {seed: (summary, rows)}} for the complete runs under root."""
    out = {}
    for m in methods:
        for s in seeds:
            d = run_dir(root, m, s)
            if (d / "summary.json").exists():
                out.setdefault(m, {})[s] = (engine.read_summary(d), engine._read_csv(d / "metrics.csv"))
    return out


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
            cells += [f"{mean_sd(f)} (n={len(f)})" if f else "—", mean_sd(l10) if f else "—"]
        t1.append(f"| {m} | " + " | ".join(cells) + " |")
    (OUT / "table1.md").write_text("Mean ± sample std over seeds (the value alone at n = 1); n = seeds complete.\n\n"
                                   + "\n".join(t1) + "\n")

    t3 = ["| method | " + " | ".join(f"{p} (to {t:g})" for p, t in zip(s.partitions, s.table3_targets)) + " |",
          "|---|" + "---|" * len(s.partitions)]
    for m in s.methods:
        cells = []
        for part, target in zip(s.partitions, s.table3_targets):
            rs = [x[0]["rounds_to_target"].get(f"{target:g}") for x in data[part].get(m, {}).values()]
            hit = [r for r in rs if r is not None]
            res["table3"].setdefault(m, {})[part] = rs
            spread = f" ({min(hit)}–{max(hit)})" if len(hit) > 1 else ""
            cells.append("—" if not rs else (f"{np.mean(hit):.0f}{spread}" if len(hit) == len(rs) else
                                             (f"{np.mean(hit):.0f} ({len(hit)}/{len(rs)} reached)" if hit
                                              else f"not reached (0/{len(rs)})")))
        t3.append(f"| {m} | " + " | ".join(cells) + " |")
    (OUT / "table3.md").write_text(f"Rounds to the target accuracy, mean (min–max) over the seeds that reached it "
                                   f"within {s.rounds} rounds.\n\n" + "\n".join(t3) + "\n")

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
                                   "batches); 95 % t-interval over seeds, not adjusted for the nine comparisons. The "
                                   "verdict is on last-10 accuracy (the primary metric, less noisy than one round); "
                                   "final-round accuracy is shown for reference.\n\n" + "\n".join(lines) + "\n")

    res["verdicts"] = claims(s, data, acc)
    (OUT / "verdicts.md").write_text("\n".join(f"- {c['claim']} [{c['partition']}]: **{c['verdict']}** — "
                                               f"{c['evidence']}" for c in res["verdicts"]) + "\n")
    (OUT / "claims.md").write_text(claims_grid(s, res["verdicts"]))
    diagnostics(s, data, res)
    res["ablation"], res["ablation_effects"] = ablation(s)
    for part in s.partitions:
        for m, runs in data[part].items():
            res["wall"].setdefault(part, {})[m] = {
                "runs": len(runs), "total_s": float(sum(x[0].get("total_seconds", 0) for x in runs.values())),
                "s_per_round": float(np.mean([x[0].get("seconds_per_round", np.nan) for x in runs.values()]))}
    res["wall"]["ablation"] = {n: {"runs": v["n"], "total_s": v["total_s"]} for n, v in res["ablation"].items()}
    res["wall_total_hours"] = sum(v["total_s"] for p in res["wall"].values() for v in p.values()) / 3600
    (OUT / "summary.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    return res


def mean_sd(v: list[float]) -> str:
    """'mean ± sample std' over seeds; the value alone for one seed."""
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


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
            plots.curves(acc, x, "test accuracy", ax=axes[0, j], title=f"{part} (band: min..max, {n} seed{'s' * (n != 1)})")
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


def ablation(s) -> tuple[dict, dict]:
    variants = ablation_variants(s.rho, s.ablation_rhos)
    table, curves = {}, {}
    for name, hp in variants.items():
        runs = load(OUT / "ablation" / name, ["fedwmsam"], s.ablation_seeds).get("fedwmsam", {})
        if not runs:
            continue
        summ, rows = [x[0] for x in runs.values()], [x[1] for x in runs.values()]
        table[name] = {**hp, "n": len(summ), **family_summary(summ, rows),
                       "total_s": float(sum(x.get("total_seconds", 0) for x in summ)),
                       "last10_by_seed": {seed: x[0]["last10_accuracy"] for seed, x in runs.items()}}
        curves[name] = column(rows, "test_accuracy")
    lines = ["| variant | " + " | ".join(ABLATION_SWITCHES.values()) + " | rho | n | final acc | last-10 acc ± std | "
             "sign flips | loss swing | curv. cos |", "|---|" + "---|" * (len(ABLATION_SWITCHES) + 7)]
    for name, t in table.items():
        lines.append(f"| {name} | " + " | ".join("✓" if t[k] else "" for k in ABLATION_SWITCHES) +
                     f" | {t['rho']:g} | {t['n']} | {t['final_accuracy']:.4f} | {mean_sd(list(t['last10_by_seed'].values()))} | "
                     f"{fmt_or_dash(t['sign_flip_share'], '.2f')} | "
                     f"{t['test_loss_swing']:.4f} | {fmt_or_dash(t['curvature_cos'], '.3f')} |")
    last10 = {n: t["last10_by_seed"] for n, t in table.items()}
    effects, radii = switch_effects(last10, variants, s.rho), rho_effects(last10, variants, s.rho)
    rows = lambda es: [f"| {k} | {e['n']} | {interval_text(e)} | {e['verdict']} |" for k, e in es.items()]
    lines += ["", "Effect of each switch on last-10 accuracy (on − off, averaged over the 4 pairs of combinations that "
              "differ only in it, then over the seeds where all 8 are complete; 95 % t-interval; holds = it helps):",
              "", "| switch | n | effect | verdict |", "|---|---|---|---|"]
    lines += rows(effects)
    lines += ["", f"The perturbation radius: last-10 accuracy of all three switches at rho = {s.rho:g} minus the same "
              f"variant at another rho, paired by seed (95 % t-interval; holds = {s.rho:g} is better; the released "
              f"code's default is 0.1):", "", "| comparison | n | difference | verdict |", "|---|---|---|---|"]
    lines += rows(radii)
    effects = {**effects, **radii}
    (OUT / "ablation.md").write_text(f"FedWMSAM at {s.ablation_partition}; PM personalised momentum, MP "
                                     f"momentum-guided perturbation, AA adaptive alpha; 'none' is FedCM.\n\n"
                                     + "\n".join(lines) + "\n")
    if curves:
        x = next(iter(curves.values()))[0]
        plots.curves({n: c[1] for n, c in curves.items()}, x, "test accuracy", OUT / "ablation.png",
                     title=f"FedWMSAM ablation at {s.ablation_partition}")
    return table, effects


def switch_effects(last10: dict[str, dict], variants: dict[str, dict], rho: float) -> dict[str, dict]:
    """{switch short name, and 'all three' (PM+MP+AA − none): paired effect}. Per seed, a switch's effect is the mean
    of (on − off) last-10 accuracy over the pairs of switch combinations at ``rho`` that differ only in it; then
    mean and 95 % t-interval over the seeds that every combination has."""
    combo = {tuple(hp[k] for k in ABLATION_SWITCHES): n for n, hp in variants.items() if hp["rho"] == rho}
    have = [set(last10.get(n, {})) for n in combo.values()]
    seeds = sorted(set.intersection(*have)) if have else []
    pairs = {short: [(combo[b], combo[b[:i] + (False,) + b[i + 1:]]) for b in combo if b[i]]
             for i, short in enumerate(ABLATION_SWITCHES.values())}
    pairs["all three"] = [(combo[(True,) * len(ABLATION_SWITCHES)], combo[(False,) * len(ABLATION_SWITCHES)])]
    out = {}
    for k, ps in pairs.items():
        mean, lo, hi = interval([np.mean([last10[on][sd] - last10[off][sd] for on, off in ps]) for sd in seeds])
        out[k] = {"n": len(seeds), "mean": mean, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, len(seeds))}
    return out


def rho_effects(last10: dict[str, dict], variants: dict[str, dict], rho: float) -> dict[str, dict]:
    """{"rho a vs b": paired effect}: last-10 accuracy of the all-switches variant at ``rho`` minus that at each
    other rho of the sweep, over the seeds both have; mean and 95 % t-interval (holds = ``rho`` is better)."""
    full = {hp["rho"]: n for n, hp in variants.items() if all(hp[k] for k in ABLATION_SWITCHES)}
    runs = {n: {sd: (v,) for sd, v in by_seed.items()} for n, by_seed in last10.items()}   # stats.paired's shape
    out = {}
    for r, name in sorted(full.items()):
        if r != rho:
            q = paired(runs, full[rho], name, lambda v: v)
            out[f"rho {rho:g} vs {r:g}"] = {**q, "verdict": verdict(q["lo"], q["hi"], q["n"])}
    return out


if __name__ == "__main__":
    import sys

    report(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
