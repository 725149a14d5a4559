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
# the stages past the ensemble that each command runs
COMMAND_STAGES = {"ensemble": (), "specialists": ("specialists",), "run": ("specialists", "student"),
                  "sweep": ("student",)}


def switch(config, key: str, who: str = "a need") -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ConfigError(f"{who}: needs {key!r}, which is no switch of the config")
        node = getattr(node, part)
    return bool(node)


def wanted(config, command: str) -> list[tuple[str, str, str]]:
    """(switch, who needs it, why) for what ``command`` runs with this config, dependencies included."""

    stages = COMMAND_STAGES[command]
    needs = [(key, f"distill {command}", why) for key, why in COMMAND_NEEDS.get(command, ())]
    if "specialists" in stages and config.specialists.enabled:
        needs.append(("specialists.enabled", "the config", "it is set"))
    teacher = config.student.teacher
    if "student" in stages and (config.student.enabled or command == "sweep") and teacher in TEACHERS:
        needs += [(key, f"student.teacher: {teacher!r}", "it is built from that stage")
                  for key in TEACHERS[teacher].needs]
    for key, _, _ in needs:  # grows while it is read: a needed stage's own needs follow it
        needs += [(more, f"{key}: true", why) for more, why in STAGE_NEEDS.get(key, ())
                  if not any(more == k for k, _, _ in needs)]
    return needs


def check_needs(config, command: str) -> None:
    """Refuse a config whose stages or teacher lack a stage they need (``ConfigError``, one line)."""
    for key, who, why in wanted(config, command):
        if not switch(config, key, who):
            raise ConfigError(f"{who} needs {key}: true ({why}); set it (--set {key}=true)")
