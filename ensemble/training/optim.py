"""The optimiser and learning-rate schedule a :class:`ensemble.schema.sections.TrainConfig` names."""

from __future__ import annotations

import torch
from torch import nn

from ensemble.schema.sections import TrainConfig


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    opt = train.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int = 1):
    """An epoch-wise schedule, or ``onecycle`` (Smith & Topor, 2019), which steps after every batch."""
    sched = train.scheduler
    if sched.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.optimizer.lr, total_steps=max(1, train.epochs * steps_per_epoch),
            pct_start=sched.pct_start, div_factor=sched.div_factor, final_div_factor=sched.final_div_factor)
    if sched.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    if sched.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=sched.step_size, gamma=sched.gamma)
    if sched.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=sched.milestones, gamma=sched.gamma)
    return None
