"""Adversarial KD (after Xu, Hsu and Huang, 2017): a discriminator on logits tells teacher (real) from student (fake).

Three variants, as in PAPER.md:

- ``pretrained``: the discriminator learns teacher vs the initial student for ``pretrain_steps`` batches, then is
  frozen; the student alone is trained against it.
- ``gan``: joint training, one discriminator step then one student step per batch.
- ``wgan``: a Wasserstein critic kept (softly) 1-Lipschitz by a gradient penalty (WGAN-GP, not weight clipping).

The discriminator's own loss is logged as a term without gradient, so the student never optimises it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ensemble.base.errors import ConfigError
from ensemble.schema.sections import Section
from ensemble.training.objectives import Objective

from .losses import TeacherOutputs, hard_label_ce
from .method import Method, MethodContext, MethodPlan, register_method

VARIANTS = ("pretrained", "gan", "wgan")


def gan_discriminator_loss(d_teacher: torch.Tensor, d_student: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``L_D = −γ [log σ(D(T(x))) + log(1 − σ(D(S(x))))]``, batch mean (``log(1 − σ(a)) = log σ(−a)``)."""
    return -gamma * (F.logsigmoid(d_teacher) + F.logsigmoid(-d_student)).mean()


def gan_student_loss(student_logits: torch.Tensor, labels: torch.Tensor, d_student: torch.Tensor, alpha: float,
                     beta: float) -> dict[str, torch.Tensor]:
    """``L_S = β · CE(y, S(x)) − α · log σ(D(S(x)))``, each term by name."""
    return {"hard": beta * hard_label_ce(student_logits, labels), "adversarial": -alpha * F.logsigmoid(d_student).mean()}


def critic_loss(d_teacher: torch.Tensor, d_student: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``L_D = −γ [D(T(x)) − D(S(x))]``, batch mean: the critic raises teacher scores and lowers student ones."""
    return -gamma * (d_teacher.mean() - d_student.mean())


def wgan_student_loss(student_logits: torch.Tensor, labels: torch.Tensor, d_student: torch.Tensor, alpha: float,
                      beta: float) -> dict[str, torch.Tensor]:
    """``L_S = β · CE(y, S(x)) − α · D(S(x))``."""
    return {"hard": beta * hard_label_ce(student_logits, labels), "adversarial": -alpha * d_student.mean()}


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``E[(‖∇D(x̂)‖₂ − 1)²]`` at ``x̂ = a·real + (1 − a)·fake`` (Gulrajani et al.): the Lipschitz constraint."""
    mixed = (alphas * real + (1 - alphas) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.norm(dim=1) - 1).pow(2).mean()


class Discriminator(nn.Module):
    """An MLP on logits: C -> hidden -> hidden -> 1 score (a logit for GAN, a critic value for WGAN)."""

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits).squeeze(1)


def _centred(logits: torch.Tensor) -> torch.Tensor:
    # Logits are defined up to a per-example constant; the teacher's are log-probabilities. Centre both.
    return logits - logits.mean(dim=1, keepdim=True)


