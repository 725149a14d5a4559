"""Summary tables printed at the end of a run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .results import Results, SummaryRow


def print_ensemble_summary(results: Results, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="ensemble stage: test set")
    for column in ("model", "test acc", "errors", "NLL", "epochs", "status"):
        table.add_column(column, justify="left" if column in ("model", "status") else "right")
    ens = results.ensemble
    for row in [*ens.members, *([results.generalist] if results.generalist else [])]:
        table.add_row(row.name, f"{row.test_accuracy:.4f}", str(row.test_errors), _cell(row.test_nll, "{:.4f}"),
                      str(row.epochs_trained), row.status)
    for mean in ("arithmetic", "geometric"):
        accuracy, errors, nll = ens.score(mean)
        table.add_row(f"ensemble ({mean} mean)", f"{accuracy:.4f}", str(errors), _cell(nll, "{:.4f}"), "", "")
    console.print(table)
    if results.mlflow:
        console.print(f"MLflow: {results.mlflow.tracking_uri}  parent run {results.mlflow.parent_run_id}")


def print_specialists_summary(results: Results, console: Console | None = None) -> None:
    console = console or Console()
    spec = results.specialists
    groups = Table(title="specialists: groups of confusable classes")
    for column in ("specialist", "classes", "test acc (group + dustbin)", "status"):
        groups.add_column(column)
    for row in spec.members:
        names = spec.group_names[spec.groups.index(row.group)]
        groups.add_row(row.name, ", ".join(names), f"{row.test_accuracy:.4f}", row.status)
    console.print(groups)
    table = Table(title="generalist vs generalist + specialists (Eq. 5), test set")
    for column in ("specialists covering the correct class", "examples", "generalist correct", "combined correct",
                   "change", "relative"):
        table.add_column(column, justify="right")
    for row in spec.by_covering:
        table.add_row(str(row.covering), str(row.examples), str(row.generalist_correct), str(row.combined_correct),
                      f"{row.delta_correct:+d}", f"{row.relative_change:+.2%}")
    table.add_row("all", str(sum(r.examples for r in spec.by_covering)),
                  str(sum(r.generalist_correct for r in spec.by_covering)),
                  str(sum(r.combined_correct for r in spec.by_covering)),
                  f"{spec.generalist_test_errors - spec.test_errors:+d}", "")
    console.print(table)
    console.print(f"test errors: generalist {spec.generalist_test_errors} -> combined {spec.test_errors} "
                  f"(accuracy {spec.generalist_test_accuracy:.4f} -> {spec.test_accuracy:.4f})")


def summary_rows(results: Results, trained: dict) -> list[SummaryRow]:
    """One row per model of the pipeline: test accuracy, errors, NLL, parameters, CPU latency per batch."""
    from ensemble.models import count_parameters

    ensemble, ens, student = trained["ensemble"], results.ensemble, results.student
    member_params = count_parameters(ensemble.members_[0])
    rows = [SummaryRow(model=m.name, test_accuracy=m.test_accuracy, test_errors=m.test_errors, test_nll=m.test_nll,
                       params=member_params) for m in ens.members]
    taught_by_ensemble = student is not None and student.teacher == "ensemble"
    for mean in ("arithmetic", "geometric"):
        accuracy, errors, nll = ens.score(mean)
        latency = student.teacher_latency_ms_per_batch if taught_by_ensemble and mean == (student.mean or ens.mean) \
            else None
        rows.append(SummaryRow(model=f"ensemble ({mean})", test_accuracy=accuracy, test_errors=errors, test_nll=nll,
                               params=member_params * len(ensemble.members_), latency_ms=latency))
    if results.generalist is not None:
        g = results.generalist
        rows.append(SummaryRow(model="generalist", test_accuracy=g.test_accuracy, test_errors=g.test_errors,
                               test_nll=g.test_nll, params=count_parameters(ensemble.generalist_)))
    if results.specialists is not None and "specialists" in trained:
        s, spec = results.specialists, trained["specialists"]
        params = count_parameters(spec.generalist) + sum(count_parameters(m) for m in spec.specialists_)
        rows.append(SummaryRow(model="generalist + specialists", test_accuracy=s.test_accuracy,
                               test_errors=s.test_errors, test_nll=s.test_nll, params=params))
    if student is not None:
        if student.baseline_test_accuracy is not None:
            rows.append(SummaryRow(model="student, hard labels (baseline)",
                                   test_accuracy=student.baseline_test_accuracy,
                                   test_errors=student.baseline_test_errors, test_nll=student.baseline_test_nll,
                                   params=student.params, latency_ms=student.latency_ms_per_batch))
        how = "" if student.method == "kd" else f", {student.method}"
        rows.append(SummaryRow(model=f"student, distilled from {student.teacher} (T={student.temperature:g}{how})",
                               test_accuracy=student.test_accuracy, test_errors=student.test_errors,
                               test_nll=student.test_nll, params=student.params,
                               latency_ms=student.latency_ms_per_batch))
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def print_summary(results: Results, console: Console | None = None) -> None:
    console = console or Console()
    student = results.student
    batch = student.latency_batch_size if student else ""
    table = Table(title="pipeline summary: test set")
    for column in ("model", "test acc", "errors", "NLL", "params", f"CPU ms / batch of {batch}"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in results.summary:
        table.add_row(row.model, f"{row.test_accuracy:.4f}", str(row.test_errors), _cell(row.test_nll, "{:.4f}"),
                      f"{row.params:,}", _cell(row.latency_ms, "{:.2f}"))
    console.print(table)
    if student is not None and student.left_out_classes:
        console.print(f"left-out classes {student.left_out_classes}: bias shift {student.bias_shift:+.1f} (chosen on "
                      f"validation) -> test errors {student.test_errors_before_shift} -> {student.test_errors}, on "
                      f"left-out classes {student.left_out_test_errors_before_shift} -> {student.left_out_test_errors}"
                      f" of {student.left_out_test_examples}")
    console.print(f"student exported to {student.export_path if student else None}; report: report.md; MLflow parent "
                  f"run {results.mlflow.parent_run_id}")


def write_report(results: Results, trained: dict, data, output_dir) -> list:
    """``report.md`` with the summary table and plots (training curves, class matrix, accuracy per model)."""
    from .plots import accuracy_per_model, training_curves

    output_dir = Path(output_dir)
    figures = output_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    histories = {}
    for stage in ("ensemble", "specialists", "student"):
        for result in getattr(trained.get(stage), "results_", []):
            histories[result.name] = result.history
    files = []
    rows = [row.model_dump() for row in results.summary]
    for name, figure in (("training_curves.png", training_curves(histories)),
                         ("accuracy_per_model.png", accuracy_per_model(rows))):
        figure.savefig(figures / name, dpi=100)
        files.append(figures / name)
    lines = [f"# Distillation report: {data.name}", "",
             f"MLflow parent run `{results.mlflow.parent_run_id}` at `{results.mlflow.tracking_uri}`.", "",
             "| model | test accuracy | test errors | NLL | parameters | CPU ms / batch |", "|---|---|---|---|---|---|"]
    for row in results.summary:
        lines.append(f"| {row.model} | {row.test_accuracy:.4f} | {row.test_errors} | {_cell(row.test_nll, '{:.4f}')} "
                     f"| {row.params:,} | {_cell(row.latency_ms, '{:.2f}')} |")
    lines += _student_lines(results.student) + _specialist_lines(results.specialists, output_dir)
    lines += ["", "![training curves](report/training_curves.png)", "",
              "![accuracy per model](report/accuracy_per_model.png)", ""]
    report = output_dir / "report.md"
    report.write_text("\n".join(lines))
    return [report, *files]


def _student_lines(student) -> list[str]:
    if student is None:
        return []
    lines = ["", f"Student: `{student.export_path}` (TorchScript, {student.file_bytes:,} bytes); teacher "
                 f"`{student.teacher}`, T = {student.temperature:g}, α = {student.alpha:g}, loss `{student.loss}`, "
                 f"{student.transfer_examples:,} transfer examples."]
    if student.left_out_classes:
        lines.append(f"Left-out classes {student.left_out_classes}: bias shift {student.bias_shift:+.1f} chosen on "
                     f"validation data; test errors {student.test_errors_before_shift} → {student.test_errors} "
                     f"({student.left_out_test_errors_before_shift} → {student.left_out_test_errors} on the "
                     f"{student.left_out_test_examples} left-out test examples).")
    return lines


def _specialist_lines(spec, output_dir: Path) -> list[str]:
    if spec is None:
        return []
    lines = ["", "## Specialists", "", f"Groups: {spec.group_names}.", "",
             "| specialists covering the correct class | examples | generalist correct | combined correct | change | "
             "relative |", "|---|---|---|---|---|---|"]
    for row in spec.by_covering:
        lines.append(f"| {row.covering} | {row.examples} | {row.generalist_correct} | {row.combined_correct} | "
                     f"{row.delta_correct:+d} | {row.relative_change:+.2%} |")
    if (output_dir / "specialists" / "class_matrix.png").is_file():
        lines += ["", "![class matrix](specialists/class_matrix.png)"]
    return lines
