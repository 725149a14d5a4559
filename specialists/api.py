"""``SpecialistEnsemble``: a generalist plus dustbin specialists for its confusable classes, combined by Eq. 5."""

from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import torch
from torch import nn

from ensemble.base.checkpoint import state_fingerprint
from ensemble.base.errors import ConfigError
from ensemble.engine.estimator import Estimator, output_width
from ensemble.engine.fit import FitOptions, fit_specs
from ensemble.metrics.quality import check as check_quality
from ensemble.metrics.scores import Evaluation, Score
from ensemble.training.trainer import TrainSpec, predict_logits

from .combine import active_specialists, combine
from .config import CombineConfig, SpecialistsConfig
from .dustbin import GroupSampler, build_specialist, dustbin_correction, dustbin_target_map, find_head
from .grouping import class_matrix, cluster_classes, resolve_groups
from .teacher import SpecialistOutputs


class SpecialistEnsemble(Estimator):
    """Specialists for groups of classes the generalist confuses (paper §5), trained in parallel on Ray.

    Takes the config's ``specialists`` section whole (:class:`specialists.config.SpecialistsConfig`, a dict, or
    keywords naming its fields: ``count``, ``groups``, ``matrix``, ``train``, ``top_n`` for ``combine.top_n``, ...).

    >>> spec = SpecialistEnsemble(generalist, {"count": 3}).fit(train, val)
    >>> spec.groups            # e.g. [[3, 5, 8], [4, 7, 9]]
    >>> spec.predict_proba(x)  # Eq. 5 with the active specialists
    """

    schema, section, output_dir = SpecialistsConfig, "specialists", "runs/specialists"
    aliases = {"n_specialists": "count", **{name: f"combine.{name}" for name in CombineConfig.model_fields}}
    fitted_attribute = "specialists_"

    def __init__(
        self,
        generalist: nn.Module,
        config: SpecialistsConfig | dict | None = None,
        *,
        generalist_factory: Callable[[], nn.Module] | None = None,
        class_names: list[str] | None = None,
        seed: int = 0,
        jitter: int = 0,
        hflip: bool = False,
        options: FitOptions | None = None,
        **kwargs,
    ):
        """``options``: where and how the specialists train (:class:`ensemble.engine.fit.FitOptions`; by default
        ``runs/specialists`` on the section's resources). Keywords that are not fields of the section name fields of
        ``options``: output_dir, num_cpus, num_gpus, tracking_uri, experiment, ..."""
        self._configure(config, kwargs, options, seed=seed)
        self.generalist = generalist.eval()
        self.generalist_factory = generalist_factory or partial(copy.deepcopy, generalist)
        find_head(generalist, self.config.head)  # fail now if there is no linear head to copy
        self.train_config = self.config.train
        self.class_names = class_names
        self.jitter, self.hflip = jitter, hflip
        self.specialists_: list[nn.Module] = []
        self.last_info_: dict = {}

    @property
    def solver_options(self) -> dict:
        combine_section = self.config.combine
        return {"max_iter": combine_section.max_iter, "tolerance": combine_section.tolerance,
                "solver": combine_section.solver}

    @property
    def groups(self) -> list[list[int]]:
        return self.groups_

    def choose_groups(self, held_out_x: torch.Tensor, num_classes: int) -> list[list[int]]:
        names = self.class_names or [str(c) for c in range(num_classes)]
        cfg = self.config
        if cfg.groups is not None:
            return resolve_groups(cfg.groups, names)
        probs = torch.softmax(predict_logits(self.generalist, held_out_x), dim=1).numpy()
        self.class_matrix_ = class_matrix(probs, cfg.matrix)
        return cluster_classes(self.class_matrix_, cfg.count, cfg.clustering, cfg.overlap, cfg.min_group_size,
                               self.seed)

    def fit(self, train, val, test=None) -> "SpecialistEnsemble":
        """Splits as for ``Ensemble.fit``: ``(x, y)`` pairs of arrays or tensors, Splits or map-style datasets."""
        generalist = partial(predict_logits, self.generalist)
        splits, data_fingerprint = self._fit_data(train, val, test,
                                                  lambda s: output_width(generalist, s["val"], "generalist", "val"))
        if self.config.source not in splits:
            raise ConfigError(f"specialists.source: no split named {self.config.source!r}")
        self.class_matrix_ = None
        self.groups_ = self.choose_groups(splits[self.config.source].x, self.num_classes_)
        generalist_state = {k: v.detach().cpu() for k, v in self.generalist.state_dict().items()}
        identity = {"generalist": state_fingerprint(generalist_state), "head": self.config.head}
        train_labels = splits["train"].y
        specs = []
        for m, group in enumerate(self.groups_):
            natural_share = float(torch.isin(train_labels, torch.tensor(group)).float().mean())
            if not 0 < natural_share < 1:
                raise ConfigError(f"specialists: group {group} has no training examples inside or outside it")
            factory = partial(build_specialist, self.generalist_factory, generalist_state, group,
                              dustbin_correction(natural_share), self.config.head)
            specs.append(TrainSpec(
                f"specialist_{m}", "specialist", factory, self.train_config, self.seed + m, self.jitter,
                hflip=self.hflip,
                target_map=dustbin_target_map(group, self.num_classes_),
                sampler=GroupSampler(train_labels, group),
                tags={"specialist_index": m, "group": group},
                identity=identity,
            ))
        with self._tracking() as options:
            fitted = fit_specs(specs, splits, data_fingerprint, self.num_classes_, options)
        self.results_, self.specialists_, self.run_ids_ = fitted.results, fitted.models, fitted.run_ids
        self.quality_ = check_quality(self.results_, splits, self.num_classes_,  # warns of a model at chance
                                      target_maps={spec.name: spec.target_map for spec in specs})
        return self

    # --- inference ---

    def _group_tensors(self) -> list[torch.Tensor]:
        return [torch.tensor(g) for g in self.groups_]

    @torch.no_grad()
    def predict_proba(self, x, batch_size: int = 4096) -> torch.Tensor:
        """Eq. 5: the generalist's distribution, refined by the specialists its top-n classes activate; ``x`` an
        array or tensor shaped like the training inputs. ``predict(x)`` is its argmax."""
        q, self.last_info_ = combine(*self.combination_inputs(x, batch_size), **self.solver_options)
        return q

    @torch.no_grad()
    def combination_inputs(self, x, batch_size: int = 4096) -> tuple:
        """``(p_g, [p_m], groups, active)`` for :func:`specialists.combine.combine`.

        Each specialist runs only on the examples that activate it, so the cost grows with the number of
        active specialists per example (about one with top-1 and disjoint groups), not with their count.
        """
        x = self._inputs(x)
        generalist_probs = torch.softmax(predict_logits(self.generalist, x, batch_size), dim=1)
        groups = self._group_tensors()
        active = active_specialists(generalist_probs, groups, self.config.combine.top_n)
        specialist_probs = []
        for m, group in enumerate(groups):
            probs = torch.zeros(len(x), len(group) + 1)
            rows = active[:, m]
            if rows.any():
                probs[rows] = torch.softmax(predict_logits(self.specialists_[m], x[rows], batch_size), dim=1)
            specialist_probs.append(probs)
        return generalist_probs, specialist_probs, groups, active

    # --- the Teacher protocol (ensemble.training.teacher) ---

    def teacher_name(self) -> str:
        return "specialists"

    def online(self) -> nn.Module:
        self._check_fitted()
        return SpecialistOutputs(self.generalist, self.specialists_, self.groups_, self.config.combine.top_n,
                                 **self.solver_options)

    def cached_outputs(self, splits, temperature: float) -> None:
        return None  # Eq. 5 depends on T, so its targets are computed when the student's T is known

    def hint_module(self) -> nn.Module:  # distill.hints.HintTeacher: FitNets reads hints from the generalist
        return self.generalist

    def evaluate(self, test) -> Evaluation:
        """Scores of the generalist alone and of the combination (Eq. 5); details: per class and by the number of
        specialists covering the correct class (the paper's Table 4)."""
        split = self._test_split(test)
        inputs = self.combination_inputs(split.x)  # one generalist pass serves both sides of the comparison
        combined, self.last_info_ = combine(*inputs, **self.solver_options)
        details = evaluate_combination(inputs[0], combined, split.y, self.groups_,
                                       self.class_names or [str(c) for c in range(self.num_classes_)])
        scores = {"generalist": Score.from_probs(inputs[0], split.y), "combined": Score.from_probs(combined, split.y)}
        return Evaluation(scores, {"by_covering": details["by_covering"], "per_class": details["per_class"]})


