"""How trustworthy a model's probabilities are, and how closely a student follows its teacher.

Each function takes probabilities (rows sum to 1) for N examples and K classes and returns a mean over the N rows.
"""

from __future__ import annotations

import torch

ECE_BINS = 15  # Guo et al. (2017), "On Calibration of Modern Neural Networks"


def brier_score(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Brier (1950), summed over classes: ``(1/N) Σ_n Σ_k (p_nk − [y_n = k])²``, in [0, 2]."""
    one_hot = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return float(((probs - one_hot) ** 2).sum(dim=1).mean())


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """The top-1 confidence ``c_n = max_k p_nk`` cut into ``bins`` equal-width bins ``((b−1)/B, b/B]``; per bin its
    count, mean confidence and accuracy (the points of a reliability diagram). Empty bins are left out."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).to(probs.dtype)
    # ceil(c·B) − 1 puts c = b/B in bin b−1 (closed on the right); a confidence of 0 cannot occur for probabilities
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            rows.append({"bin": b, "lower": b / bins, "upper": (b + 1) / bins, "count": count,
                         "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())})
    return rows


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    """``ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over the equal-width confidence bins of
    :func:`reliability_bins` (Naeini et al. 2015; Guo et al. 2017 use B = 15)."""
    n = len(y)
    return sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in reliability_bins(probs, y, bins))


def top1_agreement(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> float:
    """``(1/N) Σ_n [argmax_k p_nk = argmax_k q_nk]``: how often the student picks the teacher's class."""
    return float((teacher_probs.argmax(dim=1) == student_probs.argmax(dim=1)).float().mean())


def mean_kl(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> float:
    """``(1/N) Σ_n Σ_k p_nk (log p_nk − log q_nk)``: KL(teacher ‖ student) in nats, with ``0 log 0 = 0``."""
    p = teacher_probs.double()
    log_p = torch.where(p > 0, p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return float((p * (log_p - student_log_probs.double())).sum(dim=1).mean())
