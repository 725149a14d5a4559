"""``Distiller``: train one small student on a teacher's soft targets (paper §2), through the shared Ray trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ensemble.base import storage
from ensemble.base.checkpoint import state_fingerprint, tensor_fingerprint
from ensemble.base.errors import DataError
from ensemble.base.identity import fingerprint
from ensemble.cluster.connect import connect_ray
from ensemble.data.inputs import as_inputs
from ensemble.data.rows import as_input
from ensemble.data.split import Split
from ensemble.data.streaming import in_order
from ensemble.engine.estimator import Estimator, output_width
from ensemble.engine.fit import FitOptions
from ensemble.metrics.calibration import mean_kl, reliability_bins, top1_agreement
from ensemble.metrics.quality import check as check_quality
from ensemble.metrics.scores import Evaluation, Score
from ensemble.models.heads import find_head
from ensemble.training.teacher import TeacherOutputs, as_teacher, outputs_in_batches
from ensemble.training.trainer import TrainSpec, predict_logits

from .cache import write_targets, write_targets_on_ray
from .config import StudentConfig
from .export import publish_api_student
from .formats import export_model
from .method import METHODS, MethodContext, build_method
from .objective import DistillationObjective
from .transfer import SubsetSampler, choose_bias_shift, left_out_classes, shifted, transfer_indices


def following(log_probs: dict[str, torch.Tensor]) -> dict:
    """How closely the student (and the hard-label baseline) follow the teacher: top-1 agreement and the mean
    KL(teacher ‖ model) at T = 1, from each model's log-probabilities on the same rows."""
    teacher = log_probs["teacher"].exp()
    measures = {}
    for name, prefix in (("student", ""), ("baseline", "baseline_")):
        if name in log_probs:
            measures[f"{prefix}agreement"] = top1_agreement(teacher, log_probs[name].exp())
            measures[f"{prefix}kl_from_teacher"] = mean_kl(teacher, log_probs[name])
    return measures


def cached_teacher_id(kind: str, outputs: TeacherOutputs) -> str:
    """A cached teacher is named by every row of its targets, so a teacher that changed anywhere (not only in its
    first rows) never reuses a student distilled from the old one."""
    return f"{kind}:{tensor_fingerprint(outputs.probs)}"


# Keywords of the Python API that name a field of a nested section.
ALIASES = {"fraction": "transfer.fraction", "omit_classes": "transfer.omit_classes",
           "only_classes": "transfer.only_classes"}
# The student's setting that asks for its classifier head: the transfer set's left-out classes get a bias shift.
HEAD_FIELD = "student.transfer"


def student_head(student: nn.Module) -> nn.Linear:
    """The student's classifier, whose biases the shift for the left-out classes raises: errors name the student's
    own setting (``student.transfer``), never another stage's."""
    _, head = find_head(student, None, HEAD_FIELD, "student", "its biases are shifted for the classes the transfer "
                        "set leaves out (omit_classes / only_classes)")
    if head.bias is None:
        raise DataError(f"{HEAD_FIELD}: the student's classifier has no bias to shift for the left-out classes")
    return head


