"""``distill``: the command line. Bad input is one line on stderr and exit code 2 (``--debug`` for a traceback)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ensemble.base.errors import DistillError
from ensemble.base.records import FULL_DISK, storage_error
from ensemble.metrics.quality import QualityWarning
from ensemble.schema.loading import Flag
from ensemble.track.tracking import redact

from .config import dump_config, load_config
from .pipeline import run
from .sweep import parse_grid, run_sweep

EXIT_USER_ERROR = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the digits demo, configs/digits.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set ensemble.members=5 (repeatable)")
    parser.add_argument("--output-dir", help="where checkpoints and results go (config: output_dir)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (config: tracking.uri)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ensemble = commands.add_parser("ensemble", help="train the ensemble members and the generalist on Ray")
    _common(ensemble)
    ensemble.add_argument("--no-progress", action="store_true", help="no live progress view")
    run = commands.add_parser("run", help="the whole pipeline: ensemble -> specialists -> student, with a report")
    _common(run)
    run.add_argument("--no-progress", action="store_true", help="no live progress view")
    specialists = commands.add_parser(
        "specialists", help="train dustbin specialists for the generalist's confusable classes (runs the ensemble "
        "stage first when its outputs are missing)")
    _common(specialists)
    specialists.add_argument("--no-progress", action="store_true", help="no live progress view")
    sweep = commands.add_parser("sweep", help="a grid over student settings on Ray Tune, one MLflow run per trial")
    _common(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="values of one student setting, e.g. --grid student.alpha=0.1,0.5,0.9 (repeatable; "
                            "adds to the config's sweep.grid)")
    sweep.add_argument("--no-progress", action="store_true", help="no live progress view")
    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    _common(config_commands.add_parser("show", help="print the resolved config"))
    return parser


def _resolve(args):


    overrides = list(args.overrides)
    # ``is not None``: an empty flag is the user's value (refused by the schema), not a missing one.
    if args.output_dir is not None:
        overrides.append(Flag("--output-dir", "output_dir", args.output_dir))
    if args.tracking_uri is not None:
        overrides.append(Flag("--tracking-uri", "tracking.uri", args.tracking_uri))
    return load_config(args.config, overrides)


def _raise_interrupt(signum, frame):
    # SIGTERM (ray job stop, a scheduler) ends runs as KILLED, like Ctrl-C, instead of leaving them RUNNING.
    raise KeyboardInterrupt(f"signal {signum}")


# MLflow announces every schema creation and migration of a new SQLite store at INFO, and logs each database error
# (a damaged store) at ERROR with its SQL before raising it; on the command line that buries the one line that
# matters (a result, or the error as ensemble.track.store_errors words it). Quieted here, for the command only: the
# library leaves logger levels to its caller.
CHATTY_LOGGERS = {"mlflow.store.db.utils": logging.CRITICAL, "alembic.runtime.migration": logging.WARNING}


@contextmanager
def _quiet(levels: dict[str, int]) -> Iterator[None]:
    """Raise each named logger to its level for the block, then give them back their own levels."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in saved.items():
            logger.setLevel(level)


@contextmanager
def _quality_lines() -> Iterator[None]:
    """A :class:`ensemble.metrics.quality.QualityWarning` is news about the run, not about the code: one line on stderr,
    ``warning: ...``, instead of Python's file, line and source. Other warnings show as Python shows them."""


    with warnings.catch_warnings():
        python_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, QualityWarning):
                print("warning: " + " ".join(str(message).split()), file=sys.stderr)
            else:
                python_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with _quiet(CHATTY_LOGGERS), _quality_lines():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    config = None
    try:
        config = _resolve(args)
        if args.command == "sweep":

            config.sweep.grid.update(parse_grid(args.grid))
            run_sweep(config, show_progress=not args.no_progress)
        elif args.command == "config":

            print(dump_config(config), end="")
        else:

            run(config, until="student" if args.command == "run" else args.command,
                show_progress=not args.no_progress)
    except DistillError as err:
        if args.debug:
            traceback.print_exc()
        # One line, always: a multi-line message (a library's, say) is folded rather than cut.
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        # The file system said no (a full disk, a read-only folder): the user's environment, not a bug.
        if args.debug:
            traceback.print_exc()
        print("error: " + _os_error_line(err, config), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _os_error_line(err: OSError, config) -> str:


    if err.errno in FULL_DISK and err.filename:
        return str(storage_error(Path(err.filename), err))
    if err.errno in FULL_DISK and config is not None:
        # A write that did not say which file (a failed flush): name where this run writes.
        return (f"the disk is full ({err.strerror}) while writing this run's files (output_dir {config.output_dir}, "
                f"MLflow store {redact(config.tracking.uri)}); free space there or choose another --output-dir, "
                "then rerun: finished models are kept")
    where = f"{err.filename}: " if err.filename else ""
    return " ".join(f"{where}{err.strerror or err}".split())


if __name__ == "__main__":
    sys.exit(main())
