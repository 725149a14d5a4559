"""Distillation losses (paper §2): pure functions with their equations, and a registry to choose them by name.

Every registered loss has one signature, ``loss(student_logits, labels, teacher, temperature, alpha)``, and
returns its weighted terms by name; the trainer sums them for the backward pass and logs each one.
``teacher`` carries the teacher's soft targets at the training temperature (``probs``) and its logits
(``logits``: log-probabilities at T = 1, which are logits up to a per-example constant, for any teacher,
ensembles included).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ensemble.base.errors import ConfigError
from ensemble.training.teacher import TeacherOutputs

from .topk import top_of, topk_soft_target_kl


def soft_target_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(p_T ‖ q_T)``, batch mean, with p_T the teacher's soft targets and q_T = softmax(z / T).

    The teacher distribution is the target (first argument of the KL). The T² keeps the soft term's
    gradient, ``∂/∂z_i = (1/T)(q_i − p_i)`` (Eq. 2) times T², on the same scale whatever T is.
    """
    # KL(p ‖ q) = CE(p, q) − H(p): the fused soft-label cross-entropy carries the gradient, and the teacher
    # entropy (a constant) makes the logged value the KL itself. Cheaper than an elementwise KL per step.
    with torch.no_grad():
        entropy = -torch.xlogy(teacher_probs, teacher_probs).sum(dim=1).mean()
    return temperature**2 * (F.cross_entropy(student_logits / temperature, teacher_probs) - entropy)


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``CE(y, q_1) = −log softmax(z)_y``, batch mean, at T = 1; with label smoothing ε the target is
    ``(1 − ε)·onehot(y) + ε/C``."""
    return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


def logit_matching(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``½ Σ_i (z_i − v_i)²`` on per-example zero-meaned logits, batch mean (Caruana; the high-T limit, Eq. 4)."""
    z = student_logits - student_logits.mean(dim=1, keepdim=True)
    v = teacher_logits - teacher_logits.mean(dim=1, keepdim=True)
    return 0.5 * (z - v).pow(2).sum(dim=1).mean()


LOSSES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {}


def register_loss(name: str):
    def decorator(fn):
        LOSSES[name] = fn
        return fn

    return decorator


def get_loss(name: str):
    if name not in LOSSES:
        raise ConfigError(f"student.loss: unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


@register_loss("kd")
def kd(student_logits, labels, teacher: TeacherOutputs, temperature: float, alpha: float,
       label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``L = α · T² · KL(p_T ‖ q_T) + (1 − α) · CE(y, q_1)``, both terms from the same student logits; with top-K
    targets (``student.cache.top_k``) the KL is taken on the teacher's top K classes plus the rest
    (:func:`distill.topk.topk_soft_target_kl`)."""
    top = top_of(teacher)
    if top is not None:
        soft = topk_soft_target_kl(student_logits, top, temperature)
    else:
        soft = soft_target_kl(student_logits, teacher.probs, temperature)
    terms = {"soft": alpha * soft}
    if alpha < 1:
        terms["hard"] = (1 - alpha) * hard_label_ce(student_logits, labels, label_smoothing)
    return terms


@register_loss("logit_matching")
def logit_matching_loss(student_logits, labels, teacher: TeacherOutputs, temperature: float,
                        alpha: float, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``L = α · ½‖z − v‖² + (1 − α) · CE(y, q_1)`` on zero-meaned logits (temperature unused)."""
    if teacher.logits is None:
        raise ConfigError("student.loss: logit_matching needs the teacher's full logits; unset student.cache.top_k")
    terms = {"logits": alpha * logit_matching(student_logits, teacher.logits)}
    if alpha < 1:
        terms["hard"] = (1 - alpha) * hard_label_ce(student_logits, labels, label_smoothing)
    return terms


@register_loss("ce")
def ce(student_logits, labels, teacher: TeacherOutputs | None, temperature: float,
       alpha: float, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """Hard labels only: the baseline student of the paper's comparison."""
    return {"hard": hard_label_ce(student_logits, labels, label_smoothing)}
