"""Figures: accuracy curves, int8 weight distributions (the paper's Figure 3), Table 1 as PNG.

matplotlib with the Agg backend: files only, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from chiploop.spec import NetworkSpec  # noqa: E402


def _save_epoch_axes(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """Label an accuracy-per-epoch axes, save the figure and free it."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Train accuracy and validation accuracy in software and on the chip, per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] + 1 for h in history]
    for key, label, style in (
        ("train_acc", "train (as trained)", ":"),
        ("val_software", "validation, software", "-"),
        ("val_sync_int", "validation, sync int SNN", "--"),
        ("val_chip", "validation, chip", "-"),
    ):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [np.nan if v is None else 100 * v for v in values], style, marker="o", label=label)
    return _save_epoch_axes(fig, ax, "accuracy (%)", title, path)


def weight_distributions(spec: NetworkSpec, path: Path, title: str = "") -> Path:
    """Histogram of every layer's int8 weights (as deployed)."""
    n = len(spec.layers)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6), sharey=False)
    axes = np.atleast_1d(axes)
    bins = np.arange(-128.5, 128.5, 4)
    for i, (ax, layer) in enumerate(zip(axes, spec.layers, strict=True)):
        w = np.asarray(layer.weights).ravel()
        ax.hist(w, bins=bins, color="C0")
        ax.set_title(f"layer {i}  thr {layer.threshold_high}", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.suptitle(title or "int8 weight distributions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_curves(histories: dict[str, list[dict]], path: Path, key: str = "val_chip", title: str = "") -> Path:
    """One accuracy curve per method (default: validation accuracy on the chip)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        values = [h.get(key) for h in history]
        ax.plot([h["epoch"] + 1 for h in history], [np.nan if v is None else 100 * v for v in values], marker="o", label=name)
    return _save_epoch_axes(fig, ax, f"{key} accuracy (%)", title, path)


def table_png(header: list[str], rows: list[list[str]], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(1.7 * len(header), 0.45 * (len(rows) + 2)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def weights_by_method(specs: dict[str, NetworkSpec], path: Path) -> Path:
    """Per layer, the int8 weight distribution of every method's chip network (density)."""
    names = list(specs)
    n_layers = max(len(s.layers) for s in specs.values())
    fig, axes = plt.subplots(1, n_layers, figsize=(2.8 * n_layers, 2.8))
    axes = np.atleast_1d(axes)
    bins = np.arange(-128.5, 128.5, 4)
    for i, ax in enumerate(axes):
        for k, name in enumerate(names):
            layers = specs[name].layers
            if i < len(layers):
                ax.hist(np.asarray(layers[i].weights).ravel(), bins=bins, density=True, histtype="step",
                        color=f"C{k}", label=name)
        ax.set_title(f"layer {i}", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("int8 weight distributions on the chip, per method", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
