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


def print_specialists_summary(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    spec = results["specialists"]
    groups = Table(title="specialists: groups of confusable classes")
    for column in ("specialist", "classes", "test acc (group + dustbin)", "status"):
        groups.add_column(column)
    for row in spec["members"]:
        names = spec["group_names"][spec["groups"].index(row["group"])]
        groups.add_row(row["name"], ", ".join(names), f"{row['test_accuracy']:.4f}", _status(row))
    console.print(groups)
    table = Table(title="generalist vs generalist + specialists (Eq. 5), test set")
    for column in ("specialists covering the correct class", "examples", "generalist correct", "combined correct",
                   "change", "relative"):
        table.add_column(column, justify="right")
    for row in spec["by_covering"]:
        table.add_row(str(row["covering"]), str(row["examples"]), str(row["generalist_correct"]),
                      str(row["combined_correct"]), f"{row['delta_correct']:+d}", f"{row['relative_change']:+.2%}")
    table.add_row("all", str(sum(r["examples"] for r in spec["by_covering"])),
                  str(sum(r["generalist_correct"] for r in spec["by_covering"])),
                  str(sum(r["combined_correct"] for r in spec["by_covering"])),
                  f"{spec['generalist_test_errors'] - spec['test_errors']:+d}", "")
    console.print(table)
    console.print(f"test errors: generalist {spec['generalist_test_errors']} -> combined {spec['test_errors']} "
                  f"(accuracy {spec['generalist_test_accuracy']:.4f} -> {spec['test_accuracy']:.4f})")
