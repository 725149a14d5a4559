"""What every ``evaluate`` returns: one :class:`Score` per model (accuracy, errors, NLL, ECE, Brier), plus the
stage's extras."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ensemble.metrics.calibration import brier_score, expected_calibration_error

SCORE_KEYS = ("accuracy", "errors", "nll", "ece", "brier")  # what results.json records per model, as test_<key>


@dataclass(frozen=True)
class Score:
    accuracy: float
    errors: int
    nll: float  # mean negative log-likelihood of the true class, in nats
    examples: int
    ece: float = float("nan")  # expected calibration error, 15 bins (ensemble.metrics.calibration)
    brier: float = float("nan")  # Brier score summed over classes

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, y: torch.Tensor) -> "Score":
        """``accuracy = mean[argmax = y]``, ``nll = −mean log p(y)``, ECE and Brier, over the N rows."""
        n = len(y)
        if not n:
            return cls(0.0, 0, float("nan"), 0)
        log_probs = log_probs.float()
        correct = int((log_probs.argmax(dim=1) == y).sum())
        nll = float(-log_probs.gather(1, y[:, None]).mean())
        probs = log_probs.exp()
        return cls(correct / n, n - correct, nll, n, expected_calibration_error(probs, y), brier_score(probs, y))

    def fields(self, prefix: str = "test_") -> dict:
        """``{prefix + key: value}`` for :data:`SCORE_KEYS`, the form results.json and MLflow metrics take."""
        return {f"{prefix}{key}": getattr(self, key) for key in SCORE_KEYS}

    @classmethod
    def from_logits(cls, logits: torch.Tensor, y: torch.Tensor) -> "Score":
        return cls.from_log_probs(torch.log_softmax(logits.float(), dim=1), y)

    @classmethod
    def from_probs(cls, probs: torch.Tensor, y: torch.Tensor) -> "Score":
        return cls.from_log_probs(torch.log(probs.float().clamp_min(1e-30)), y)


@dataclass
class Evaluation:
    """``scores``: model name -> :class:`Score`; ``details``: what the stage adds (per class, bias shift, ...)."""

    scores: dict[str, Score]
    details: dict = field(default_factory=dict)

    def __getitem__(self, model: str) -> Score:
        return self.scores[model]

    def __contains__(self, model: str) -> bool:
        return model in self.scores

    def to_dict(self) -> dict:
        return {"scores": {name: asdict(score) for name, score in self.scores.items()}, "details": self.details}
