"""Calibration and teacher-following measures against values worked out by hand (5 rows, 3 classes)."""

from __future__ import annotations

import math

import pytest
import torch

from ensemble.metrics.calibration import (brier_score, expected_calibration_error, mean_kl, reliability_bins,
                                          top1_agreement)
from ensemble.metrics.scores import Score

# Top-1 confidences 0.90, 0.91, 0.62, 0.70, 0.82 fall in bins 13, 13, 9, 10, 12 of 15 (width 1/15).
PROBS = torch.tensor([[0.90, 0.05, 0.05],   # y 0: right
                      [0.05, 0.91, 0.04],   # y 0: wrong (says 1)
                      [0.62, 0.38, 0.00],   # y 1: wrong (says 0)
                      [0.10, 0.20, 0.70],   # y 2: right
                      [0.82, 0.08, 0.10]])  # y 2: wrong (says 0)
LABELS = torch.tensor([0, 0, 1, 2, 2])


def test_brier_score_sums_over_classes_and_averages_over_rows():
    # rows: 0.015, 1.7322, 0.7688, 0.14, 1.4888 -> mean 4.1448 / 5
    assert brier_score(PROBS, LABELS) == pytest.approx(0.82896, abs=1e-6)


def test_ece_weights_each_bin_by_its_share_of_rows():
    # bin 13: accuracy 1/2, confidence 0.905, weight 2/5; bins 9, 10, 12: |0 - 0.62|, |1 - 0.70|, |0 - 0.82|, 1/5 each
    expected = (2 * abs(0.5 - 0.905) + 0.62 + 0.30 + 0.82) / 5  # 0.51; per-row |correct - conf| would give 0.55
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_list_the_occupied_bins():
    rows = reliability_bins(PROBS, LABELS)
    assert [(r["bin"], r["count"]) for r in rows] == [(9, 1), (10, 1), (12, 1), (13, 2)]
    assert rows[-1]["confidence"] == pytest.approx(0.905) and rows[-1]["accuracy"] == 0.5
    assert rows[0]["lower"] == pytest.approx(9 / 15) and rows[0]["upper"] == pytest.approx(10 / 15)


def test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    probs = torch.tensor([[2 / 3, 1 / 3], [1.0, 0.0]], dtype=torch.float64)  # edges 10/15 and 15/15
    assert [r["bin"] for r in reliability_bins(probs, torch.tensor([0, 0]))] == [9, 14]


def test_score_carries_ece_and_brier_from_logits():
    score = Score.from_logits(PROBS.clamp_min(1e-12).log(), LABELS)
    assert (score.accuracy, score.errors, score.examples) == (0.4, 3, 5)
    assert score.brier == pytest.approx(0.82896, abs=1e-5) and score.ece == pytest.approx(0.51, abs=1e-5)
    assert set(score.fields("test_")) == {"test_accuracy", "test_errors", "test_nll", "test_ece", "test_brier"}


def test_top1_agreement_counts_matching_argmax():
    student = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    assert top1_agreement(PROBS, student) == pytest.approx(3 / 5)  # argmax 0,1,0,2,0 against 0,0,0,2,1


def test_mean_kl_from_teacher_with_a_zero_probability():
    teacher = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    student_log = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = math.log(1 / 0.5)  # 0 log 0 = 0
    assert mean_kl(teacher, student_log) == pytest.approx((row0 + row1) / 2, abs=1e-7)  # float32 inputs
    assert mean_kl(teacher, teacher.clamp_min(1e-30).log()) == pytest.approx(0.0, abs=1e-9)
