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


def partition_heatmap(counts: np.ndarray, path=None, title="samples per client and class"):
    """Clients (x) by classes (y), colour = sample count."""
    fig, ax = plt.subplots(figsize=(min(14, 2 + counts.shape[0] * 0.12), 3.2))
    im = ax.imshow(counts.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="samples")
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
