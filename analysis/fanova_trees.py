"""Exact functional ANOVA of one fitted regression tree under the uniform measure on the unit cube.

A tree is a partition of [0, 1]^d into axis-aligned boxes (its leaves) with a constant prediction each.
The marginal of the tree over a subset S of inputs (the mean over the other inputs) is then piecewise
constant on the grid of the tree's split points on S, and its value in a grid cell is the sum, over the
leaves whose box covers the cell, of the leaf value times the volume of the box in the other dimensions.
Everything here is exact; nothing is sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TreeAnova"]


def _leaf_boxes(tree: Any, levels: Sequence[int | None]) -> tuple[np.ndarray, ...]:
    """Leaves of a fitted sklearn ``tree_`` (untyped: sklearn ships no type hints) as boxes in [0, 1]^d.

    Returns ``(lower, upper, value, unit thresholds, feature, split nodes)``; ``levels[j]`` is the
    number of categories of a categorical input (fitted on integer codes 0..K-1), else None (the input
    is already scaled to [0, 1]).
    """
    left, right = tree.children_left, tree.children_right
    feature = tree.feature
    threshold = _unit_thresholds(tree.threshold, feature, levels)
    n_nodes, d = left.shape[0], len(levels)
    lower = np.zeros((n_nodes, d))
    upper = np.ones((n_nodes, d))
    # Nodes are visited one depth level at a time so each level is one vectorised step.
    frontier = np.array([0])
    while frontier.size:
        inner = frontier[left[frontier] >= 0]
        if not inner.size:
            break
        lc, rc, f, t = left[inner], right[inner], feature[inner], threshold[inner]
        lower[lc] = lower[inner]
        upper[lc] = upper[inner]
        lower[rc] = lower[inner]
        upper[rc] = upper[inner]
        upper[lc, f] = np.minimum(upper[inner, f], t)
        lower[rc, f] = np.maximum(lower[inner, f], t)
        frontier = np.concatenate([lc, rc])
    leaves = np.flatnonzero(left < 0)
    split_nodes = np.flatnonzero(left >= 0)
    value = tree.value[leaves, 0, 0].astype(float)
    return lower[leaves], upper[leaves], value, threshold, feature, split_nodes


def _unit_thresholds(threshold: np.ndarray, feature: np.ndarray, levels: Sequence[int | None]) -> np.ndarray:
    """Split points in unit coordinates; categorical splits snap to category boundaries.

    Category k of K owns [k/K, (k+1)/K), so a split "code <= t" falls at (floor(t) + 1) / K and each
    category keeps exactly mass 1/K (the discrete uniform measure).
    """
    out = np.clip(threshold.astype(float), 0.0, 1.0)
    for j, k in enumerate(levels):
        if k is None:
            continue
        sel = feature == j
        out[sel] = np.clip((np.floor(threshold[sel]) + 1.0) / k, 0.0, 1.0)
    return out


class TreeAnova:
    """Variance decomposition of one tree: total variance, main-effect and pair marginals."""

    def __init__(self, tree: Any, levels: Sequence[int | None]) -> None:
        lower, upper, value, threshold, feature, split_nodes = _leaf_boxes(tree, levels)
        self.d = len(levels)
        widths = upper - lower
        volume = widths.prod(axis=1)
        self.mean = float(value @ volume)
        # Leaf values centred on the tree's mean, so every marginal below is centred and its variance
        # is a plain integral of its square (no cancellation against mean**2).
        self._centred = value - self.mean
        self.variance = float(volume @ self._centred**2)
        self._widths = widths
        # Per input: cell edges (0, split points..., 1) and each leaf's covered cell range [lo, hi).
        self.edges: list[np.ndarray] = []
        self._lo = np.empty(lower.shape, dtype=np.int64)
        self._hi = np.empty(upper.shape, dtype=np.int64)
        for j in range(self.d):
            cuts = np.unique(threshold[split_nodes[feature[split_nodes] == j]])
            edges = np.unique(np.concatenate([[0.0], cuts, [1.0]]))
            self.edges.append(edges)
            self._lo[:, j] = np.searchsorted(edges, lower[:, j])
            self._hi[:, j] = np.searchsorted(edges, upper[:, j])
        centred_main = [self._marginal_1d(j) for j in range(self.d)]
        self.main_variance = np.array(
            [float(np.diff(e) @ m**2) for e, m in zip(self.edges, centred_main, strict=True)]
        )
        #: Main-effect marginal of each input on its cells (not centred).
        self.main: list[np.ndarray] = [m + self.mean for m in centred_main]

    def _other_volume(self, dims: Sequence[int]) -> np.ndarray:
        keep = np.ones(self.d, dtype=bool)
        keep[list(dims)] = False
        return self._centred * self._widths[:, keep].prod(axis=1)

    def _marginal_1d(self, j: int) -> np.ndarray:
        """Centred marginal of input j on each of its cells (a difference array over the leaves' ranges)."""
        n_cells = self.edges[j].size - 1
        w = self._other_volume([j])
        diff = np.bincount(self._lo[:, j], w, minlength=n_cells + 1)
        diff -= np.bincount(self._hi[:, j], w, minlength=n_cells + 1)
        return np.cumsum(diff)[:n_cells]

    def marginal_2d(self, j: int, k: int) -> np.ndarray:
        """Centred marginal of inputs (j, k) on their cell grid, shape (cells_j, cells_k)."""
        nj, nk = self.edges[j].size - 1, self.edges[k].size - 1
        w = self._other_volume([j, k])
        lo_j, hi_j, lo_k, hi_k = self._lo[:, j], self._hi[:, j], self._lo[:, k], self._hi[:, k]
        stride = nk + 1
        index = np.concatenate(
            [lo_j * stride + lo_k, hi_j * stride + lo_k, lo_j * stride + hi_k, hi_j * stride + hi_k]
        )
        weights = np.concatenate([w, -w, -w, w])
        grid = np.bincount(index, weights, minlength=(nj + 1) * stride).reshape(nj + 1, stride)
        np.cumsum(grid, axis=0, out=grid)
        np.cumsum(grid, axis=1, out=grid)
        return grid[:nj, :nk]

    def pair_variance(self, j: int, k: int) -> float:
        """Variance of the (j, k) marginal: both main effects plus their interaction."""
        squared = self.marginal_2d(j, k)
        np.square(squared, out=squared)
        return float(np.diff(self.edges[j]) @ (squared @ np.diff(self.edges[k])))

    def cell_index(self, j: int, x: np.ndarray) -> np.ndarray:
        """Cell of input j holding each unit-scaled point (a point on a split goes left, as in sklearn)."""
        inner = self.edges[j][1:-1]
        return np.searchsorted(inner, x, side="left")
