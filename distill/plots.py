"""Figures for the report and MLflow: training curves, accuracy per model, reliability diagrams.

Figures are built with matplotlib's object API (:class:`matplotlib.figure.Figure`), not pyplot: no backend is
selected or switched and no figure is registered with pyplot, so a caller's matplotlib setup (a notebook's inline
backend, say) is left alone. ``fig.savefig`` and MLflow's ``log_figure`` render them without a GUI.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def training_curves(histories: dict[str, list[dict]]) -> Figure:
    """Validation accuracy and training loss per epoch, one line per trained model."""
    fig = Figure(figsize=(12, 4.5))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        acc_ax.plot(epochs, [r["val_accuracy"] for r in history], marker=".", label=name)
        loss_ax.plot(epochs, [r["train_loss"] for r in history], marker=".", label=name)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss (sum of terms)", title="training loss", yscale="log")
    acc_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def accuracy_per_model(rows: list[dict]) -> Figure:
    """Horizontal bars of test accuracy, with the error count written on each bar."""
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    names = [r["model"] for r in rows]
    accuracies = [r["test_accuracy"] for r in rows]
    bars = ax.barh(names, accuracies, color="tab:blue")
    low = min(accuracies)
    ax.set_xlim(max(0.0, low - (1 - low) * 1.5 - 0.01), 1.0)
    for bar, row in zip(bars, rows):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {row['test_errors']} errors",
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy", title="test accuracy per model")
    fig.tight_layout()
    return fig


def plot_reliability(curves: dict[str, list[dict]], title: str) -> Figure:
    """Reliability diagram: per confidence bin (:func:`ensemble.metrics.calibration.reliability_bins`), accuracy against
    mean confidence, one line per model; the diagonal is perfect calibration. Right: how many examples per bin."""
    fig = Figure(figsize=(11, 4.5))
    acc_ax, count_ax = fig.subplots(1, 2)
    acc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, bins in curves.items():
        acc_ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
        count_ax.plot([(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] for b in bins], marker=".",
                      label=name)
    acc_ax.set(xlabel="mean confidence in the bin", ylabel="accuracy in the bin", title=title, xlim=(0, 1),
               ylim=(0, 1))
    count_ax.set(xlabel="confidence", ylabel="examples", yscale="log", title="examples per bin")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
