"""The one orchestration of the stages, for every command that trains them (``distill ensemble``, ``specialists``,
``run`` and ``sweep``): check the config against what the command and every student's teacher need, lock the output
folder, read and check the data, then under one MLflow parent run train (or reuse) the ensemble and, when needed,
the specialists, and hand them to the command's own step (one student, a sweep's trials, or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from pydantic import ValidationError

from ensemble.api import Ensemble
from ensemble.base import storage
from ensemble.base.checkpoint import make_output_dir
from ensemble.base.lock import FolderLock
from ensemble.base.records import read_json, report_damaged, write_json, write_text
from ensemble.data.split import DatasetSplits
from ensemble.stage import load_data, run_ensemble_stage
from ensemble.track.tracking import Tracker, dataset_inputs
from specialists.api import SpecialistEnsemble
from specialists.stage import check_section, run_specialist_stage

from .config import Config, config_hash, dump_config
from .needs import check_needs
from .results import Results

T = TypeVar("T")


@dataclass
class Trained:
    """What the stages before the students left for the command's step."""

    config: Config
    data: DatasetSplits
    output_dir: Path
    tracker: Tracker
    parent_id: str
    ensemble: Ensemble
    specialists: SpecialistEnsemble | None
    sections: dict  # the ``results.json`` sections of the stages so far; the step adds its own
    show_progress: bool


def orchestrate(config: Config, command: str, teachers: dict[str, str], step: Callable[[Trained], T],
                show_progress: bool = True, tags: dict | None = None) -> T:
    """Run ``command``'s stages and then ``step`` under its parent run; ``step``'s value is returned.

    ``teachers``: the teacher of every student ``step`` will train (name -> the config field that chose it), asked
    once here so that a teacher missing a stage is refused before any folder, MLflow run or model exists."""
    needed = check_needs(config, command, teachers)
    output_dir = make_output_dir(config.output_dir)  # a storage URI: this process's mirror of it
    # Taken before any MLflow run or file: a second invocation on this folder is refused and leaves no trace.
    with FolderLock(output_dir, f"distill {command}"):
        write_text(output_dir / "config.yaml", dump_config(config))
        # The data is read and checked before any MLflow work: a bad dataset leaves no run behind, like a bad config.
        data = load_data(config)
        with_specialists = "specialists.enabled" in needed
        if with_specialists:
            check_section(config.specialists, data)
        tracker = Tracker(config.tracking.uri, config.tracking.experiment)
        tags = {"config_hash": config_hash(config), "output_dir": storage.portable(output_dir.resolve()),
                **(tags or {})}
        # A failure in any stage or in the step ends this run FAILED; each finished model stays on disk for reuse.
        with tracker.run(parent_run_name(config, command), tags=tags) as parent_id, \
                tracker.system_metrics(parent_id, config.tracking.system_metrics):
            tracker.log_params(parent_id, config.model_dump(mode="json"))
            tracker.log_artifact(parent_id, output_dir / "config.yaml")
            tracker.log_inputs(parent_id, dataset_inputs(config.data.name, config.data.root, data.splits()))
            ensemble, sections = run_ensemble_stage(config, data, output_dir, tracker, parent_id, show_progress)
            _log_ensemble_metrics(tracker, parent_id, sections)
            specialists = None
            if with_specialists:
                specialists, more = run_specialist_stage(config, config.specialists, data, ensemble, output_dir,
                                                         tracker, parent_id, show_progress)
                sections.update(more)
            return step(Trained(config, data, output_dir, tracker, parent_id, ensemble, specialists, sections,
                                show_progress))


def update_results(path: Path, sections: dict, merge: bool = True) -> Results:
    """Write ``results.json`` from typed sections; ``merge`` keeps the sections other invocations wrote (a partial
    stage run), unless that file no longer reads as :class:`Results` (written by another version: dropped)."""
    old = {}
    afresh = "it is written afresh from this run's stages"
    storage.pull(path.parent, [path.name])
    stored = read_json(path, afresh) if merge else None
    if stored is not None:
        try:
            old = Results.model_validate(stored).model_dump(exclude_none=True)
        except ValidationError:
            report_damaged(path, "not the fields this version writes", afresh)
    results = Results.model_validate({**old, **sections})
    write_json(path, results.to_json())
    return results


def parent_run_name(config: Config, command: str) -> str:
    """``mnist_hinton: run``: the config's name (its file's, unless it sets ``name``) and the CLI command."""
    return f"{config.name or 'config'}: {command}"


def _log_ensemble_metrics(tracker: Tracker, parent_id: str, sections: dict) -> None:
    ens = sections["ensemble"]
    metrics = {f"ensemble_{k}": v for k, v in ens.model_dump().items() if k.startswith("test_") and v is not None}
    if "generalist" in sections:
        metrics["generalist_test_accuracy"] = sections["generalist"].test_accuracy
    tracker.log_metrics(parent_id, metrics)
