"""Clusters with a significance: HDBSCAN on prepared feature rows, tested against nulls with no joint structure.

A cluster counts only when it is stronger than the best cluster found in nulls where each feature
column is permuted across rows and clustered the same way (this accounts for the clusterer picking
the best groups). :mod:`probe_callback.scoring.discovery` clusters behaviour vectors with it;
:func:`cluster_by_responsible_data` is the paper's variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import hdbscan
import numpy as np
from threadpoolctl import threadpool_limits

from .unit import unit_rows


@dataclass
class Cluster:
    """A group of prompts (or rows of any feature matrix) found by :func:`find_clusters`.

    ``coherence``: mean pairwise cosine of the members' prepared vectors. ``strength``:
    ``1 + (m - 1) * coherence`` (the squared norm of their sum over m; about 1 for any random
    subset whatever its size). ``p_value``: how often a null with no joint structure (each feature
    column permuted across prompts), clustered the same way, yields a cluster at least as strong.
    It accounts for the clusterer picking the best groups; random subsets do not.
    """

    members: np.ndarray
    coherence: float
    strength: float
    p_value: float = 1.0


def find_clusters(
    features: np.ndarray,
    min_cluster_size: int | None = None,
    n_components: int = 10,
    n_null: int = 199,
    seed: int = 0,
) -> tuple[np.ndarray, list[Cluster]]:
    """HDBSCAN clusters of the rows of ``features`` with their significance; returns (labels, clusters).

    Rows are unit-normalised and centred on their coordinate-wise median (the majority's shared
    drift), reduced to their top ``n_components`` principal axes (denoising) and normalised again,
    so clusters are groups that moved the same *specific* way.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 8))
        >>> labels, clusters = find_clusters(x, n_null=19)
        >>> labels.shape
        (40,)
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"need a (n >= 4, d) feature matrix, got shape {x.shape}")
    mcs = min_cluster_size or default_min_cluster_size(len(x))
    with threadpool_limits(1):  # hundreds of tiny decompositions: threads only contend
        labels, clusters = cluster_rows(x, mcs, n_components)
        if clusters:
            _null_p_values(x, clusters, mcs, n_components, n_null, np.random.default_rng(seed))
    return labels, clusters


def default_min_cluster_size(n: int) -> int:
    """Smallest group worth reporting: 5% of the prompts, at least 4."""
    return max(4, round(0.05 * n))


def _prepare(x: np.ndarray, n_components: int) -> np.ndarray:
    """Unit rows, median-centred, on the top principal axes, unit again."""
    u = unit_rows(x)
    c = u - np.median(u, axis=0)
    _, _, axes = np.linalg.svd(c - c.mean(axis=0), full_matrices=False)
    c = c @ axes[:n_components].T
    return unit_rows(c)


def cluster_rows(x: np.ndarray, mcs: int, n_components: int = 10) -> tuple[np.ndarray, list[Cluster]]:
    """HDBSCAN clusters (``mcs``: smallest) of the rows of ``x`` prepared as :func:`find_clusters` says, with
    no significance: (labels, clusters)."""
    c = _prepare(x, n_components)
    chord = np.sqrt(np.maximum(2.0 - 2.0 * (c @ c.T), 0.0))  # euclidean between unit vectors
    fit = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=max(2, mcs // 2), metric="precomputed")
    labels = fit.fit(chord).labels_
    clusters = []
    for k in range(labels.max() + 1):
        members = np.flatnonzero(labels == k)
        m, total = len(members), c[members].sum(axis=0)
        coherence = (total @ total - m) / (m * (m - 1))
        clusters.append(Cluster(members, float(coherence), float(1 + (m - 1) * coherence)))
    return labels.astype(np.int64), clusters


def _null_p_values(
    x: np.ndarray,
    clusters: list[Cluster],
    mcs: int,
    n_components: int,
    n_null: int,
    rng: np.random.Generator,
    stop_after: int = 10,
) -> None:
    """Selection-aware p-values: the strongest cluster of each column-permuted null vs each observed.

    Stops early (Besag-Clifford) once even the strongest observed cluster was beaten ``stop_after``
    times: it is then clearly not significant.
    """
    observed = np.array([cl.strength for cl in clusters])
    beaten = np.zeros(len(clusters), dtype=np.int64)
    done = 0
    for _ in range(n_null):
        null_x = rng.permuted(x, axis=0)
        _, null_clusters = cluster_rows(null_x, mcs, n_components)
        beaten += max((cl.strength for cl in null_clusters), default=0.0) >= observed
        done += 1
        if beaten.min() >= stop_after:
            break
    for cl, b in zip(clusters, beaten, strict=True):
        cl.p_value = float((1 + b) / (1 + done))


def cluster_by_responsible_data(
    behaviour_vectors: np.ndarray,
    datapoint_sample: np.ndarray,
    min_cluster_size: int | None = None,
    n_null: int = 199,
    seed: int = 0,
) -> tuple[np.ndarray, list[Cluster]]:
    """The paper's variant: cluster behaviours by their cosine profile over a sample of datapoints.

    Two behaviours fall together when the same training rows point their way. Returns
    ``(labels, clusters)`` as :func:`find_clusters`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> b, d = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
        >>> labels, _ = cluster_by_responsible_data(b, d, n_null=9)
        >>> labels.shape
        (30,)
    """
    b = unit_rows(np.asarray(behaviour_vectors, dtype=np.float64))
    d = unit_rows(np.asarray(datapoint_sample, dtype=np.float64))
    return find_clusters(b @ d.T, min_cluster_size, n_null=n_null, seed=seed)
