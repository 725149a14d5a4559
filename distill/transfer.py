"""The transfer set (a subset of the training split, by index) and the bias shift for left-out classes."""

from __future__ import annotations

import torch

from ensemble.base.checkpoint import tensor_fingerprint
from ensemble.base.errors import ConfigError


def transfer_indices(
    labels: torch.Tensor,
    fraction: float = 1.0,
    omit_classes: list[int] = (),
    only_classes: list[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Positions in the training split that form the transfer set, sorted.

    ``fraction`` keeps a seeded random share (the paper's 3% experiment); ``omit_classes`` drops classes (the
    "no 3s" experiment); ``only_classes`` keeps just those (the "only 7s and 8s" experiment).
    """
    keep = torch.ones(len(labels), dtype=torch.bool)
    if omit_classes:
        keep &= ~torch.isin(labels, torch.tensor(list(omit_classes)))
    if only_classes:
        keep &= torch.isin(labels, torch.tensor(list(only_classes)))
    indices = torch.nonzero(keep).flatten()
    if fraction < 1:
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
        indices = indices[order[: max(1, int(round(fraction * len(indices))))]].sort().values
    if len(indices) == 0:
        raise ConfigError("student.transfer: the transfer set is empty; check fraction, omit_classes, only_classes")
    return indices


def left_out_classes(num_classes: int, omit_classes: list[int] = (), only_classes: list[int] | None = None) -> list[int]:
    """Classes the student never sees in the transfer set."""
    left = set(omit_classes)
    if only_classes:
        left |= set(range(num_classes)) - set(only_classes)
    return sorted(left)


class SubsetSampler:
    """Each epoch visits the transfer set's indices in a fresh random order; the data is never copied.

    ``rule`` (the keyword arguments of :func:`transfer_indices`) lets it extend itself to the validation rows for
    ``train.final_fit``.
    """

    def __init__(self, indices: torch.Tensor, rule: dict | None = None):
        self.indices = indices
        self.rule = rule

    def for_final_fit(self, labels: torch.Tensor, n_train: int) -> "SubsetSampler":
        """The training indices plus the validation rows (``n_train + j``) that the same rule keeps."""
        if self.rule is None:
            raise ConfigError("train.final_fit: this transfer subset was given as bare indices; pass its rule "
                              "(fraction, omit_classes, only_classes, seed) to extend it to the validation rows")
        try:
            extra = transfer_indices(labels[n_train:], **self.rule) + n_train
        except ConfigError:  # no validation example passes the rule: the training rows alone
            extra = torch.empty(0, dtype=self.indices.dtype)
        return SubsetSampler(torch.cat([self.indices, extra]))

    def epoch_order(self, num_examples: int, generator: torch.Generator) -> torch.Tensor:
        return self.indices[torch.randperm(len(self.indices), generator=generator)]

    def identity(self) -> dict:
        """All the indices name it (the repr shows only a few)."""
        return {"sampler": "subset", "indices": tensor_fingerprint(self.indices)}

    def __repr__(self) -> str:
        return f"SubsetSampler(n={len(self.indices)}, first={self.indices[:3].tolist()})"


def shifted(logits: torch.Tensor, classes: list[int], shift: float) -> torch.Tensor:
    """Logits with ``shift`` added to the given classes (the same as adding it to their output biases)."""
    out = logits.clone()
    out[:, classes] += shift
    return out


def choose_bias_shift(val_logits: torch.Tensor, val_labels: torch.Tensor, classes: list[int],
                      grid: torch.Tensor | None = None) -> tuple[float, list[dict]]:
    """The shift of the left-out classes' biases that maximises validation accuracy (ties: the smallest).

    The paper tuned +3.5 for the 3s on the test set; choosing on validation data keeps the test set clean.
    """
    grid = torch.arange(0.0, 15.01, 0.1) if grid is None else grid
    table = []
    for value in grid.tolist():
        correct = int((shifted(val_logits, classes, value).argmax(1) == val_labels).sum())
        table.append({"shift": round(value, 4), "val_accuracy": correct / len(val_labels)})
    best = max(table, key=lambda row: (row["val_accuracy"], -row["shift"]))
    return best["shift"], table
