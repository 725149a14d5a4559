"""Soft targets (paper §1, §2): temperature softmax and the two ways to average an ensemble."""

from __future__ import annotations

from typing import Literal, Sequence

import torch

Mean = Literal["arithmetic", "geometric"]


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 1: ``q_i = exp(z_i / T) / Σ_j exp(z_j / T)``."""
    return torch.softmax(logits / temperature, dim=-1)


def arithmetic_mean(member_logits: Sequence[torch.Tensor] | torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``p = (1/M) Σ_m softmax(z_m / T)``: the q minimising ``Σ_m KL(p_m ‖ q)``."""
    stacked = torch.stack(list(member_logits)) if not torch.is_tensor(member_logits) else member_logits
    return temperature_softmax(stacked, temperature).mean(dim=0)


def geometric_mean(member_logits: Sequence[torch.Tensor] | torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``p ∝ Π_m softmax(z_m / T)^(1/M)``, renormalised: the q minimising ``Σ_m KL(q ‖ p_m)``.

    Computed as the softmax of the mean log-probability, which is exact and stable.
    """
    stacked = torch.stack(list(member_logits)) if not torch.is_tensor(member_logits) else member_logits
    return torch.softmax(torch.log_softmax(stacked / temperature, dim=-1).mean(dim=0), dim=-1)


def ensemble_probs(member_logits, temperature: float = 1.0, mean: Mean = "arithmetic") -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mean == "arithmetic":
        return arithmetic_mean(member_logits, temperature)
    if mean == "geometric":
        return geometric_mean(member_logits, temperature)
    raise ValueError(f"mean must be 'arithmetic' or 'geometric', got {mean!r}")
