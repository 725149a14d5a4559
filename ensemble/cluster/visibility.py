"""Whether every node that will train sees the driver's output folder, checked before anything trains.

An actor writes its model's checkpoints and finished files at the path the driver hands it, and the driver reads
them back from that path, as do a restarted actor (its checkpoint) and a data-parallel model's reader (rank 0's
``result.json``). On one machine that is one folder. On a cluster a local path is each node's own disk, and a
relative one each node's own copy of the job's working directory (``ray job submit --working-dir .``): the models
would train into folders the driver never sees, and a rerun would find nothing. Ray Train refuses this case too
(a marker in ``storage_path`` read back from its workers); so here: the driver writes a marker holding a random
token into the folder, and one tiny task pinned to each alive node that can host an actor looks for it at the path
as the actors receive it. A node that cannot see it refuses the run in one line naming it, before any actor starts.

A purely local Ray (every node that can train is the driver's own) is not checked: it shares the driver's disk.
A node that does not answer within the bounded wait is reported, not refused: it has not shown it cannot see the
folder (a node still building a job's runtime environment takes minutes), and refusing would stop a working run.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ensemble.base.errors import ConfigError

WAIT_SECONDS = 30.0  # at most this long for every node's answer
MARKER_PREFIX = ".shared-storage-check-"
# A path given as a URI (s3://..., also once pathlib folded it to s3:/...) is object storage, which every node
# reaches alike: nothing to check.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
# (the driver's absolute folder, the path as the actors get it, node id) already seen to share it: checked once per
# process, so a final_fit's second round or a sweep's next trial adds no task.
_CONFIRMED: set[tuple[str, str, str]] = set()
_log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_retries=0)
def _look(path: str, name: str, token: str) -> tuple[bool, str]:
    """On one node, as an actor would: whether ``path`` holds the driver's marker, and where ``path`` is there."""
    try:
        seen = (Path(path) / name).read_text() == token
    except OSError:
        seen = False
    return seen, str(Path(path).absolute())


def training_nodes(num_cpus: float, num_gpus: float) -> list[dict]:
    """The alive nodes with room for one actor of this size (a 0-CPU head, say, hosts none)."""
    return [node for node in ray.nodes() if node.get("Alive")
            and node["Resources"].get("CPU", 0) >= num_cpus and node["Resources"].get("GPU", 0) >= num_gpus]


def check_shared_output(output_dir: str | Path, actor_path: str | Path, num_cpus: float, num_gpus: float,
                        seconds: float = WAIT_SECONDS) -> None:
    """Refuse (:class:`ConfigError`, one line naming the node) when a node that will train cannot see the driver's
    ``output_dir`` at ``actor_path``, the path as the actors receive it (relative or absolute). Ray must be up."""
    if _URI.match(str(output_dir)):
        return
    nodes = training_nodes(num_cpus, num_gpus)
    here = ray.get_runtime_context().get_node_id()
    if all(node["NodeID"] == here for node in nodes):
        return
    folder = Path(output_dir).absolute()
    key = (str(folder), str(actor_path))
    unchecked = [node for node in nodes if (*key, node["NodeID"]) not in _CONFIRMED]
    if not unchecked:
        return
    with _marker(folder) as (name, token):
        answers = _ask(unchecked, str(actor_path), name, token, seconds)
    blind = []
    for node, answer in answers:
        if isinstance(answer, tuple) and answer[0]:
            _CONFIRMED.add((*key, node["NodeID"]))
        elif isinstance(answer, tuple):
            blind.append((node, answer[1]))
        else:
            _log.warning("output_dir %s: node %s could not be checked for shared storage (%s); if it does not "
                         "share this folder its models are written where this driver cannot read them",
                         output_dir, _name(node), answer)
    if blind:
        raise ConfigError(_refusal(output_dir, actor_path, blind))


def _ask(nodes: list[dict], path: str, name: str, token: str, seconds: float) -> list[tuple[dict, object]]:
    """Each node's answer: ``(seen, where the path is there)``, or the reason there is none."""
    refs = [_look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(path, name, token) for node in nodes]
    ready, late = ray.wait(refs, num_returns=len(refs), timeout=seconds)
    for ref in late:
        ray.cancel(ref, force=True)
    answers = []
    for node, ref in zip(nodes, refs):
        if ref not in ready:
            answers.append((node, f"no answer within {seconds:g} s"))
            continue
        try:
            answers.append((node, ray.get(ref)))
        except ray.exceptions.RayError as err:  # the node died, or its runtime environment failed
            answers.append((node, " ".join(str(err).split())[:200]))
    return answers


def _refusal(output_dir: str | Path, actor_path: str | Path, blind: list[tuple[dict, str]]) -> str:
    node, there = blind[0]
    more = f" (and {len(blind) - 1} more node(s))" if len(blind) > 1 else ""
    why = ("a relative path resolves in each node's own copy of the working directory" if not Path(actor_path)
           .is_absolute() else "a local path is each node's own disk")
    return (f"output_dir {output_dir}: node {_name(node)}{more} cannot see the files this driver writes there (it "
            f"would write to its own {there}: {why}); the driver, a restarted actor and a rerun would not find its "
            "models. Give every node the same storage: --output-dir s3://bucket/path, or a shared NFS path mounted "
            "at the same place on every node")


def _name(node: dict) -> str:
    return f"{node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')})"


@contextmanager
def _marker(folder: Path) -> Iterator[tuple[str, str]]:
    """A file holding a random token in ``folder`` while the nodes look; removed after, with any folders made
    for it (a refused run leaves no empty output folder behind)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = folder / f"{MARKER_PREFIX}{token[:12]}"
    path.write_text(token)
    try:
        yield path.name, token
    finally:
        path.unlink(missing_ok=True)
        for parent in made:  # deepest first
            try:
                parent.rmdir()
            except OSError:
                break
