"""A model's classifier layer, found for whichever stage needs it (a specialist's new head, a student's bias shift)."""

from __future__ import annotations

from torch import nn

from ensemble.base.errors import ModelError


def find_head(model: nn.Module, head: str | None = None, field: str = "head", owner: str = "model",
              advice: str = "") -> tuple[str, nn.Linear]:
    """The classifier layer: ``head`` by module name, else the last ``nn.Linear`` registered in the model.

    Errors name ``field`` (the caller's config field that asked for the head, so a student's error never points at
    the specialists' setting), ``owner`` (which model) and end with ``advice`` when given."""
    if head is not None:
        try:
            layer = model.get_submodule(head)
        except AttributeError:
            raise ModelError(f"{field}: the {owner} has no module named {head!r}") from None
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"{field}: {head!r} is a {type(layer).__name__}, not an nn.Linear")
        return head, layer
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{field}: the {owner} has no linear classifier head (nn.Linear)"
                         + (f"; {advice}" if advice else ""))
    return linears[-1]
