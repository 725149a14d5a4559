"""``Distiller``: train one small student on a teacher's soft targets (paper §2), through the shared Ray trainer."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ensemble.api import Ensemble, as_train_config
from ensemble.checkpoint import state_fingerprint, tensor_fingerprint
from ensemble.config import TrainConfig, fingerprint
from ensemble.data import Split, check_split, materialize
from ensemble.errors import DataError
from ensemble.fit import FitOptions, fit_specs
from ensemble.trainer import TrainResult, TrainSpec, predict_logits
from specialists.api import SpecialistEnsemble
from specialists.dustbin import find_head

from .adversarial import AdversarialObjective
from .export import export_torchscript
from .hints import HintObjective, hint_student_factory, load_guided_student
from .losses import TeacherOutputs
from .objective import DistillationObjective
from .teachers import OnlineTeacher, TeacherCache, teacher_outputs
from .transfer import SubsetSampler, choose_bias_shift, left_out_classes, shifted, transfer_indices


METHODS = ("kd", "fitnets", "adversarial")


def cached_teacher_id(kind: str, outputs: TeacherOutputs) -> str:
    """A cached teacher is named by every row of its targets, so a teacher that changed anywhere (not only in its
    first rows) never reuses a student distilled from the old one."""
    return f"{kind}:{tensor_fingerprint(outputs.probs)}"


class Distiller:
    """Distil ``teacher`` (an :class:`Ensemble`, a :class:`SpecialistEnsemble`, or any ``nn.Module``) into a student.

    >>> d = Distiller(ens, student_factory, temperature=20, alpha=0.9).fit(train, val, test)
    >>> d.evaluate(test); d.export("student.pt")
    """

    def __init__(
        self,
        teacher: Ensemble | SpecialistEnsemble | nn.Module,
        student_factory: Callable[[], nn.Module],
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        loss: str = "kd",
        mean: str = "arithmetic",
        train: TrainConfig | dict | None = None,
        baseline: bool = False,
        fraction: float = 1.0,
        omit_classes: list[int] = (),
        only_classes: list[int] | None = None,
        use_cache: bool | None = None,
        seed: int = 0,
        jitter: int = 0,
        method: str = "kd",
        fitnets: dict | None = None,
        adversarial: dict | None = None,
        **options,
    ):
        """``use_cache``: None uses the teacher's cached logits when they were made on this training split;
        True requires them (a cache for other data is an error); False always runs the teacher.
        ``method``: ``kd`` (the ``loss`` on soft targets), ``fitnets`` (a hint stage first, then ``loss``; ``fitnets``
        holds hint_layer, guided_layer, epochs, kernel_size) or ``adversarial`` (a discriminator on logits;
        ``adversarial`` holds variant, alpha, beta, gamma, lr, hidden, pretrain_steps, gp_weight).
        ``options`` are :class:`ensemble.fit.FitOptions` (output_dir, num_cpus, num_gpus, tracker, ...)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "fitnets" and not (fitnets or {}).get("hint_layer"):
            raise ValueError("method 'fitnets' needs fitnets={'hint_layer': ..., 'guided_layer': ...}")
        self.method, self.fitnets, self.adversarial = method, dict(fitnets or {}), dict(adversarial or {})
        DistillationObjective(loss, temperature, alpha)  # validates the three before any work
        self.teacher = teacher
        self.student_factory = student_factory
        self.temperature, self.alpha, self.loss, self.mean = temperature, alpha, loss, mean
        self.train_config = as_train_config(train)
        self.baseline = baseline
        self.fraction, self.omit_classes, self.only_classes = fraction, list(omit_classes), only_classes
        self.use_cache = use_cache
        self.seed, self.jitter = seed, jitter
        self.options = FitOptions(**{"output_dir": "runs/student", **options})
        self.results_: list[TrainResult] = []
        self.run_ids_: dict[str, str] = {}
        self.bias_shift_ = 0.0

    # --- the teacher's side ---

    def _kind(self) -> str:
        if isinstance(self.teacher, Ensemble):
            return "ensemble"
        if isinstance(self.teacher, SpecialistEnsemble):
            return "specialists"
        return "generalist"

    def online_teacher(self) -> OnlineTeacher:
        kind, t = self._kind(), self.teacher
        if kind == "ensemble":
            return OnlineTeacher(kind, members=t.members_, mean=self.mean)
        if kind == "specialists":
            return OnlineTeacher(kind, t.generalist, specialists=t.specialists_, groups=t.groups, top_n=t.top_n)
        return OnlineTeacher(kind, t.eval())

    def teacher_cache(self, train: Split, val: Split | None = None) -> TeacherCache:
        """Targets for every training example, row i = example i: the teacher's own cache when it has one.
        With ``val`` (for ``train.final_fit``), validation example j follows as row ``len(train) + j``."""
        split_fingerprint = train.fingerprint()
        kind = self._kind()
        cached = kind == "ensemble" and self.teacher.split_fingerprints_.get("train") == split_fingerprint
        if self.use_cache and not cached:
            have = getattr(self.teacher, "split_fingerprints_", {}).get("train", "none")
            raise DataError(f"teacher cache: made for another dataset or split (fingerprint {have}, the transfer "
                            f"data has {split_fingerprint}); pass use_cache=None to run the teacher instead")
        if cached and self.use_cache is not False:
            parts = ["train"] + (["val"] if val is not None else [])
            logits = [list(self.teacher.cached_logits(p).values())[: len(self.teacher.members_)] for p in parts]
            members = torch.cat([torch.stack(split_logits) for split_logits in logits], dim=1)
            outputs = teacher_outputs("ensemble", {"members": members}, self.temperature, self.mean)
        else:
            teacher, chunks = self.online_teacher(), []
            x = train.x if val is None else torch.cat([train.x, val.x])
            for start in range(0, len(x), 4096):
                chunks.append(teacher(x[start : start + 4096], self.temperature))
            outputs = type(chunks[0])(torch.cat([c.probs for c in chunks]), torch.cat([c.logits for c in chunks]))
        return TeacherCache(outputs, split_fingerprint)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's log-probabilities at T = 1 (its predictions) for any inputs."""
        return self.online_teacher()(x, 1.0).logits

    # --- training ---

    def fit(self, transfer, val, test=None) -> "Distiller":
        splits = {"train": materialize(transfer, "transfer"), "val": materialize(val, "val")}
        if test is not None:
            splits["test"] = materialize(test, "test")
        num_classes = int(self.teacher_logits(splits["val"].x[:2]).shape[1])
        for name, split in splits.items():
            check_split(split, num_classes, name)
        teacher_id = self._kind()
        if self.jitter:
            online = self.online_teacher()
            # The teacher's weights name it, so a retrained teacher never reuses a student distilled from the old one.
            objective = DistillationObjective(self.loss, self.temperature, self.alpha, teacher=online,
                                              teacher_id=f"{teacher_id}:{state_fingerprint(online.state_dict())}")
        else:
            cache = self.teacher_cache(splits["train"], splits["val"] if self.train_config.final_fit else None)
            objective = DistillationObjective(self.loss, self.temperature, self.alpha, cache=cache.outputs,
                                              teacher_id=cached_teacher_id(teacher_id, cache.outputs))
        rule = {"fraction": self.fraction, "omit_classes": self.omit_classes, "only_classes": self.only_classes,
                "seed": self.seed}
        self.transfer_indices_ = transfer_indices(splits["train"].y, **rule)
        sampler = SubsetSampler(self.transfer_indices_, rule)
        data_fingerprint = fingerprint({name: s.fingerprint() for name, s in splits.items()})
        if self.method == "adversarial":
            objective = AdversarialObjective(num_classes, **self.adversarial, teacher_id=objective.teacher_id,
                                             cache=objective.cache, teacher=objective.teacher)
        student_factory, identity = self.student_factory, {}
        if self.method == "fitnets":
            state = self._fit_hint_stage(splits, sampler, data_fingerprint, num_classes, teacher_id)
            student_factory = partial(load_guided_student, self.student_factory, state)
            identity = {"hint_stage": state_fingerprint(state)}
        specs = [TrainSpec("student", "student", student_factory, self.train_config, self.seed, self.jitter,
                           objective=objective, sampler=sampler, tags={"teacher": teacher_id, "method": self.method},
                           identity=identity)]
        if self.baseline:
            specs.append(TrainSpec("student_baseline", "student_baseline", self.student_factory, self.train_config,
                                   self.seed, self.jitter, objective=DistillationObjective("ce"), sampler=sampler))
        fitted = fit_specs(specs, splits, data_fingerprint, num_classes, self.options)
        self.results_, self.run_ids_ = fitted.results, {**self.run_ids_, **fitted.run_ids}
        self.student_ = fitted.models[0]
        self.baseline_ = fitted.models[1] if self.baseline else None
        self.num_classes_ = num_classes
        self.input_shape_ = tuple(splits["train"].x.shape[1:])
        self.val_labels_ = splits["val"].y
        self._shift_left_out_classes()
        return self

    def hint_teacher(self) -> nn.Module:
        """The network whose hidden layer gives the hints: member 0 of an ensemble, else the generalist."""
        kind = self._kind()
        if kind == "ensemble":
            return self.teacher.members_[0]
        return self.teacher.generalist if kind == "specialists" else self.teacher

    def _fit_hint_stage(self, splits, sampler, data_fingerprint: str, num_classes: int, teacher_id: str) -> dict:
        """FitNets stage 1: the student up to its guided layer, and the regressor, on the hint loss alone."""
        cfg = self.fitnets
        teacher = copy.deepcopy(self.hint_teacher()).eval()
        factory = hint_student_factory(self.student_factory, teacher, cfg["hint_layer"], cfg["guided_layer"],
                                       tuple(splits["train"].x.shape[1:]), cfg.get("kernel_size", 3))
        # The last epoch's weights: the hint stage's outputs are not predictions, so validation accuracy cannot choose.
        train = self.train_config.model_copy(update={"epochs": cfg.get("epochs", 5), "select": "last",
                                                     "early_stopping_patience": None, "final_fit": False})
        objective = HintObjective(teacher, cfg["hint_layer"], cfg["guided_layer"],
                                  f"{teacher_id}:{state_fingerprint(teacher.state_dict())}")
        spec = TrainSpec("student_hint", "student_hint", factory, train, self.seed, self.jitter, objective=objective,
                         sampler=sampler)
        fitted = fit_specs([spec], splits, data_fingerprint, num_classes, self.options)
        self.run_ids_.update(fitted.run_ids)
        self.hint_result_ = fitted.results[0]
        return fitted.results[0].state_dict

    def _shift_left_out_classes(self) -> None:
        """Raise the biases of classes the transfer set left out, by the amount best on validation data."""
        self.left_out_ = left_out_classes(self.num_classes_, self.omit_classes, self.only_classes)
        if not self.left_out_:
            return
        self.bias_shift_, self.bias_shift_table_ = choose_bias_shift(self.results_[0].logits["val"], self.val_labels_,
                                                                    self.left_out_)
        _, head = find_head(self.student_)
        if head.bias is None:
            raise DataError("student: the classifier has no bias to shift for the left-out classes")
        with torch.no_grad():
            head.bias[self.left_out_] += self.bias_shift_

    # --- evaluation and export ---

    def evaluate(self, test) -> dict:
        """Student (before and after any bias shift), baseline and teacher on ``test``."""
        split = materialize(test, "test")
        student_logits = predict_logits(self.student_, split.x)
        report = {"student": _score(student_logits, split.y), "bias_shift": self.bias_shift_}
        if self.left_out_:
            unshifted = shifted(student_logits, self.left_out_, -self.bias_shift_)
            report["student_before_shift"] = _score(unshifted, split.y)
            mask = torch.isin(split.y, torch.tensor(self.left_out_))
            report["left_out_errors_before_shift"] = int((unshifted.argmax(1)[mask] != split.y[mask]).sum())
            report["left_out_errors"] = int((student_logits.argmax(1)[mask] != split.y[mask]).sum())
            report["left_out_examples"] = int(mask.sum())
        if self.baseline_ is not None:
            report["baseline"] = _score(predict_logits(self.baseline_, split.x), split.y)
        report["teacher"] = _score(self.teacher_logits(split.x), split.y)
        return report

    def export(self, path: str | Path, example: torch.Tensor | None = None) -> Path:
        """The student as TorchScript (with any bias shift), checked to give the same outputs."""
        if example is None:
            example = torch.zeros(2, *self.input_shape_)
        return export_torchscript(self.student_, example, path)


def _score(logits: torch.Tensor, y: torch.Tensor) -> dict:
    correct = int((logits.argmax(1) == y).sum())
    return {"accuracy": correct / max(1, len(y)), "errors": len(y) - correct}
