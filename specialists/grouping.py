"""Choosing the classes (paper §5.3): K-means on the columns of the covariance of the generalist's predictions."""

from __future__ import annotations

import logging

import numpy as np

from ensemble.base.errors import ConfigError

log = logging.getLogger(__name__)


def prediction_covariance(probs: np.ndarray) -> np.ndarray:
    """(C, C) covariance of the predicted class probabilities over a held-out set; labels are not used.

    Classes the generalist confuses rise and fall together across examples, so their columns look alike.
    """
    return np.cov(np.asarray(probs, dtype=np.float64), rowvar=False)


def class_matrix(probs: np.ndarray, kind: str = "correlation") -> np.ndarray:
    """The matrix whose columns are clustered: the covariance (paper) or its unit-diagonal form.

    With few classes the covariance's diagonal (each class's own variance) dominates its columns, and
    K-means separates confidently predicted classes instead of grouping confusable ones (on digits:
    {0}, {6}, {everything else}). The correlation, the covariance of standardised predictions, removes
    that scale and groups the classes that rise and fall together (on digits: {3, 5, 9}, {1, 2, 7, 8}, ...).
    """
    covariance = prediction_covariance(probs)
    if kind == "covariance":
        return covariance
    scale = np.sqrt(np.clip(np.diag(covariance), 1e-12, None))
    return covariance / np.outer(scale, scale)


def cluster_classes(
    covariance: np.ndarray,
    count: int,
    method: str = "kmeans",
    overlap: int = 1,
    min_group_size: int = 2,
    seed: int = 0,
) -> list[list[int]]:
    """K-means on the covariance columns; each class joins its ``overlap`` nearest centroids.

    Returns the groups (sorted class indices) with at least ``min_group_size`` and fewer than all classes.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    num_classes = covariance.shape[0]
    if count > num_classes:
        raise ConfigError(f"specialists.count: {count} specialists for {num_classes} classes; use at most "
                          f"{num_classes}")
    if overlap > count:
        raise ConfigError(f"specialists.overlap: {overlap} exceeds specialists.count ({count})")
    kind = KMeans if method == "kmeans" else MiniBatchKMeans
    kmeans = kind(n_clusters=count, n_init=10, random_state=seed).fit(covariance.T)
    distances = kmeans.transform(covariance.T)  # (classes, clusters)
    nearest = np.argsort(distances, axis=1)[:, :overlap]
    groups = []
    for cluster in range(count):
        members = sorted(int(c) for c in np.nonzero((nearest == cluster).any(axis=1))[0])
        if len(members) < min_group_size:
            log.info("cluster %d has %d classes (< %d): no specialist", cluster, len(members), min_group_size)
        elif len(members) == num_classes:
            log.info("cluster %d holds every class: no specialist", cluster)
        elif members not in groups:
            groups.append(members)
    if not groups:
        raise ConfigError(
            f"specialists: K-means found no group of {min_group_size} to {num_classes - 1} classes; "
            "change specialists.count or specialists.min_group_size"
        )
    return groups


def resolve_groups(groups: list[list[int | str]], class_names: list[str]) -> list[list[int]]:
    """Hand-given groups by index or name, checked: known classes, at least two, not every class."""
    num_classes = len(class_names)
    resolved = []
    for i, group in enumerate(groups):
        indices = []
        for item in group:
            if isinstance(item, int) and 0 <= item < num_classes:
                indices.append(item)
            elif isinstance(item, str) and item in class_names:
                indices.append(class_names.index(item))
            else:
                raise ConfigError(f"specialists.groups[{i}]: unknown class {item!r}; classes are 0..{num_classes - 1}"
                                  f" or names {class_names[:5]}{'...' if num_classes > 5 else ''}")
        indices = sorted(set(indices))
        if len(indices) < 2:
            raise ConfigError(f"specialists.groups[{i}]: a specialist needs at least two classes, got {indices}")
        if len(indices) == num_classes:
            raise ConfigError(f"specialists.groups[{i}]: covers every class; a specialist needs a dustbin")
        resolved.append(indices)
    return resolved


def plot_covariance(covariance: np.ndarray, groups: list[list[int]], class_names: list[str],
                    title: str = "covariance of the generalist's predictions"):
    """Heatmap with rows and columns ordered by group and the group borders drawn.

    The colour scale is set by the off-diagonal entries (the diagonal saturates), which carry the confusions.
    """
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or switched for the caller
    from matplotlib.patches import Rectangle

    order, borders = [], []
    for group in groups:
        new = [c for c in group if c not in order]
        order += new
        borders.append(len(order))
    order += [c for c in range(len(class_names)) if c not in order]
    size = min(12, 3 + 0.35 * len(order))
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.subplots()
    off_diagonal = covariance - np.diag(np.diag(covariance))
    limit = np.abs(off_diagonal).max() or 1.0
    image = ax.imshow(covariance[np.ix_(order, order)], cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, shrink=0.8)
    start = 0
    for end in borders:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), end - start, end - start,
                               fill=False, edgecolor="black", linewidth=2))
        start = end
    if len(order) <= 40:
        labels = [class_names[c] for c in order]
        ax.set_xticks(range(len(order)), labels, rotation=90)
        ax.set_yticks(range(len(order)), labels)
    ax.set_title(f"{title}, ordered by specialist group")
    fig.tight_layout()
    return fig
