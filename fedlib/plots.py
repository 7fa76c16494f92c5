"""Figure helpers shared by the notebooks. Each returns the figure and saves it when given a path."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def partition_heatmap(counts: np.ndarray, path=None, title="class mix per client"):
    """Top: samples per client. Bottom: each client's class fractions (clients (x) by classes (y))."""
    sizes = counts.sum(1)
    fig, (top, ax) = plt.subplots(2, 1, figsize=(min(14, 3 + counts.shape[0] * 0.1), 4.4), sharex=True,
                                  gridspec_kw={"height_ratios": [1, 2.6]})
    top.bar(np.arange(len(sizes)), sizes, width=1.0, color="0.45")
    top.set_ylabel("samples")
    top.set_title(title)
    im = ax.imshow((counts / np.maximum(sizes, 1)[:, None]).T, aspect="auto", cmap="magma_r",
                   interpolation="nearest", vmin=0, vmax=1)
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    fig.colorbar(im, ax=[top, ax], label="fraction of the client's samples", pad=0.01)
    return _save(fig, path)


def curves(series: dict[str, np.ndarray], x: np.ndarray, ylabel: str, path=None, title=None,
           xlabel="round", ax=None):
    """One line per key; ``series[key]`` is (seeds, points): mean line with a min..max band."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ys in series.items():
        ys = np.atleast_2d(ys)
        mean = np.nanmean(ys, 0)
        line, = ax.plot(x, mean, label=name, lw=1.5)
        if ys.shape[0] > 1:
            ax.fill_between(x, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig or ax.figure, path)
