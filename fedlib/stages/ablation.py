"""The FedWMSAM ablation stage: the 8 switch combinations and the rho sensitivity, short runs."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from fedlib import engine, plots
from fedlib.config import load_params
from fedlib.stages.common import column, fmt_or_dash, load_federation
from fedlib.stages.federated import family_summary

ABLATION_SWITCHES = {"personalised_momentum": "PM", "momentum_perturbation": "MP", "adaptive_alpha": "AA"}


def ablation_variants(rho: float, rhos) -> dict[str, dict]:
    """name -> methods.fedwmsam overrides: the 8 combinations of the three switches at ``rho`` ("none" is FedCM),
    then every other rho of ``rhos`` with all switches on."""
    variants = {}
    for bits in itertools.product((False, True), repeat=len(ABLATION_SWITCHES)):
        name = "+".join(short for short, on in zip(ABLATION_SWITCHES.values(), bits) if on) or "none"
        variants[name] = {**dict(zip(ABLATION_SWITCHES, bits)), "rho": rho}
    for r in rhos:
        if r != rho:
            variants[f"rho={r:g}"] = {**dict.fromkeys(ABLATION_SWITCHES, True), "rho": r}
    return variants


def ablation_stage(params_path: str | Path, partition_path: str | Path, out_dir: str | Path,
                   runs_dir: str | Path, progress: bool = True) -> dict:
    """One short FedWMSAM run per variant and seed (ablation.rounds, ablation.seeds; all else from params),
    through engine.train; writes summary.json, table.md and accuracy.png to ``out_dir``. Per-run metrics and
    checkpoints stay in ``runs_dir`` (scratch, resumable)."""
    p = load_params(params_path)
    a = p.ablation
    fed = load_federation(p, partition_path)
    base = {"train.rounds": a.rounds, "train.snapshot_rounds": []}
    table, curves = {}, {}
    for name, hp in ablation_variants(p.methods.fedwmsam.rho, p.ablation.rhos).items():
        q = load_params(params_path, {**base, **{f"methods.fedwmsam.{k}": v for k, v in hp.items()}})
        runs, rows = [], []
        for seed in a.seeds:
            run_dir = Path(runs_dir) / f"{name}-{seed}"
            runs.append(engine.train(q, "fedwmsam", seed, run_dir, fed=fed, ckpt_dir=run_dir, progress=progress))
            rows.append(engine._read_csv(run_dir / "metrics.csv"))
        table[name] = {**hp, **family_summary(runs, rows)}
        curves[name] = column(rows, "test_accuracy")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / "table.md").write_text(ablation_markdown(table, p.methods.fedwmsam.rho))
    fig, axes = plots.plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, names, title in ((axes[0], [n for n in table if not n.startswith("rho=")], "switches"),
                             (axes[1], sorted((n for n, t in table.items() if all(t[k] for k in ABLATION_SWITCHES)),
                                              key=lambda n: table[n]["rho"]), "rho, all switches on")):
        x = curves[names[0]][0]
        label = {n: (f"rho={table[n]['rho']:g}" if ax is axes[1] else n) for n in names}
        plots.curves({label[n]: curves[n][1] for n in names}, x, "test accuracy", ax=ax,
                     title=f"FedWMSAM ablation: {title}")
    fig.savefig(out_dir / "accuracy.png", dpi=120, bbox_inches="tight")
    return table


def ablation_markdown(table: dict, rho: float) -> str:
    targets = list(next(iter(table.values()))["rounds_to_target"])
    head = ["variant", *ABLATION_SWITCHES.values(), "rho", "final acc", "last-10 acc",
            *[f"rounds to {t}" for t in targets], "sign flips", "loss swing", "curv. cos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in table.items():
        lines.append("| " + " | ".join([
            name, *["✓" if t[k] else "" for k in ABLATION_SWITCHES], f"{t['rho']:g}",
            f"{t['final_accuracy']:.4f}", f"{t['last10_accuracy']:.4f}",
            *[fmt_or_dash(t["rounds_to_target"][a], ".0f") for a in targets],
            fmt_or_dash(t["sign_flip_share"], ".2f"), f"{t['test_loss_swing']:.4f}",
            fmt_or_dash(t["curvature_cos"], ".3f")]) + " |")
    return (f"PM personalised momentum, MP momentum-guided perturbation, AA adaptive alpha; \"none\" is FedCM "
            f"(alpha = alpha_0). Switch rows at rho = {rho:g}.\n\n" + "\n".join(lines) + "\n")
