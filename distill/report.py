"""Summary tables printed at the end of a run."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ensemble.base import storage
from ensemble.base.records import write_text
from ensemble.metrics.scores import SCORE_KEYS
from ensemble.models.registry import count_parameters
from ensemble.results import node_cell

from .plots import accuracy_per_model, training_curves
from .results import Results, SummaryRow


def wide_console() -> Console:
    """The terminal's width on a terminal; 160 columns when piped (a log, a CI job, a Ray job's output), where
    rich would otherwise squeeze the tables into 80."""

    return Console() if sys.stdout.isatty() else Console(width=160)


def print_ensemble_summary(results: Results, console: Console | None = None) -> None:
    console = console or wide_console()
    table = Table(title="ensemble stage: test set")
    for column in ("model", "test acc", "errors", "NLL", "ECE", "Brier", "epochs", "status", "node"):
        # A model's name never wraps: on a narrow terminal the numbers give way first.
        table.add_column(column, justify="left" if column in ("model", "status", "node") else "right",
                         no_wrap=column == "model")
    ens = results.ensemble
    for row in [*ens.members, *([results.generalist] if results.generalist else [])]:
        table.add_row(row.name, *_score_cells(row.test_accuracy, row.test_errors, row.test_nll, row.test_ece,
                                              row.test_brier), str(row.epochs_trained), row.status,
                      node_cell(row.placement))
    for mean in ("arithmetic", "geometric"):
        table.add_row(f"ensemble ({mean} mean)", *_score_cells(**ens.score(mean)), "", "", "")
    console.print(table)
    print_warnings([line for row in [*ens.members, *([results.generalist] if results.generalist else [])]
                    for line in row.warnings], console)
    if results.mlflow:
        console.print(f"MLflow: {results.mlflow.tracking_uri}  parent run {results.mlflow.parent_run_id}")


def print_specialists_summary(results: Results, console: Console | None = None) -> None:
    console = console or wide_console()
    spec = results.specialists
    groups = Table(title="specialists: groups of confusable classes")
    for column in ("specialist", "classes", "test acc (group + dustbin)", "status", "node"):
        groups.add_column(column)
    for row in spec.members:
        names = spec.group_names[spec.groups.index(row.group)]
        groups.add_row(row.name, ", ".join(names), f"{row.test_accuracy:.4f}", row.status, node_cell(row.placement))
    console.print(groups)
    print_warnings([line for row in spec.members for line in row.warnings], console)
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
    """One row per model of the pipeline: test accuracy, errors, NLL, ECE, Brier, agreement with the teacher
    (students), parameters, CPU latency per batch."""

    ensemble, ens, student = trained["ensemble"], results.ensemble, results.student
    member_params = count_parameters(ensemble.members_[0])
    rows = [_row(m.name, m, params=member_params) for m in ens.members]
    taught_by_ensemble = student is not None and student.teacher == "ensemble"
    for mean in ("arithmetic", "geometric"):
        latency = student.teacher_latency_ms_per_batch if taught_by_ensemble and mean == (student.mean or ens.mean) \
            else None
        rows.append(SummaryRow(model=f"ensemble ({mean})", **{f"test_{k}": v for k, v in ens.score(mean).items()},
                               params=member_params * len(ensemble.members_), latency_ms=latency))
    if results.generalist is not None:
        rows.append(_row("generalist", results.generalist, params=count_parameters(ensemble.generalist_)))
    if results.specialists is not None and "specialists" in trained:
        spec = trained["specialists"]
        params = count_parameters(spec.generalist) + sum(count_parameters(m) for m in spec.specialists_)
        rows.append(_row("generalist + specialists", results.specialists, params=params))
    if student is not None:
        if student.baseline_test_accuracy is not None:
            rows.append(_row("student, hard labels (baseline)", student, "baseline_", params=student.params,
                             latency_ms=student.latency_ms_per_batch, agreement=student.baseline_agreement))
        how = "" if student.method == "kd" else f", {student.method}"
        rows.append(_row(f"student, distilled from {student.teacher} (T={student.temperature:g}{how})", student,
                         params=student.params, latency_ms=student.latency_ms_per_batch, agreement=student.agreement))
    return rows


def _row(model: str, section, prefix: str = "", **fields) -> SummaryRow:
    """A summary row from ``section``'s ``<prefix>test_<score>`` fields and its quality verdict (None where an
    older file lacks one)."""
    scores = {f"test_{key}": getattr(section, f"{prefix}test_{key}", None) for key in SCORE_KEYS}
    placement = getattr(section, f"{prefix}placement", None)
    return SummaryRow(model=model, **scores, quality=getattr(section, f"{prefix}quality", None),
                      warnings=getattr(section, f"{prefix}warnings", None) or [],
                      node=placement.label if placement is not None else None, **fields)


def _score_cells(accuracy, errors, nll=None, ece=None, brier=None) -> list[str]:
    return [f"{accuracy:.4f}", str(errors), _cell(nll, "{:.4f}"), _cell(ece, "{:.4f}"), _cell(brier, "{:.4f}")]


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _summary_cells(row: SummaryRow) -> list[str]:
    return [*_score_cells(row.test_accuracy, row.test_errors, row.test_nll, row.test_ece, row.test_brier),
            _cell(row.agreement, "{:.4f}"), f"{row.params:,}", _cell(row.latency_ms, "{:.2f}"), _quality_cell(row)]


def _quality_cell(row: SummaryRow) -> str:
    """"ok", "-" (not assessed: a combination, or an older file), or the flag in capitals, to stand out."""
    return "-" if row.quality is None else row.quality if row.quality == "ok" else row.quality.upper()


def quality_lines(results: Results) -> list[str]:
    """Every quality warning of the summary's models (:mod:`ensemble.metrics.quality`), one line each, in its order."""
    return list(dict.fromkeys(line for row in results.summary or [] for line in row.warnings))


