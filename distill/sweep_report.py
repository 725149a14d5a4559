"""The sweep's table and plots: test accuracy over the grid as a heatmap and as the surface the sources draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .report import wide_console


def sweep_rows(grid, keys: list[str]) -> list[dict]:
    """One row per trial from a Tune ``ResultGrid``, ordered by the grid values."""
    rows = []
    for result in grid:
        params = {key: result.config[key] for key in keys}
        metrics = result.metrics
        rows.append({**params, "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
                     "test_errors": metrics["test_errors"], "best_epoch": metrics["best_epoch"],
                     "reused": bool(metrics["reused"]), "mlflow_run_id": metrics["mlflow_run_id"]})
    return sorted(rows, key=lambda r: [str(r[k]) if not isinstance(r[k], (int, float)) else r[k] for k in keys])


def print_sweep(rows: list[dict], keys: list[str], console: Console | None = None) -> None:
    console = console or wide_console()
    best = max(rows, key=lambda r: r["val_accuracy"])
    table = Table(title=f"sweep: {len(rows)} trials (best on validation marked *)")
    for column in [*(k.removeprefix("student.") for k in keys), "val acc", "test acc", "test errors", "best epoch"]:
        table.add_column(column, justify="right")
    for row in rows:
        mark = " *" if row is best else ""
        table.add_row(*[str(row[k]) for k in keys], f"{row['val_accuracy']:.4f}{mark}",
                      f"{row['test_accuracy']:.4f}", str(row["test_errors"]), str(row["best_epoch"]))
    console.print(table)


def plot_sweep(rows: list[dict], keys: list[str], folder: Path) -> list[Path]:
    """Heatmap + 3D surface over the first two keys (the best over any further keys); a line for one key.

    Drawn on :class:`matplotlib.figure.Figure` objects, not pyplot: the caller's backend and figures are untouched.
    """
    from matplotlib.figure import Figure

    if len(keys) == 1:
        key = keys[0]
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        ax.plot([str(r[key]) for r in rows], [100 * r["test_accuracy"] for r in rows], marker="o")
        ax.set(xlabel=key, ylabel="test accuracy (%)", title="sweep")
        ax.grid(alpha=0.3)
        return [_save(fig, folder / "sweep_line.png")]

    x_key, y_key = keys[:2]
    xs = sorted({r[x_key] for r in rows}, key=_order)
    ys = sorted({r[y_key] for r in rows}, key=_order)
    acc = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        i, j = ys.index(r[y_key]), xs.index(r[x_key])
        acc[i, j] = np.fmax(acc[i, j], 100 * r["test_accuracy"])

    fig = Figure(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 2))
    ax = fig.subplots()
    image = ax.imshow(acc, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set(xlabel=x_key, ylabel=y_key, title="test accuracy (%)")
    fig.colorbar(image, ax=ax)
    paths = [_save(fig, folder / "sweep_heatmap.png")]

    if len(xs) > 1 and len(ys) > 1 and all(isinstance(v, (int, float)) for v in [*xs, *ys]):
        grid_x, grid_y = np.meshgrid(np.log10(xs) if min(xs) > 0 else xs, ys)
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(grid_x, grid_y, acc, cmap="viridis", edgecolor="k", linewidth=0.3)
        ax.set(xlabel=f"log10 {x_key}" if min(xs) > 0 else x_key, ylabel=y_key, zlabel="test accuracy (%)")
        paths.append(_save(fig, folder / "sweep_surface.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _order(value):
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
