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


def summary_rows(sections: dict, trained: dict) -> list[dict]:
    """One row per model of the pipeline: test accuracy, errors, parameters, CPU latency per batch."""
    from ensemble.models import count_parameters

    ensemble = trained["ensemble"]
    member_params = count_parameters(ensemble.members_[0])
    rows = [{"model": m["name"], "test_accuracy": m["test_accuracy"], "test_errors": m["test_errors"],
             "params": member_params, "latency_ms": None} for m in sections["ensemble"]["members"]]
    ens = sections["ensemble"]
    student = sections.get("student", {})
    ensemble_latency = student.get("teacher_latency_ms_per_batch") if student.get("teacher") == "ensemble" else None
    for mean in ("arithmetic", "geometric"):
        rows.append({"model": f"ensemble ({mean})", "test_accuracy": ens[f"test_accuracy_{mean}"],
                     "test_errors": ens[f"test_errors_{mean}"], "params": member_params * len(ensemble.members_),
                     "latency_ms": ensemble_latency if mean == (student.get("mean") or ens["mean"]) else None})
    if "generalist" in sections:
        g = sections["generalist"]
        rows.append({"model": "generalist", "test_accuracy": g["test_accuracy"], "test_errors": g["test_errors"],
                     "params": count_parameters(ensemble.generalist_), "latency_ms": None})
    if "specialists" in sections and "specialists" in trained:
        s = sections["specialists"]
        spec = trained["specialists"]
        params = count_parameters(spec.generalist) + sum(count_parameters(m) for m in spec.specialists_)
        rows.append({"model": "generalist + specialists", "test_accuracy": s["test_accuracy"],
                     "test_errors": s["test_errors"], "params": params, "latency_ms": None})
    if student:
        if "baseline_test_accuracy" in student:
            rows.append({"model": "student, hard labels (baseline)", "test_accuracy": student["baseline_test_accuracy"],
                         "test_errors": student["baseline_test_errors"], "params": student["params"],
                         "latency_ms": student["latency_ms_per_batch"]})
        how = "" if student.get("method", "kd") == "kd" else f", {student['method']}"
        rows.append({"model": f"student, distilled from {student['teacher']} (T={student['temperature']:g}{how})",
                     "test_accuracy": student["test_accuracy"], "test_errors": student["test_errors"],
                     "params": student["params"], "latency_ms": student["latency_ms_per_batch"]})
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def print_summary(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    batch = results.get("student", {}).get("latency_batch_size", "")
    table = Table(title="pipeline summary: test set")
    for column in ("model", "test acc", "errors", "params", f"CPU ms / batch of {batch}"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in results["summary"]:
        table.add_row(row["model"], f"{row['test_accuracy']:.4f}", str(row["test_errors"]), f"{row['params']:,}",
                      _cell(row["latency_ms"], "{:.2f}"))
    console.print(table)
    student = results.get("student", {})
    if "bias_shift" in student:
        console.print(f"left-out classes {student['left_out_classes']}: bias shift {student['bias_shift']:+.1f} "
                      f"(chosen on validation) -> test errors {student['test_errors_before_shift']} -> "
                      f"{student['test_errors']}, on left-out classes {student['left_out_test_errors_before_shift']}"
                      f" -> {student['left_out_test_errors']} of {student['left_out_test_examples']}")
    console.print(f"student exported to {student.get('export_path')}; report: "
                  f"{results.get('report_path', 'report.md')}; MLflow parent run {results['mlflow']['parent_run_id']}")


def write_report(results: dict, trained: dict, data, output_dir) -> list:
    """``report.md`` with the summary table and plots (training curves, class matrix, accuracy per model)."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .plots import accuracy_per_model, training_curves

    output_dir = Path(output_dir)
    figures = output_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    histories = {}
    for stage in ("ensemble", "specialists", "student"):
        for result in getattr(trained.get(stage), "results_", []):
            histories[result.name] = result.history
    files = []
    for name, figure in (("training_curves.png", training_curves(histories)),
                         ("accuracy_per_model.png", accuracy_per_model(results["summary"]))):
        figure.savefig(figures / name, dpi=100)
        plt.close(figure)
        files.append(figures / name)
    lines = [f"# Distillation report: {data.name}", "",
             f"MLflow parent run `{results['mlflow']['parent_run_id']}` at `{results['mlflow']['tracking_uri']}`.", "",
             "| model | test accuracy | test errors | parameters | CPU ms / batch |", "|---|---|---|---|---|"]
    for row in results["summary"]:
        lines.append(f"| {row['model']} | {row['test_accuracy']:.4f} | {row['test_errors']} | {row['params']:,} | "
                     f"{_cell(row['latency_ms'], '{:.2f}')} |")
    student = results.get("student", {})
    if student:
        lines += ["", f"Student: `{student['export_path']}` (TorchScript, {student['file_bytes']:,} bytes); "
                      f"teacher `{student['teacher']}`, T = {student['temperature']:g}, α = {student['alpha']:g}, "
                      f"loss `{student['loss']}`, {student['transfer_examples']:,} transfer examples."]
        if "bias_shift" in student:
            lines.append(f"Left-out classes {student['left_out_classes']}: bias shift {student['bias_shift']:+.1f} "
                         f"chosen on validation data; test errors {student['test_errors_before_shift']} → "
                         f"{student['test_errors']} ({student['left_out_test_errors_before_shift']} → "
                         f"{student['left_out_test_errors']} on the {student['left_out_test_examples']} left-out "
                         "test examples).")
    if "specialists" in results:
        spec = results["specialists"]
        lines += ["", "## Specialists", "", f"Groups: {spec['group_names']}.", "",
                  "| specialists covering the correct class | examples | generalist correct | combined correct | "
                  "change | relative |", "|---|---|---|---|---|---|"]
        for row in spec["by_covering"]:
            lines.append(f"| {row['covering']} | {row['examples']} | {row['generalist_correct']} | "
                         f"{row['combined_correct']} | {row['delta_correct']:+d} | {row['relative_change']:+.2%} |")
        if (output_dir / "specialists" / "class_matrix.png").is_file():
            lines += ["", "![class matrix](specialists/class_matrix.png)"]
    lines += ["", "![training curves](report/training_curves.png)", "",
              "![accuracy per model](report/accuracy_per_model.png)", ""]
    report = output_dir / "report.md"
    report.write_text("\n".join(lines))
    return [report, *files]
