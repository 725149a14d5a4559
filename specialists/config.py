"""The ``specialists`` section of the config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ensemble.base.fields import NonEmpty
from ensemble.schema.sections import ResourcesConfig, Section, TrainConfig


def _specialist_train() -> TrainConfig:
    # Specialists start from the generalist's weights: fewer epochs and a smaller step than from scratch.
    return TrainConfig(epochs=8, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9})


class CombineConfig(Section):
    top_n: int = Field(1, ge=1, description="the generalist's n most probable classes choose the active specialists")
    solver: Literal["em", "lbfgs"] = Field("em", description="EM fixed point (fast) or L-BFGS on the logits of q")
    max_iter: int = Field(10_000, gt=0, description="most EM steps (em) or iterations (lbfgs) for Eq. 5")
    tolerance: float = Field(1e-9, gt=0, description="em: stop when Eq. 5 is provably within this many nats of its "
                             "minimum (the Frank-Wolfe gap); lbfgs: when the gradient is this small")


class SpecialistsConfig(Section):
    enabled: bool = True
    count: int = Field(3, ge=1, description="number of specialists (K-means clusters)")
    clustering: Literal["kmeans", "minibatch"] = Field("kmeans", description="minibatch = the paper's on-line K-means")
    matrix: Literal["correlation", "covariance"] = Field(
        "correlation", description="cluster the columns of the prediction covariance (paper) or its correlation form"
    )
    overlap: int = Field(1, ge=1, description="each class joins its m nearest centroids (1 = disjoint groups)")
    min_group_size: int = Field(2, ge=2, description="smaller clusters get no specialist")
    groups: list[list[int | str]] | None = Field(None, description="groups given by hand (class indices or names)")
    source: Literal["val", "train"] = Field("val", description="split whose predictions give the covariance")
    head: NonEmpty | None = Field(None, description="name of the classifier layer; default: the last nn.Linear")
    train: TrainConfig = Field(default_factory=_specialist_train)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    combine: CombineConfig = Field(default_factory=CombineConfig)

    @field_validator("groups")
    @classmethod
    def _non_empty(cls, groups):
        if groups is not None and not groups:
            raise ValueError("give at least one group, or leave groups unset to find them by K-means")
        return groups