class AdversarialObjective(Objective):
    """``(student logits, {"hard", "adversarial", "discriminator"})``; the discriminator trains inside the call."""

    def __init__(self, num_classes: int, variant: str = "gan", alpha: float = 0.1, beta: float = 1.0,
                 gamma: float = 1.0, lr: float = 1e-3, hidden: int = 64, pretrain_steps: int = 200,
                 gp_weight: float = 10.0, cache: TeacherOutputs | None = None, teacher=None, teacher_id: str = ""):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.num_classes, self.variant = num_classes, variant
        self.alpha, self.beta, self.gamma, self.lr, self.hidden = alpha, beta, gamma, lr, hidden
        self.pretrain_steps, self.gp_weight = pretrain_steps, gp_weight
        self.cache, self.teacher, self.teacher_id = cache, teacher, teacher_id
        self.discriminator: Discriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0

    def to(self, device):
        # Built here, after the trainer seeded torch, so the discriminator's initial weights are reproducible.
        self.device = torch.device(device)
        self.discriminator = Discriminator(self.num_classes, self.hidden).to(device)
        # Adam with beta1 = 0.5 (and 0.9 for the critic, as in WGAN-GP): the usual stable GAN settings.
        betas = (0.5, 0.9) if self.variant == "wgan" else (0.5, 0.999)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=betas)
        if self.cache is not None:
            self.cache = TeacherOutputs(self.cache.probs.to(device), self.cache.logits.to(device))
        if self.teacher is not None:
            self.teacher = self.teacher.to(device)
        return self

    def _teacher_logits(self, x, idx) -> torch.Tensor:
        if self.teacher is not None:
            return self.teacher(x, 1.0).logits
        return self.cache.logits[idx.to(self.cache.logits.device)]

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d = self.discriminator
        if self.variant == "wgan":
            loss = critic_loss(d(real), d(fake), self.gamma)
            alphas = torch.rand(len(real), 1, device=real.device)
            loss = loss + self.gp_weight * gradient_penalty(d, real, fake, alphas)
        else:
            loss = gan_discriminator_loss(d(real), d(fake), self.gamma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # nothing of this step may leak into the student's
        return loss.detach()

    def __call__(self, model, x, y, idx):
        logits = model(x)
        real = _centred(self._teacher_logits(x, idx).detach())
        fake = _centred(logits)
        frozen = self.variant == "pretrained" and self.steps >= self.pretrain_steps
        terms: dict[str, torch.Tensor] = {}
        if not frozen:
            terms["discriminator"] = self._discriminator_step(real, fake.detach())
        self.steps += 1
        if self.variant == "pretrained" and not frozen:
            # Still pre-training the discriminator: the student learns from the labels only.
            terms["hard"] = self.beta * hard_label_ce(logits, y)
            return logits, terms
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        d_student = self.discriminator(fake)
        for p in self.discriminator.parameters():
            p.requires_grad_(True)
        student_loss = wgan_student_loss if self.variant == "wgan" else gan_student_loss
        terms.update(student_loss(logits, y, d_student, self.alpha, self.beta))
        return logits, terms

    def describe(self) -> dict:
        return {"objective": "adversarial", "variant": self.variant, "alpha": self.alpha, "beta": self.beta,
                "gamma": self.gamma, "lr": self.lr, "hidden": self.hidden, "pretrain_steps": self.pretrain_steps,
                "gp_weight": self.gp_weight, "teacher": self.teacher_id, "online": self.teacher is not None}

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps = state["steps"]


class AdversarialConfig(Section):
    variant: Literal["pretrained", "gan", "wgan"] = "gan"
    alpha: float = Field(0.1, ge=0, description="weight of the adversarial term (0.1: at 1 it swamps the labels)")
    beta: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")
    gamma: float = Field(1.0, gt=0, description="scale of the discriminator's loss")
    lr: float = Field(1e-3, gt=0, description="discriminator learning rate (Adam)")
    hidden: int = Field(64, gt=0, description="discriminator hidden units")
    pretrain_steps: int = Field(200, ge=0, description="'pretrained': batches before the discriminator freezes")
    gp_weight: float = Field(10.0, ge=0, description="'wgan': gradient-penalty weight (the Lipschitz constraint)")


@register_method("adversarial")
class Adversarial(Method):
    """The student against a discriminator on logits, with the teacher's logits as the real examples."""

    Options = AdversarialConfig

    def plan(self, context: MethodContext, distillation) -> MethodPlan:
        if distillation.cache is not None and not isinstance(distillation.cache, TeacherOutputs):
            raise ConfigError("student.method: adversarial needs the teacher's logits in memory; set "
                              "student.cache.store: memory and unset student.cache.top_k")
        objective = AdversarialObjective(context.num_classes, **self.options.model_dump(),
                                         teacher_id=distillation.teacher_id, cache=distillation.cache,
                                         teacher=distillation.teacher)
        return MethodPlan(objective, context.student_factory)
