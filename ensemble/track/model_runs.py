"""Which MLflow run stands for a model, and what a run records about the model it trained.

A model is trained once; every later fit that finds it finished in its folder (a rerun of a command, a second
``fit`` in one script) reuses it. Its run stays the one that trained it: the model folder's ``mlflow.json`` names
that run for each store, and a fit that reuses the model starts no run for it but links the run from its parent (a
``reused.<name>`` tag, and links in the parent's description, which the MLflow UI shows on the run's page). A model
reused where the store has no run of it yet (trained untracked, or tracked in another store) gets one run there,
tagged ``reused``, with its curves copied from its folder, once: later fits link to that one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ensemble.base.records import has_fields, read_json, write_json
from ensemble.models.registry import RegisteredModel, count_parameters
from ensemble.track.tracking import Tracker, redact

RUNS_FILE = "mlflow.json"
NOTE_TAG = "mlflow.note.content"
NOTE_HEAD = "**Reused models**: trained by earlier runs, not trained again in this one:"
NOTE_LIMIT = 7000


def recorded_run(tracker: Tracker, workdir: Path, fingerprint: str):
    """The run of ``tracker``'s store that trained the model in ``workdir``, or None (never recorded there,
    deleted, or a run of another model)."""
    runs = _read(workdir)
    run_id = runs.get(redact(tracker.uri))
    run = tracker.get_run(run_id) if isinstance(run_id, str) else None
    if run is None or run.data.params.get("fingerprint") != fingerprint:
        return None
    return run


def record_run(tracker: Tracker, workdir: Path, run_id: str) -> None:
    """Name ``run_id`` as the run of the model in ``workdir`` for ``tracker``'s store."""
    write_json(Path(workdir) / RUNS_FILE, {"runs": {**_read(workdir), redact(tracker.uri): run_id}})


def _read(workdir: Path) -> dict:
    found = read_json(Path(workdir) / RUNS_FILE, "the model's next run there is recorded afresh",
                      valid=lambda value: has_fields(value, runs=dict))
    return found["runs"] if found else {}


def link_reused(tracker: Tracker, parent_id: str | None, links: dict) -> None:
    """Tag ``parent_id`` with ``reused.<name>`` = the run that trained each reused model (``links``: name -> run),
    and list those runs as links in its description, unless the description is the user's own. A name that
    already links to another run there (a sweep's trials are all ``student``) gets the run id's start as suffix."""
    if not parent_id or not links:
        return
    parent = tracker.get_run(parent_id)
    held = dict(parent.data.tags) if parent is not None else {}
    tags: dict[str, str] = {}
    for name, run in links.items():
        key, run_id = f"reused.{name}", run.info.run_id
        if held.get(key, run_id) != run_id or key in tags:
            key = f"{key}.{run_id[:8]}"
        tags[key] = run_id
    note = held.get(NOTE_TAG, "")
    if not note or note.startswith(NOTE_HEAD):
        lines = [line for line in note.splitlines() if line.startswith("- ")]
        lines += [f"- {name}: [{run.info.run_name or name} ({run.info.run_id[:8]})]"
                  f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})"
                  for name, run in links.items() if f"/runs/{run.info.run_id})" not in note]
        while len("\n".join(lines)) > NOTE_LIMIT:  # MLflow caps a tag's value; the tags name every run anyway
            lines = lines[:-2] + ["- ... more in the `reused.*` tags"]
        tags[NOTE_TAG] = "\n".join([NOTE_HEAD, "", *lines])
    tracker.set_tags(parent_id, tags)


def placement_tags(placement: dict) -> dict:
    """Where the model trained, as its run's tags: the actor's node id and IP, its GPU ids, and how many of its
    actors were lost with their node before (``placement.*``; none when it trained in-process)."""
    if not placement.get("node_id"):
        return {}
    return {"placement.node_id": placement["node_id"], "placement.node_ip": placement.get("node_ip") or "",
            "placement.gpu_ids": ",".join(str(g) for g in placement.get("gpu_ids") or []),
            "placement.restarts": placement.get("restarts", 0)}


def model_params(factory: Callable[[], nn.Module]) -> dict:
    """What a run records about its model, whatever built it: the factory's qualified name, a SHA-256 of the built
    module's repr, and its parameter count. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = factory()
    return {"model.factory": factory_name(factory),
            "model.repr_sha256": hashlib.sha256(repr(model).encode()).hexdigest(),
            "model.parameters": count_parameters(model)}


def factory_name(factory: Any) -> str:
    """``torchvision.models.resnet.resnet18``; a registry model by its registered function; a ``partial`` by its
    function and the factories it wraps."""
    if isinstance(factory, RegisteredModel):
        registered = factory._registered_factory()
        return f"{_qualified(registered)} (registered as {factory.name!r})" if registered else factory.name
    if isinstance(factory, functools.partial):
        inner = [factory_name(a) for a in (*factory.args, *factory.keywords.values())
                 if callable(a) and not isinstance(a, (nn.Module, torch.Tensor))]
        return f"{_qualified(factory.func)}({', '.join(inner)})"
    return _qualified(factory if hasattr(factory, "__qualname__") else type(factory))


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or '?'}.{getattr(obj, '__qualname__', repr(obj))}"
