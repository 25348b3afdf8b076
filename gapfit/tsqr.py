"""Tall-skinny QR: the R factor of a tall matrix from the R factors of its row blocks.

For ``[A_1; A_2] = [Q_1 R_1; Q_2 R_2] = diag(Q_1, Q_2) [R_1; R_2]`` and
``[R_1; R_2] = Q_12 R``, ``R`` is an R factor of ``[A_1; A_2]`` (unique up to the
signs of its rows), so the factors of blocks held by different workers reduce pairwise
in a binary tree to the factor of all rows, moving only (n, n) triangles (Demmel,
Grigori, Hoemmen & Langou, SIAM J. Sci. Comput. 34, A206 (2012)). Applied to
``[Lambda^-1/2 K_nm | Lambda^-1/2 y]`` it gives the streamed QR of ``sparse_gp`` from
any split of the rows; row signs cancel in ``w = R^-1 Q^T b`` and in ``|R^-T k|^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.sparse_gp import fold

T = TypeVar("T")


def stack_qr(R_1: np.ndarray, R_2: np.ndarray) -> np.ndarray:
    """R factor ``(n, n)`` of ``[R_1; R_2]``, both ``(n, n)`` upper-triangular factors
    of ``[A | b]`` row blocks: ``sparse_gp.fold`` with ``R_2`` as the new rows."""
    return np.asarray(_stacked(R_1, R_2))


@jax.jit
def _stacked(R_1: jax.Array, R_2: jax.Array) -> jax.Array:
    return fold(R_1, R_2[:, :-1], R_2[:, -1])


def tree_reduce(items: Sequence[T], pair: Callable[[T, T], T]) -> T:
    """Reduce ``items`` pairwise, ``((0 1) (2 3)) ...``, in ceil(log2 n) levels.

    ``pair`` is ``stack_qr`` itself, or a function submitting it to a cluster (then
    items are futures and each level runs in parallel).
    """
    if not items:
        raise ValueError("tree_reduce needs at least one item")
    level = list(items)
    while len(level) > 1:
        odd = level[-1:] if len(level) % 2 else []
        level = [
            pair(a, b) for a, b in zip(level[::2], level[1::2], strict=False)
        ] + odd
    return level[0]


class RowFactor:
    """R factor ``(d+1, d+1)`` of ``[rows | 0]`` for rows added block by block,
    folded ``cap`` rows at a time by ``sparse_gp.fold`` (one jit shape)."""

    def __init__(self, d: int, cap: int) -> None:
        self.R = jnp.zeros((d + 1, d + 1))
        self.d, self.cap = d, cap
        self.pending: list[np.ndarray] = []
        self.n = 0

    def add(self, rows: np.ndarray) -> None:
        """Add ``rows (n, d)``."""
        self.pending.append(rows)
        self.n += len(rows)
        while self.n >= self.cap:
            rows = np.concatenate(self.pending)
            self._fold(rows[: self.cap])
            self.pending, self.n = [rows[self.cap :]], len(rows) - self.cap

    def _fold(self, rows: np.ndarray) -> None:
        # a new array for every fold, never written again: fold runs asynchronously
        # and may read a host array in place
        block = np.zeros((self.cap, self.d))
        block[: len(rows)] = rows  # zero rows leave R unchanged
        self.R = fold(self.R, block, np.zeros(self.cap))

    def factor(self) -> np.ndarray:
        """The R factor of all rows added (as ``[rows | 0]``)."""
        if self.n:
            self._fold(np.concatenate(self.pending))
            self.pending, self.n = [], 0
        return np.asarray(self.R)
