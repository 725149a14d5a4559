"""``train.final_fit``: choose the epoch count on validation, then retrain on train + validation for that many epochs.

The paper trained its MNIST nets on all 60,000 images; holding 10% out for model selection costs the final model a
tenth of its data. Phase 1 is the ordinary run, which picks the best epoch on the validation split. Phase 2 starts
again from the same seed on the training split with the validation split appended after it (validation example j is
row ``n_train + j``), trains for phase 1's best epoch count and keeps its last epoch. Its logits on ``train`` are cut
back to the training split's rows, so row i is still training example i everywhere downstream; its validation scores
are no longer held out (it trained on those examples).

A sampler (a transfer subset, a specialist's group) extends itself to the validation rows through
``for_final_fit(labels, n_train)``; an objective with a teacher cache needs cache rows for them too (the
:class:`distill.api.Distiller` builds its cache over train + validation when ``final_fit`` is on).
"""

from __future__ import annotations

import dataclasses

import torch

from ensemble.base.errors import ConfigError
from ensemble.base.identity import fingerprint
from ensemble.data.split import Split
from ensemble.training.trainer import TrainResult, TrainSpec


def train_and_val(splits: dict[str, Split]) -> dict[str, Split]:
    """The splits with ``train`` replaced by train followed by val (val example j at row n_train + j)."""
    train, val = splits["train"], splits["val"]
    x = train.x.concat(val.x) if train.lazy else torch.cat([train.x, val.x])
    return {**splits, "train": Split(x, torch.cat([train.y, val.y]))}


def final_spec(spec: TrainSpec, phase_one: TrainResult, phase_one_fingerprint: str, merged_labels: torch.Tensor,
               n_train: int) -> TrainSpec:
    """Phase 2 of ``spec``: phase 1's best epoch count, the last epoch kept, named after the phase 1 it follows."""
    epochs = int(phase_one.metrics.get("best_epoch") or spec.train.epochs)
    train = spec.train.model_copy(update={"epochs": epochs, "final_fit": False, "early_stopping_patience": None,
                                          "select": "last"})
    sampler = spec.sampler
    if sampler is not None:
        extend = getattr(sampler, "for_final_fit", None)
        if extend is None:
            raise ConfigError(f"{spec.name}: train.final_fit needs a sampler that extends to the validation "
                              f"examples; {type(sampler).__name__} has no for_final_fit(labels, n_train)")
        sampler = extend(merged_labels, n_train)
    return dataclasses.replace(spec, train=train, sampler=sampler,
                               identity={**spec.identity, "final_fit_of": phase_one_fingerprint},
                               tags={**spec.tags, "final_fit": True, "final_fit_epochs": epochs})


def cut_to_train(result: TrainResult, n_train: int) -> TrainResult:
    """Row i of ``train`` logits is training example i again (the appended validation rows are dropped)."""
    logits = {**result.logits, "train": result.logits["train"][:n_train]}
    return dataclasses.replace(result, logits=logits)


def final_data_fingerprint(splits: dict[str, Split]) -> str:
    return fingerprint({"final_fit": {name: split.fingerprint() for name, split in splits.items()}})