def print_warnings(lines: list[str], console: Console) -> None:
    for line in lines:
        console.print(Text.assemble(("warning: ", "bold red"), line))


def print_summary(results: Results, console: Console | None = None) -> None:
    console = console or wide_console()
    student = results.student
    batch = student.latency_batch_size if student else ""
    table = Table(title="pipeline summary: test set")
    for column in ("model", "test acc", "errors", "NLL", "ECE", "Brier", "agrees", "params",
                   f"CPU ms / batch of {batch}", "quality", "node"):
        table.add_column(column, justify="left" if column in ("model", "quality", "node") else "right",
                         no_wrap=column == "model")
    for row in results.summary:
        table.add_row(row.model, *_summary_cells(row), row.node or "-")
    console.print(table)
    print_warnings(quality_lines(results), console)
    if student is not None and student.left_out_classes:
        console.print(f"left-out classes {student.left_out_classes}: bias shift {student.bias_shift:+.1f} (chosen on "
                      f"validation) -> test errors {student.test_errors_before_shift} -> {student.test_errors}, on "
                      f"left-out classes {student.left_out_test_errors_before_shift} -> {student.left_out_test_errors}"
                      f" of {student.left_out_test_examples}")
    console.print(f"student exported to {student.export_path if student else None}; report: report.md; MLflow parent "
                  f"run {results.mlflow.parent_run_id}")


def write_report(results: Results, trained: dict, data, output_dir) -> list:
    """``report.md`` with the summary table and plots (training curves, class matrix, accuracy per model)."""

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
        storage.push(figures / name)
        files.append(figures / name)
    lines = [f"# Distillation report: {data.name}", "",
             f"MLflow parent run `{results.mlflow.parent_run_id}` at `{results.mlflow.tracking_uri}`.", "",
             "| model | test accuracy | test errors | NLL | ECE | Brier | agreement with teacher | parameters "
             "| CPU ms / batch | quality |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results.summary:
        lines.append(f"| {row.model} | {' | '.join(_summary_cells(row))} |")
    for line in quality_lines(results):
        lines += ["", f"**Warning:** {line}"]
    lines += _student_lines(results.student) + _specialist_lines(results.specialists, output_dir)
    lines += ["", "![training curves](report/training_curves.png)", "",
              "![accuracy per model](report/accuracy_per_model.png)", ""]
    report = output_dir / "report.md"
    write_text(report, "\n".join(lines))
    return [report, *files]


def _student_lines(student) -> list[str]:
    if student is None:
        return []
    lines = ["", f"Student: teacher `{student.teacher}`, T = {student.temperature:g}, α = {student.alpha:g}, loss "
                 f"`{student.loss}`, {student.transfer_examples:,} transfer examples; top-1 agreement with the "
                 f"teacher {_cell(student.agreement, '{:.4f}')}, mean KL(teacher ‖ student) at T = 1 "
                 f"{_cell(student.kl_from_teacher, '{:.4f}')} nats.", "",
             f"| file (each checked against the eager model within 1e-4) | bytes | CPU ms / batch of "
             f"{student.latency_batch_size} |", "|---|---|---|"]
    lines += [f"| `{Path(f['path']).name}` ({name}) | {f['bytes']:,} | {f['latency_ms_per_batch']:.2f} |"
              for name, f in student.formats.items()]
    lines += ["", "![reliability](student/reliability.png)"]
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
