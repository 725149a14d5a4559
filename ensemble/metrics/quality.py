"""The quality guard: a trained model that learned nothing usable is said so, never reported as a plain number.

Two rules, each a pure function of accuracies and counts (thresholds documented in the README, "What a run leaves
behind"):

- **At chance**: a model whose validation or test accuracy is at most the split's base rate plus a margin.
  The base rate is what a model gets without looking at the inputs: ``max(1 / C, share of the most frequent
  label)``. The margin is the larger of 5% of the room above the base rate, ``0.05 · (1 − base)``, and two
  standard deviations of a guesser's accuracy on ``n`` examples, ``2 · sqrt(base · (1 − base) / n)``.
- **Far below its baseline**: a distilled student whose accuracy trails its own hard-label baseline's, on the
  same split, by more than 10% of the baseline's skill above the base rate, ``0.10 · (baseline − base)``, or two
  standard errors of the difference, ``2 · sqrt((b · (1 − b) + s · (1 − s)) / n)``, whichever is larger.

A model caught by a rule gets a :class:`QualityWarning` (from ``fit`` of every API class, hence from the CLI),
a ``quality`` verdict and its ``warnings`` in ``results.json``, and a flag in the summary table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
from ensemble.base.warn import user_stacklevel

CHANCE_SHARE = 0.05  # of the room above the base rate: closer than this is "at chance"
BASELINE_SHARE = 0.10  # of the baseline's skill above the base rate: a student trailing by more is "far below"
NOISE_SDS = 2.0  # standard deviations a small split's noise may account for
SPLITS = ("val", "test")  # what the verdicts are drawn from; training accuracy says nothing about learning
AT_CHANCE, FAR_BELOW = "at chance", "far below baseline"


class QualityWarning(UserWarning):
    """A trained model at or near chance, or a distilled student far below its own hard-label baseline."""


# --- the rules, as pure functions ---

def base_rate(labels: torch.Tensor, num_classes: int) -> float:
    """``max(1 / C, share of the most frequent label)``: the accuracy of a model that ignores its inputs."""
    if not len(labels):
        return 1.0 / num_classes
    majority = int(torch.bincount(labels.long(), minlength=num_classes).max()) / len(labels)
    return max(1.0 / num_classes, majority)


def chance_margin(base: float, examples: int) -> float:
    """``max(0.05 · (1 − base), 2 · sqrt(base · (1 − base) / n))``: how far above the base rate is chance."""
    noise = NOISE_SDS * math.sqrt(base * (1 - base) / examples) if examples else 1.0
    return max(CHANCE_SHARE * (1 - base), noise)


def at_chance(accuracy: float, base: float, examples: int) -> bool:
    """``accuracy ≤ base + chance_margin(base, n)``."""
    return accuracy <= base + chance_margin(base, examples)


def baseline_margin(student: float, baseline: float, base: float, examples: int) -> float:
    """``max(0.10 · (baseline − base), 2 · sqrt((b(1 − b) + s(1 − s)) / n))``: how far a student may trail."""
    noise = NOISE_SDS * math.sqrt((baseline * (1 - baseline) + student * (1 - student)) / examples) if examples \
        else 1.0
    return max(BASELINE_SHARE * (baseline - base), noise)


def far_below(student: float, baseline: float, base: float, examples: int) -> bool:
    """``baseline − student > baseline_margin(...)``."""
    return baseline - student > baseline_margin(student, baseline, base, examples)


# --- verdicts on scored splits ---

class Scored:
    """One model's accuracy on one split, with what the rules need: the split's base rate and size."""

    def __init__(self, accuracy: float, base: float, examples: int):
        self.accuracy, self.base, self.examples = accuracy, base, examples

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Scored:
        # Through log-softmax, as every reported accuracy is (ensemble.metrics.scores): the verdict and the number
        # agree.
        predicted = torch.log_softmax(logits.float(), dim=1).argmax(dim=1)
        accuracy = float((predicted == labels).float().mean()) if len(labels) else 0.0
        return cls(accuracy, base_rate(labels, num_classes), len(labels))


def chance_messages(name: str, scored: dict[str, Scored]) -> list[str]:
    """One line naming every split on which ``name`` is at chance, or none."""
    found = [f"{split} accuracy {s.accuracy:.4f} <= {s.base:.4f} + {chance_margin(s.base, s.examples):.4f} "
             f"({s.examples} examples)" for split, s in scored.items()
             if s.examples and s.base < 1 and at_chance(s.accuracy, s.base, s.examples)]  # one class: nothing to judge
    if not found:
        return []
    return [(f"{name} is at chance: {'; '.join(found)}, the base rate plus a margin. It learned nothing usable: check "
             "train.optimizer.lr (or set train.grad_clip_norm), the inputs' scale and the labels")]


def baseline_messages(name: str, student: dict[str, Scored], baseline: dict[str, Scored]) -> list[str]:
    """One line naming every split on which the student, not itself at chance there, trails its baseline too far."""
    found = []
    for split in [split for split in student if split in baseline]:
        s, b = student[split], baseline[split]
        if not s.examples or s.base >= 1 or at_chance(s.accuracy, s.base, s.examples):
            continue
        if far_below(s.accuracy, b.accuracy, s.base, s.examples):
            margin = baseline_margin(s.accuracy, b.accuracy, s.base, s.examples)
            found.append(f"{split} accuracy {s.accuracy:.4f} against {b.accuracy:.4f}, more than {margin:.4f} behind")
    if not found:
        return []
    return [(f"{name} is far below its hard-label baseline: {'; '.join(found)}. The soft targets hurt: check the "
             "teacher, student.temperature and the student's train.optimizer.lr")]


def verdict(chance: Sequence[str] = (), below: Sequence[str] = ()) -> dict:
    """``{"quality": "ok" | "at chance" | "far below baseline", "warnings": [...]}``, the fields of results.json."""
    flags = [flag for flag, lines in ((AT_CHANCE, chance), (FAR_BELOW, below)) if lines]
    return {"quality": ", ".join(flags) or "ok", "warnings": [*chance, *below]}


# --- what the API's fit calls ---

def assess(results: Iterable, splits: dict, num_classes: int, target_maps: dict | None = None,
           classes: Sequence[int] | None = None, students: dict[str, str] | None = None) -> dict[str, dict]:
    """The verdict of every trained model (:class:`ensemble.training.trainer.TrainResult`), by name, from its logits on
    the validation and test splits. ``target_maps``: name -> dataset label -> output (a specialist's dustbin);
    ``classes``: judge only on rows of these classes (a transfer set that left the others out); ``students``:
    student name -> its baseline's name."""
    target_maps, students = target_maps or {}, students or {}
    scored = {}
    for result in results:
        mapping = target_maps.get(result.name)
        width = num_classes if mapping is None else int(mapping.max()) + 1
        scored[result.name] = {}
        for split in SPLITS:
            if split not in splits or split not in result.logits:
                continue
            labels, logits = splits[split].y, result.logits[split]
            if classes is not None:
                keep = torch.isin(labels, torch.as_tensor(list(classes)))
                labels, logits = labels[keep], logits[keep]
            labels = labels if mapping is None else mapping[labels]
            scored[result.name][split] = Scored.from_logits(logits, labels, width)
    verdicts = {}
    for name, by_split in scored.items():
        baseline = scored.get(students.get(name, ""))
        verdicts[name] = verdict(chance_messages(name, by_split),
                                 baseline_messages(name, by_split, baseline) if baseline else ())
    return verdicts


def check(results: Iterable, splits: dict, num_classes: int, *, target_maps: dict | None = None,
          left_out: Sequence[int] = (), students: dict[str, str] | None = None) -> dict[str, dict]:
    """What each API class's ``fit`` calls last: :func:`assess` (on the classes the transfer set kept, when it
    left some out), then a :class:`QualityWarning` per line, pointing at the line that called ``fit``."""
    classes = [c for c in range(num_classes) if c not in set(left_out)] if left_out else None
    verdicts = assess(results, splits, num_classes, target_maps, classes, students)
    for found in verdicts.values():
        for message in found["warnings"]:
            warnings.warn(message, QualityWarning, stacklevel=user_stacklevel())
    return verdicts
