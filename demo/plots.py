"""The figures a user looks at, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def gallery(
    images: list[str],
    captions: list[str],
    titles: list[str],
    path: Path,
    columns: int = 4,
    suptitle: str = "",
) -> Path:
    """A grid of galaxy images, each with a title and a few caption lines underneath."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption, title in zip(axes.ravel(), images, captions, titles, strict=False):
        ax.imshow(np.asarray(Image.open(image).convert("RGB")))
        ax.set_title(title, fontsize=8)
        ax.text(
            0.0, -0.02, caption, transform=ax.transAxes, va="top", ha="left",
            fontsize=7, family="monospace",
        )  # fmt: skip
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def predicted_vs_volunteers(
    observed: np.ndarray,
    predicted: np.ndarray,
    weights: np.ndarray,
    names: list[str],
    path: Path,
    min_votes: int = 5,
) -> Path:
    """One panel per answer column: predicted vs observed vote fraction (galaxies with votes)."""
    n = len(names)
    columns = 6
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for i, (ax, name) in enumerate(zip(axes.ravel(), names, strict=False)):
        keep = weights[:, i] >= min_votes
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        ax.scatter(observed[keep, i], predicted[keep, i], s=3, alpha=0.5, color="C0")
        mae = np.mean(np.abs(observed[keep, i] - predicted[keep, i])) if keep.any() else np.nan
        ax.set_title("\n".join(textwrap.wrap(name, 24)), fontsize=7)
        ax.text(0.03, 0.9, f"MAE {mae:.3f}\nn={keep.sum()}", fontsize=6, transform=ax.transAxes)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    fig.supxlabel(f"volunteer vote fraction (galaxies with >= {min_votes} votes)", fontsize=9)
    fig.supylabel("predicted vote fraction", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def calibration(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Coverage of the central credible intervals vs their nominal level, per question and mean."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="perfectly calibrated")
    for question, rows in table.groupby("question", sort=False):
        ax.plot(rows["level"], rows["coverage"], lw=0.8, alpha=0.6, marker=".", label=question)
    weighted = table.assign(w=table["coverage"] * table["n"]).groupby("level")
    mean = weighted["w"].sum() / weighted["n"].sum()
    ax.plot(mean.index, mean.values, color="k", lw=2.2, marker="o", label="all questions")
    ax.set_xlabel("nominal level of the credible interval")
    ax.set_ylabel("fraction of observed votes inside it")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path)


def training_curves(curves: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Loss per epoch of each run: {label: DataFrame(epoch, train, validation)}."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        if "train" in curve and curve["train"].notna().any():
            ax.plot(curve["epoch"], curve["train"], color=color, ls="--", lw=1, alpha=0.7)
        if "validation" in curve and curve["validation"].notna().any():
            ax.plot(curve["epoch"], curve["validation"], color=color, lw=1.6, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (solid: validation, dashed: training)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def finetune_comparison(runs: pd.DataFrame, path: Path, feature: str, note: str = "") -> Path:
    """Test ROC AUC and balanced accuracy, pretrained vs scratch, per framework: bars are means over
    seeds, dots the seeds, grey lines join the two starts of the same seed (same labels). The
    y-axes start at 0; the dotted line at 0.5 is what a constant answer scores. `note` goes under
    the title (e.g. the paired difference)."""
    metrics = {"roc_auc": "ROC AUC", "balanced_accuracy": "balanced accuracy"}
    frameworks = list(runs["framework"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4.2))
    for ax, metric in zip(axes, metrics, strict=True):
        ticks = []
        for f, framework in enumerate(frameworks):
            group = runs[runs["framework"] == framework]
            wide = group.pivot(index="seed", columns="start", values=metric)
            for k, start in enumerate(("pretrained", "scratch")):
                if start not in wide:
                    continue
                x = 2.5 * f + k
                ax.bar(x, wide[start].mean(), color="C2" if k == 0 else "C7", alpha=0.8)
                ax.scatter(np.full(len(wide), x), wide[start], color="k", s=10, zorder=3)
                n = int(wide[start].notna().sum())
                ticks.append((x, f"{framework}\n{start}\n({n} seed{'s' if n > 1 else ''})"))
            if {"pretrained", "scratch"} <= set(wide):
                x0 = 2.5 * f
                for _, row in wide.iterrows():
                    ax.plot([x0, x0 + 1], [row["pretrained"], row["scratch"]], color="0.4", lw=0.7)
        ax.set_xticks([t[0] for t in ticks])
        ax.set_xticklabels([t[1] for t in ticks], fontsize=8)
        ax.axhline(0.5, color="0.3", lw=0.8, ls=":")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{metrics[metric]} (0.5: a constant answer)", fontsize=10)
    title = f"'{feature}' classifier on held-out galaxies: pretrained encoder vs scratch"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def feature_agreement(torch_features: np.ndarray, tf_features: np.ndarray, path: Path) -> Path:
    """Scatter of the same features computed by zoobot.torch and zoobot.tf, and their differences."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].scatter(torch_features.ravel(), tf_features.ravel(), s=2, alpha=0.4)
    lo, hi = float(torch_features.min()), float(torch_features.max())
    axes[0].plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
    axes[0].set_xlabel("feature (zoobot.torch)")
    axes[0].set_ylabel("feature (zoobot.tf)")
    diff = (tf_features - torch_features).ravel()
    axes[1].hist(diff, bins=60, color="C1")
    axes[1].set_xlabel("zoobot.tf - zoobot.torch")
    axes[1].set_title(f"max |diff| {np.abs(diff).max():.2e}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
