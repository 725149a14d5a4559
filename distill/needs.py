"""What each command, stage and teacher needs of the config, checked once before anything trains.

Each names boolean switches of the config that must be true: a command and a stage here, a teacher through
``register_teacher(needs=...)``; a switch that turns a stage on needs what that stage needs. The first switch
missing is one line naming it, before any folder, MLflow run or Ray worker exists.
"""

from __future__ import annotations

from pydantic import BaseModel

from ensemble.base.errors import ConfigError

from .teachers import TEACHERS

# (switch, why) per command and per stage switch
COMMAND_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "specialists": (("specialists.enabled", "it trains that stage"),),
}
STAGE_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "specialists.enabled": (("generalist.enabled", "each specialist starts from the generalist's weights"),),
}
# the stages between the ensemble and the students that each command runs when the config enables them
COMMAND_STAGES = {"ensemble": (), "specialists": ("specialists",), "run": ("specialists",), "sweep": ()}


def switch(config, key: str, who: str = "a need") -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ConfigError(f"{who}: needs {key!r}, which is no switch of the config")
        node = getattr(node, part)
    return bool(node)


def wanted(config, command: str, teachers: dict[str, str]) -> list[tuple[str, str, str]]:
    """(switch, who needs it, why) for what ``command`` runs with this config, dependencies included.

    ``teachers``: the teacher of every student the command trains, by name, with the field that chose it."""
    needs = [(key, f"distill {command}", why) for key, why in COMMAND_NEEDS.get(command, ())]
    if "specialists" in COMMAND_STAGES[command] and config.specialists.enabled:
        needs.append(("specialists.enabled", "the config", "it is set"))
    for teacher, field in teachers.items():
        if teacher in TEACHERS:
            needs += [(key, f"{field}: {teacher!r}", "it is built from that stage") for key in TEACHERS[teacher].needs]
    for key, _, _ in needs:  # grows while it is read: a needed stage's own needs follow it
        needs += [(more, f"{key}: true", why) for more, why in STAGE_NEEDS.get(key, ())
                  if not any(more == k for k, _, _ in needs)]
    return needs


def check_needs(config, command: str, teachers: dict[str, str]) -> set[str]:
    """Refuse a config whose stages or teachers lack a stage they need (``ConfigError``, one line); else the
    switches the command needs, so that the caller trains exactly the stages they name."""
    needs = wanted(config, command, teachers)
    for key, who, why in needs:
        if not switch(config, key, who):
            raise ConfigError(f"{who} needs {key}: true ({why}); set it (--set {key}=true)")
    return {key for key, _, _ in needs}