class Distiller(Estimator):
    """Distil ``teacher`` (anything with the :class:`ensemble.training.teacher.Teacher` protocol, such as an
    :class:`Ensemble` or a :class:`SpecialistEnsemble`, or any ``nn.Module``) into a student.

    Takes the config's ``student`` section whole (:class:`distill.config.StudentConfig`, a dict, or keywords that
    name its fields: ``temperature``, ``alpha``, ``loss``, ``method``, ``train``, ``fraction``, a method's options
    under its name such as ``fitnets={...}``), so the CLI and the API share one mapping.

    >>> d = Distiller(ens, student_factory, {"temperature": 20, "alpha": 0.9}).fit(train, val, test)
    >>> d.evaluate(test); d.export("student.pt2")
    >>> d.predict_proba(x, temperature=1); d.predict(x)  # the student's softmax(z / T) and its argmax
    """

    schema, section, output_dir = StudentConfig, "student", "runs/student"
    fitted_attribute = "student_"

    def __init__(self, teacher, student_factory: Callable[[], nn.Module], config: StudentConfig | dict | None = None,
                 *, seed: int = 0, use_cache: bool | None = None, options: FitOptions | None = None, **kwargs):
        """``use_cache``: None uses the teacher's cached outputs when it has them for this training split; True
        requires them (none is an error); False always runs the teacher. ``options``: where and how the student
        trains (:class:`ensemble.engine.fit.FitOptions`; by default ``runs/student`` on the section's resources).
        Keywords that are not fields of the section name fields of ``options`` (output_dir, num_cpus, ...)."""
        # Methods register by name (plugins too), so their aliases are read when a Distiller is made.
        self._configure(config, kwargs, options, {**ALIASES, **{name: f"method_options.{name}" for name in METHODS}},
                        seed)
        cfg = self.config
        self.method = build_method(cfg.method, cfg.method_options.get(cfg.method))
        self.teacher = as_teacher(teacher)
        if cfg.mean and hasattr(self.teacher, "with_mean"):
            self.teacher = self.teacher.with_mean(cfg.mean)
        self.student_factory = student_factory
        self.train_config = cfg.train
        self.use_cache = use_cache
        self.bias_shift_ = 0.0

    # --- the teacher's side ---

    def teacher_cache(self, train: Split, val: Split | None = None) -> TeacherOutputs:
        """Targets for every training example, row i = example i: the teacher's own cache when it has one.
        With ``val`` (for ``train.final_fit``), validation example j follows as row ``len(train) + j``."""
        splits = [train] + ([val] if val is not None else [])
        cached = None if self.use_cache is False else self.teacher.cached_outputs(splits, self.config.temperature)
        if self.use_cache and cached is None:
            raise DataError(f"teacher cache: the {self.teacher.teacher_name()} teacher has no outputs cached for this "
                            f"transfer data (fingerprint {train.fingerprint()}); pass use_cache=None to run it instead")
        if cached is not None:
            return cached
        online = self.teacher.online()
        return TeacherOutputs.cat([outputs_in_batches(online, split.x, self.config.temperature) for split in splits])

    def teacher_logits(self, x) -> torch.Tensor:
        """The teacher's log-probabilities at T = 1 (its predictions) for any inputs."""
        return outputs_in_batches(self.teacher.online(), as_inputs(x, "x", self.input_shape_), 1.0).logits

    def _objective(self, splits: dict[str, Split]) -> DistillationObjective:
        cfg, name = self.config, self.teacher.teacher_name()
        if cfg.jitter:
            online = self.teacher.online()
            # The teacher's weights name it, so a retrained teacher never reuses a student distilled from the old one.
            return DistillationObjective(cfg.loss, cfg.temperature, cfg.alpha, teacher=online,
                                         teacher_id=f"{name}:{state_fingerprint(online.state_dict())}")
        val = splits["val"] if self.train_config.final_fit else None
        if cfg.cache.store == "disk" or cfg.cache.top_k:
            cache, teacher_id = self._targets_on_disk(splits["train"], val)
            return DistillationObjective(cfg.loss, cfg.temperature, cfg.alpha, cache=cache, teacher_id=teacher_id)
        cache = self.teacher_cache(splits["train"], val)
        return DistillationObjective(cfg.loss, cfg.temperature, cfg.alpha, cache=cache,
                                     teacher_id=cached_teacher_id(name, cache))

    def _targets_on_disk(self, train: Split, val: Split | None):
        """The teacher run over the transfer data batch by batch into memory-mapped shards (top-K when asked),
        named by everything that defines them: the teacher's weights and settings, T, K, S, the data."""
        cfg, online = self.config, self.teacher.online()
        plain = (str, int, float, list, dict)
        settings = {k: v for k, v in vars(online).items() if not k.startswith("_") and isinstance(v, plain)}
        identity = fingerprint({"teacher": self.teacher.teacher_name(), "settings": settings,
                                "weights": state_fingerprint(online.state_dict()), "temperature": cfg.temperature,
                                "top_k": cfg.cache.top_k, "data": [s.fingerprint() for s in (train, val) if s],
                                # added later: left out at its default, so caches written before keep their names
                                **({"rest_samples": cfg.cache.rest_samples} if cfg.cache.rest_samples else {})})
        splits = [s for s in (train, val) if s is not None]
        folder = storage.localize(self.options.output_dir) / "teacher_targets" / identity
        if self.options.in_process:
            batches = (online(as_input(inputs), cfg.temperature) for split in splits
                       for inputs in in_order(split.x, 4096))
            targets = write_targets(folder, batches, sum(len(s) for s in splits), cfg.cache.top_k,
                                    cfg.cache.rows_per_shard, cfg.cache.rest_samples)
        else:  # one Ray task per shard, as the cluster's CPUs allow
            connect_ray(self.options.ray_address, self.options.ray_num_cpus, self.options.ray_num_gpus)
            targets = write_targets_on_ray(folder, online, splits, cfg.temperature, cfg.cache.top_k,
                                           cfg.cache.rows_per_shard, self.options.num_cpus, cfg.cache.rest_samples,
                                           self.options.max_restarts)
        return targets, f"{self.teacher.teacher_name()}:{identity}"

    # --- training ---

    def fit(self, transfer, val, test=None) -> "Distiller":
        """Splits as for ``Ensemble.fit``: ``(x, y)`` pairs of arrays or tensors, Splits or map-style datasets."""
        splits, data_fingerprint = self._fit_data(
            transfer, val, test, lambda s: output_width(self.teacher_logits, s["val"], "teacher", "val"), "transfer")
        cfg, num_classes = self.config, self.num_classes_
        self.left_out_ = left_out_classes(num_classes, cfg.transfer.omit_classes, cfg.transfer.only_classes)
        if self.left_out_:  # fail now, not after training, when there is no head to shift
            student_head(self.student_factory())
        rule = {**cfg.transfer.model_dump(), "seed": self.seed}
        self.transfer_indices_ = transfer_indices(splits["train"].y, **rule)
        sampler = SubsetSampler(self.transfer_indices_, rule)
        with self._tracking() as options:
            context = MethodContext(self.teacher, self.teacher.teacher_name(), self.student_factory, self.train_config,
                                    self.seed, cfg.jitter, splits, sampler, data_fingerprint, num_classes, options,
                                    self.run_ids_)
            plan = self.method.plan(context, self._objective(splits))
            specs = [TrainSpec("student", "student", plan.student_factory, self.train_config, self.seed, cfg.jitter,
                               objective=plan.objective, sampler=sampler, identity=plan.identity,
                               tags={"teacher": context.teacher_id, "method": self.method.name})]
            if cfg.baseline:
                specs.append(TrainSpec("student_baseline", "student_baseline", self.student_factory,
                                       self.train_config, self.seed, cfg.jitter, objective=DistillationObjective("ce"),
                                       sampler=sampler))
            fitted = context.fit(specs)
        self.results_, self.stage_results_ = fitted.results, context.stage_results
        self.objective_ = plan.objective  # what the student trained on (cached or online teacher, method)
        self.student_ = fitted.models[0]
        self.baseline_ = fitted.models[1] if cfg.baseline else None
        self.val_labels_ = splits["val"].y
        self._shift_left_out_classes()
        # Warns of a model at chance, or of a student far below its baseline, on the classes the transfer set kept.
        self.quality_ = check_quality(self.results_, splits, num_classes, left_out=self.left_out_,
                                      students={"student": "student_baseline"})
        self.mlflow_model_ = publish_api_student(self, options, splits["val"])  # as the CLI logs it
        return self

    def _shift_left_out_classes(self) -> None:
        """Raise the biases of classes the transfer set left out, by the amount best on validation data."""
        if not self.left_out_:
            return
        self.bias_shift_, self.bias_shift_table_ = choose_bias_shift(self.results_[0].logits["val"], self.val_labels_,
                                                                    self.left_out_)
        head = student_head(self.student_)
        with torch.no_grad():
            head.bias[self.left_out_] += self.bias_shift_

    # --- inference, evaluation and export ---

    @torch.no_grad()
    def predict_proba(self, x, temperature: float = 1.0) -> torch.Tensor:
        """The student's (with any bias shift) ``softmax(z / T)`` for each row of ``x``, an array or tensor shaped
        like the training inputs; ``predict(x)`` is its argmax."""
        x = self._inputs(x)  # first: it says when there is no student yet
        return torch.softmax(predict_logits(self.student_, x) / temperature, dim=1)

    def evaluate(self, test) -> Evaluation:
        """Scores of the student (and before any bias shift), the baseline and the teacher on ``test``."""
        split = self._test_split(test)
        student_logits = predict_logits(self.student_, split.x)
        teacher_log_probs = self.teacher_logits(split.x)
        log_probs = {"student": torch.log_softmax(student_logits.float(), dim=1), "teacher": teacher_log_probs}
        if self.baseline_ is not None:
            log_probs["baseline"] = torch.log_softmax(predict_logits(self.baseline_, split.x).float(), dim=1)
        scores = {name: Score.from_log_probs(value, split.y) for name, value in log_probs.items()}
        details: dict = {"bias_shift": self.bias_shift_, **following(log_probs),
                         "reliability": {name: reliability_bins(value.exp(), split.y)
                                         for name, value in log_probs.items()}}
        if self.left_out_:
            unshifted = shifted(student_logits, self.left_out_, -self.bias_shift_)
            scores["student_before_shift"] = Score.from_logits(unshifted, split.y)
            mask = torch.isin(split.y, torch.tensor(self.left_out_))
            details.update({"left_out_errors_before_shift": int((unshifted.argmax(1)[mask] != split.y[mask]).sum()),
                            "left_out_errors": int((student_logits.argmax(1)[mask] != split.y[mask]).sum()),
                            "left_out_examples": int(mask.sum())})
        return Evaluation(scores, details)

    def export(self, path: str | Path, example: torch.Tensor | None = None, fmt: str | None = None) -> Path:
        """The student (with any bias shift) as the file ``path`` names by its suffix (``.pt2``, ``.onnx``, ``.pt``)
        or as ``fmt``, checked to reproduce its outputs within 1e-4 (:mod:`distill.formats`)."""
        self._check_fitted()
        example = torch.zeros(2, *self.input_shape_) if example is None else as_input(self._inputs(example, "example"))
        return export_model(self.student_, example, path, fmt)
