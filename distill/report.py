"""Summary tables printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _status(row: dict) -> str:
    if row.get("reused"):
        return "reused"
    if row.get("resumed_from_epoch"):
        return f"resumed at {row['resumed_from_epoch']}"
    return "trained"


def print_ensemble_summary(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="ensemble stage: test set")
    for column in ("model", "test acc", "errors", "val acc", "epochs", "status"):
        table.add_column(column, justify="left" if column in ("model", "status") else "right")
    rows = list(results["ensemble"]["members"])
    if "generalist" in results:
        rows.append(results["generalist"])
    for row in rows:
        table.add_row(
            row["name"], f"{row['test_accuracy']:.4f}", str(row["test_errors"]), f"{row['val_accuracy']:.4f}",
            str(row["epochs_trained"]), _status(row),
        )
    ens = results["ensemble"]
    for mean in ("arithmetic", "geometric"):
        table.add_row(f"ensemble ({mean} mean)", f"{ens[f'test_accuracy_{mean}']:.4f}",
                      str(ens[f"test_errors_{mean}"]), "", "", "")
    console.print(table)
    mlflow = results.get("mlflow", {})
    if mlflow:
        console.print(f"MLflow: {mlflow['tracking_uri']}  parent run {mlflow['parent_run_id']}")
