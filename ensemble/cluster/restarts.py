"""A model whose actor or node is lost is started again on a live node, where it resumes from its newest checkpoint.

Ray would restart a lost actor only once its GCS declares the node dead, after several missed health checks (tens
of seconds with Ray's defaults), while calls to the lost actor fail within a second or two: its task retries are
spent long before any restart. So the driver restarts it itself: it kills the lost actor, waits a little (1, 2,
4 s), and starts a new one steered away from the node it was lost on (soft node affinity to another live node that
can host it, the one with the most room first), at most ``ray.max_restarts`` times per model. When they are used
up, one line (:class:`~ensemble.base.errors.NodeLost`) names the model, the node and what to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ensemble.base.errors import ConfigError, NodeLost

log = logging.getLogger(__name__)
BACKOFF_SECONDS = (1.0, 2.0, 4.0)  # before the 1st, 2nd, 3rd and later restart: a flapping node gets time to settle
HOSTABLE_CHECK_SECONDS = 2.0  # how often a restarted actor that has not started yet checks a node can still host it
# What a lost actor, worker or node raises at the driver; an error of the training itself is a RayTaskError.
LOST = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
        ray.exceptions.ObjectLostError)


def is_lost(err: BaseException) -> bool:
    """The actor or its node went away (not the model's code raising, not the actor's ``__init__`` failing)."""
    if isinstance(err, ray.exceptions.RayTaskError) or not isinstance(err, LOST):
        return False
    return not (isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed)


def check_max_restarts(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"ray.max_restarts: expected an integer >= 0 (restarts of a lost actor), got {value!r}")
    return value


def _fits(resources: dict, num_cpus: float, num_gpus: float) -> bool:
    return resources.get("CPU", 0) >= num_cpus and resources.get("GPU", 0) >= num_gpus


def _free_per_node() -> dict:
    try:
        return ray._private.state.available_resources_per_node()
    except Exception:  # noqa: BLE001 - a private API: without it every candidate looks equally busy
        return {}


def choose_node(num_cpus: float, num_gpus: float, avoid: set[str]) -> str | None:
    """A live node, not in ``avoid``, that could host the actor: one with room for it now first, then the most free
    GPUs and CPUs. None when no other node could ever host it."""
    free, best = _free_per_node(), None
    for node in ray.nodes():
        node_id = node["NodeID"]
        if not node.get("Alive") or node_id in avoid or not _fits(node["Resources"], num_cpus, num_gpus):
            continue
        room = free.get(node_id, {})
        rank = (_fits(room, num_cpus, num_gpus), room.get("GPU", 0), room.get("CPU", 0))
        if best is None or rank > best[0]:
            best = (rank, node_id)
    return best and best[1]


def _where(node: dict) -> str:
    if not node.get("node_id"):
        return "an unknown node (the actor was lost before it reported where it started)"
    return f"node {node['node_id'][:8]} ({node.get('node_ip') or 'unknown IP'})"


@dataclass
class Supervised:
    """One model's (or pack's) actor, started again on a live node when it is lost.

    launch(options, restarts): start an actor with these ``.options`` and its fit; ``(actor, fit ref)``.
    """

    name: str
    num_cpus: float
    num_gpus: float
    max_restarts: int
    launch: Callable[[dict, int], tuple]
    restarts: int = 0
    actor: object = None
    lost_nodes: set[str] = field(default_factory=set)
    _placement: object = None  # the actor's placement() ref: resolved once it has started on a node
    _checked: float = 0.0

    def start(self):
        """Start the actor (away from the nodes it was lost on) and its fit; the fit's ref."""
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_concurrency": 2,
                   # Restarts are the driver's (see the module): Ray's own would wait for the node's health checks.
                   "max_restarts": 0, "max_task_retries": 0}
        node = choose_node(self.num_cpus, self.num_gpus, self.lost_nodes) if self.lost_nodes else None
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        self.actor, task = self.launch(options, self.restarts)
        self._placement = self.actor.placement.remote()
        return task

    def placement(self) -> dict:
        """Where the actor started, once it has: node id and IP, GPU ids; ``{}`` before then."""
        ready, _ = ray.wait([self._placement], timeout=0)
        if not ready:
            return {}
        try:
            return ray.get(ready[0])
        except ray.exceptions.RayError:
            return {}

    def restart(self, err: BaseException):
        """After ``err`` lost the actor: a new actor's fit ref, or :class:`NodeLost` once restarts are used up."""
        node = self.placement()
        if node.get("node_id"):
            self.lost_nodes.add(node["node_id"])
        ray.kill(self.actor)  # the node may still be counted alive: make sure the old one never comes back
        if self.restarts >= self.max_restarts:
            raise NodeLost(
                f"{self.name}: its Ray actor on {_where(node)} was lost ({type(err).__name__}) and ray.max_restarts="
                f"{self.max_restarts} restarts are used up; check that node (`ray status`, its raylet and worker logs,"
                " memory), then rerun the same command to resume from the newest checkpoint, or raise "
                "ray.max_restarts")
        pause = BACKOFF_SECONDS[min(self.restarts, len(BACKOFF_SECONDS) - 1)]
        log.warning("%s: its Ray actor on %s was lost (%s); starting it again on another node in %g s (restart %d "
                    "of %d)", self.name, _where(node), type(err).__name__, pause, self.restarts + 1, self.max_restarts)
        time.sleep(pause)
        self.restarts += 1
        return self.start()

    def check_hostable(self) -> None:
        """A restarted actor that has not started yet waits for a node Ray may never have: once no live node could
        host it (the lost ones declared dead), say so rather than wait forever."""
        now = time.monotonic()
        if not self.restarts or now - self._checked < HOSTABLE_CHECK_SECONDS or self.placement():
            return
        self._checked = now
        if choose_node(self.num_cpus, self.num_gpus, set()) is None:
            raise NodeLost(
                f"{self.name}: its Ray actor was lost and no live node of the cluster can host it again "
                f"(num_cpus={self.num_cpus:g}, num_gpus={self.num_gpus:g}); add or restart a node, then rerun the "
                "same command to resume from the newest checkpoint")