def evaluate_combination(generalist_probs, combined_probs, y, groups, class_names) -> dict:
    """Generalist vs combined: accuracy, errors, per class, and the paper's Table 4 by covering specialists."""
    g_ok = generalist_probs.argmax(1) == y
    c_ok = combined_probs.argmax(1) == y
    n = len(y)
    covering = torch.zeros(n, dtype=torch.int64)
    for group in groups:
        covering += torch.isin(y, torch.tensor(group)).long()
    by_covering = []
    for count in range(int(covering.max()) + 1 if n else 0):
        rows = covering == count
        if not rows.any():
            continue
        before, after = int(g_ok[rows].sum()), int(c_ok[rows].sum())
        by_covering.append({"covering": count, "examples": int(rows.sum()), "generalist_correct": before,
                            "combined_correct": after, "delta_correct": after - before,
                            "relative_change": (after - before) / before if before else 0.0})
    per_class = []
    for c, name in enumerate(class_names):
        rows = y == c
        per_class.append({"class": c, "name": name, "examples": int(rows.sum()),
                          "generalist_errors": int((~g_ok[rows]).sum()), "combined_errors": int((~c_ok[rows]).sum())})
    return {
        "generalist_test_accuracy": float(g_ok.float().mean()), "generalist_test_errors": int((~g_ok).sum()),
        "test_accuracy": float(c_ok.float().mean()), "test_errors": int((~c_ok).sum()),
        "by_covering": by_covering, "per_class": per_class,
    }
