"""Specialists: dustbin relabelling, half-and-half sampling, the Bayes correction, head surgery, grouping."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ensemble.base.errors import ConfigError, ModelError
from specialists import (
    GroupSampler, SpecialistEnsemble, build_specialist, class_matrix, cluster_classes, dustbin_correction,
    dustbin_target_map, resolve_groups,
)
from specialists.dustbin import find_head


def test_target_map_sends_other_classes_to_the_dustbin():
    assert dustbin_target_map([3, 5, 8], 10).tolist() == [3, 3, 3, 0, 3, 1, 3, 3, 2, 3]


def test_dustbin_correction_is_the_log_odds_of_the_oversampling():
    # Natural share 1/5 of the group, trained 50/50: the dustbin was under-represented 4:1.
    assert dustbin_correction(0.2) == pytest.approx(math.log(4))
    assert dustbin_correction(0.5) == pytest.approx(0.0)
    assert dustbin_correction(0.2, 0.2) == pytest.approx(0.0), "no oversampling, no correction"
    with pytest.raises(ValueError):
        dustbin_correction(1.0)


def test_group_sampler_draws_half_inside_half_outside_without_copying():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 80)
    sampler = GroupSampler(labels, [0, 1])
    order = sampler.epoch_order(len(labels), torch.Generator().manual_seed(0))
    assert len(order) == 40
    inside = torch.isin(labels[order], torch.tensor([0, 1]))
    assert int(inside.sum()) == 20 and len(set(order.tolist())) == 40
    again = sampler.epoch_order(len(labels), torch.Generator().manual_seed(1))
    assert set(again.tolist()) != set(order.tolist()), "a fresh draw of the rest every epoch"


def test_group_sampler_draws_with_replacement_when_the_rest_is_small():
    labels = torch.tensor([0] * 30 + [1] * 5)
    order = GroupSampler(labels, [0]).epoch_order(35, torch.Generator().manual_seed(0))
    assert len(order) == 60 and int((labels[order] == 1).sum()) == 30


def _generalist():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5))


def test_specialist_head_starts_from_the_generalists_rows():
    generalist = _generalist()
    specialist = build_specialist(_generalist, generalist.state_dict(), [1, 3], correction=0.7).eval()
    x = torch.randn(8, 1, 2, 2)
    with torch.no_grad():
        g, s = generalist(x), specialist(x)
        assert torch.allclose(s[:, :2], g[:, [1, 3]], atol=1e-6)
        # Dustbin row: the mean of the other rows, bias + log(#others), then the correction in eval mode.
        assert torch.allclose(s[:, 2], g[:, [0, 2, 4]].mean(1) + math.log(3) + 0.7, atol=1e-5)
        assert torch.allclose(specialist.train()(x)[:, 2], s[:, 2] - 0.7, atol=1e-6), "no correction in training"
        assert torch.equal(generalist[1].weight, specialist.net[1].weight), "the body is the generalist's"
    assert specialist.state_dict()["logit_offset"].tolist() == pytest.approx([0.0, 0.0, 0.7])


def test_head_is_found_by_name_or_as_the_last_linear_layer():
    model = _generalist()
    assert find_head(model)[0] == "3"
    assert find_head(model, "1")[0] == "1"
    with pytest.raises(ModelError, match="no module named 'head'"):
        find_head(model, "head")
    with pytest.raises(ModelError, match="is a ReLU"):
        find_head(model, "2")
    conv_only = nn.Sequential(nn.Conv2d(1, 10, 2), nn.Flatten())
    with pytest.raises(ModelError, match="no linear classifier head"):
        SpecialistEnsemble(conv_only)


def test_kmeans_on_the_columns_recovers_blocks_of_confusable_classes():
    rng = np.random.default_rng(0)
    # Predictions that mix within {0,1,2} and within {3,4}, and are sure about 5.
    rows = []
    for _ in range(600):
        block = rng.choice(3)
        p = np.zeros(6)
        members = [[0, 1, 2], [3, 4], [5]][block]
        p[members] = rng.dirichlet(np.ones(len(members)))
        rows.append(p)
    matrix = class_matrix(np.array(rows))
    groups = cluster_classes(matrix, count=3, seed=0)
    assert sorted(groups) == [[0, 1, 2], [3, 4]], "the singleton {5} gets no specialist"
    overlapping = cluster_classes(matrix, count=3, overlap=2, seed=0)
    assert any(len(g) > 3 for g in overlapping), "with overlap each class joins two centroids"
    with pytest.raises(ConfigError, match="specialists.count: 7 specialists for 6 classes"):
        cluster_classes(matrix, count=7)


# Four predictions over three classes; column means 0.35, 0.3, 0.35, so the deviations are
# [0.15, 0.35, −0.25, −0.25], [0.2, 0, −0.2, 0], [−0.35, −0.35, 0.45, 0.25]. Sample covariance (÷ N − 1 = 3):
HAND_PROBS = np.array([[0.5, 0.5, 0.0], [0.7, 0.3, 0.0], [0.1, 0.1, 0.8], [0.1, 0.3, 0.6]])
HAND_COVARIANCE = np.array([[0.27, 0.08, -0.35], [0.08, 0.08, -0.16], [-0.35, -0.16, 0.51]]) / 3


def test_covariance_of_the_predictions_matches_a_hand_computed_matrix():
    """Paper §5.3: the covariance of the predicted class probabilities (rows are examples, columns classes)."""
    got = class_matrix(HAND_PROBS, "covariance")
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, HAND_COVARIANCE, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 0.0, atol=1e-12)  # rows of probabilities sum to 1
    # The default, unit-diagonal form: c_ij / sqrt(c_ii c_jj).
    c = HAND_COVARIANCE
    expected = np.array([[c[i, j] / math.sqrt(c[i, i] * c[j, j]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(class_matrix(HAND_PROBS), expected, atol=1e-12)


def test_kmeans_recovers_the_blocks_of_a_block_structured_matrix():
    """Columns alike within {0, 3}, {1, 4, 6}, {2, 5, 7} (not contiguous, so index order cannot fake it)."""
    blocks = [[0, 3], [1, 4, 6], [2, 5, 7]]
    matrix = np.full((8, 8), -0.1)
    for block in blocks:
        matrix[np.ix_(block, block)] = 1.0
    assert sorted(cluster_classes(matrix, count=3, seed=0)) == blocks


def test_kmeans_on_the_paper_covariance_groups_confusable_classes():
    """Predictions that mix within {0, 3, 4} or within {1, 2, 5}: same-block covariances are positive (1/72
    in expectation), cross-block ones negative (−1/36), so the covariance columns form two clusters."""
    rng = np.random.default_rng(0)
    rows = np.zeros((400, 6))
    for row in rows:
        members = [[0, 3, 4], [1, 2, 5]][rng.choice(2)]
        row[members] = rng.dirichlet(np.ones(3))
    covariance = class_matrix(rows, "covariance")
    assert sorted(cluster_classes(covariance, count=2, seed=0)) == [[0, 3, 4], [1, 2, 5]]


def test_hand_given_groups_are_checked():
    names = [str(c) for c in range(10)]
    assert resolve_groups([[3, "5", 8]], names) == [[3, 5, 8]]
    with pytest.raises(ConfigError, match=r"groups\[0\]: unknown class 'eleven'"):
        resolve_groups([[1, "eleven"]], names)
    with pytest.raises(ConfigError, match=r"groups\[1\]: a specialist needs at least two classes"):
        resolve_groups([[1, 2], [4]], names)
    with pytest.raises(ConfigError, match="covers every class"):
        resolve_groups([list(range(10))], names)
