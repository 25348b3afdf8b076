"""Choose the sparse (representative) environments of a sparse GP, per species.

Like gap_fit's ``sparse_method`` with ``add_species=T``: every species present in
``Z`` gets its own ``min(n_sparse, n_distinct)`` sparse points, chosen independently.
All methods work on row-normalised descriptors x̂ = x / ‖x‖, the geometry of the
normalised dot-product kernel, and exact duplicates (identical x̂, e.g. every atom of
a perfect crystal) are dropped first so that K_mm is never singular by construction.

Methods:
    cur_points: leverage-score CUR row selection (Mahoney & Drineas, "CUR matrix
        decompositions for improved data analysis", PNAS 106, 697 (2009)).
        X̂ = U S Vᵀ (n×d), k = min(n_sparse, rank X̂),
        π_i = Σ_{j<k} U_ij² / k (Σ_i π_i = 1), sample rows ∝ π without replacement.
    uniform: evenly spaced indices over the environments in their original order.
    random: uniform random choice without replacement.
    fps: farthest-point sampling with d²(i, j) = ‖x̂_i − x̂_j‖² = 2 − 2 x̂_i·x̂_j,
        starting from the point farthest from the mean direction, then
        i_{t+1} = argmax_i min_{s≤t} d²(i, i_s).

Randomness comes from ``np.random.default_rng([seed, z])`` per species z, so a
species' choice does not depend on which other species are present or their order.
"""

from __future__ import annotations

import difflib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.errors import GapfitError

SPARSE_METHODS = ("cur_points", "uniform", "random", "fps")

# gap_fit sparse methods that gapfit deliberately does not implement.
_GAP_FIT_ONLY = (
    "cur_covariance",
    "covariance",
    "pivot",
    "cluster",
    "kmeans",
    "fuzzy",
    "file",
    "index_file",
    "none",
)

_DEDUP_DECIMALS = 10  # x̂ rows equal after rounding to 1e-10 are the same environment


def _check_method(method: str) -> str:
    """Return the canonical (lower-case) method name or raise a helpful error."""
    name = str(method).strip().lower()
    if name in SPARSE_METHODS:
        return name
    valid = ", ".join(SPARSE_METHODS)
    if name in _GAP_FIT_ONLY:
        raise GapfitError(
            f"sparse method {method!r} (a gap_fit option) is not supported by gapfit; "
            f"use 'cur_points' (leverage-score CUR) or one of: {valid}."
        )
    close = difflib.get_close_matches(name, SPARSE_METHODS, n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise GapfitError(
        f"unknown sparse method {method!r}; valid methods: {valid}.{hint}"
    )


def _normalise_rows(X: np.ndarray) -> np.ndarray:
    """x̂ = x / ‖x‖ row-wise; an all-zero row stays zero. X: (n, d) -> (n, d)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)  # (n, 1)
    return X / np.where(norm > 0.0, norm, 1.0)


def _distinct_rows(X_hat: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct row of X̂ (to 1e-10)."""
    key = np.round(X_hat, _DEDUP_DECIMALS) + 0.0  # "+ 0.0" turns -0.0 into +0.0
    _, first = np.unique(key, axis=0, return_index=True)
    return np.sort(first)


def _cur_points(
    X_hat: np.ndarray, m: int, n_sparse: int, rng: np.random.Generator
) -> np.ndarray:
    """m rows of X̂ (n, d) sampled ∝ rank-k leverage scores, without replacement."""
    n, d = X_hat.shape
    U, s, _ = np.linalg.svd(X_hat, full_matrices=False)  # X̂ = U S Vᵀ, U: (n, r)
    rank = int(np.sum(s > s[0] * max(n, d) * np.finfo(float).eps)) if s[0] > 0 else 1
    k = max(1, min(n_sparse, rank))
    leverage = np.sum(U[:, :k] ** 2, axis=1) / k  # π_i = Σ_{j<k} U_ij² / k, (n,)
    # Rows orthogonal to the top-k subspace have π_i = 0; a tiny floor lets the
    # sampler still fill m > (#rows with π_i > 0) slots without changing the rest.
    p = np.maximum(leverage, 1e-12)
    return rng.choice(n, size=m, replace=False, p=p / p.sum())


def _uniform(n: int, m: int) -> np.ndarray:
    """m evenly spaced indices in [0, n), first and last included when m > 1."""
    # floor(x + 1/2) (not banker's rounding) keeps a spacing ≥ 1 strictly increasing.
    return np.floor(np.linspace(0.0, n - 1, m) + 0.5).astype(np.int64)


@partial(jax.jit, static_argnames=("n_select",))
def farthest_point_sampling(X_hat: jax.Array, n_select: int) -> jax.Array:
    """Farthest-point sampling in the normalised-dot-product kernel's geometry.

    d²(i, j) = 2 − 2 x̂_i·x̂_j. Starts from the row farthest from the mean direction
    (argmin_i x̂_i·x̄), then adds i_{t+1} = argmax_i min_{s≤t} d²(i, i_s).

    Args:
        X_hat: (n, d) row-normalised descriptors, distinct rows, n ≥ n_select.
        n_select: number of rows to pick (static).

    Returns:
        (n_select,) int indices into X_hat in the order they were picked.
    """
    mean = jnp.mean(X_hat, axis=0)  # x̄: (d,); its norm does not change the argmin
    first = jnp.argmin(X_hat @ mean)  # farthest from the mean direction
    chosen = jnp.zeros(n_select, dtype=first.dtype).at[0].set(first)

    def d2_to(i: jax.Array) -> jax.Array:
        return 2.0 - 2.0 * (X_hat @ X_hat[i])  # d²(·, i): (n,)

    def add_one(
        t: int, state: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        chosen, d2_min = state
        nxt = jnp.argmax(d2_min)
        # -inf marks picked rows: rounding can make d² of a near (but distinct) row
        # fall below the ~1e-16 of a picked one, so never rely on d² alone.
        d2_min = jnp.minimum(d2_min, d2_to(nxt)).at[nxt].set(-jnp.inf)
        return chosen.at[t].set(nxt), d2_min

    d2_min = d2_to(first).at[first].set(-jnp.inf)  # min_{s≤0} d²(·, i_s): (n,)
    chosen, _ = jax.lax.fori_loop(1, n_select, add_one, (chosen, d2_min))
    return chosen


def select_sparse(
    X: np.ndarray, Z: np.ndarray, n_sparse: int, method: str, seed: int
) -> np.ndarray:
    """Choose sparse environments per species (gap_fit ``add_species=T``).

    Args:
        X: (n_env, d) descriptor rows (any scale; rows are normalised here).
        Z: (n_env,) atomic number of each environment's central atom.
        n_sparse: sparse points per species (≥ 1); a species with fewer distinct
            environments contributes all of them.
        method: one of ``SPARSE_METHODS`` (case-insensitive).
        seed: non-negative random seed; the result is a deterministic function of
            (X, Z, n_sparse, method, seed).

    Returns:
        (n_chosen,) sorted, unique int64 indices into X; never two rows with the
        same x̂.

    Raises:
        GapfitError: unknown method, n_sparse < 1, bad seed, or malformed X / Z.
    """
    name = _check_method(method)
    if isinstance(n_sparse, bool) or int(n_sparse) != n_sparse or n_sparse < 1:
        raise GapfitError(
            f"n_sparse must be an integer ≥ 1, got {n_sparse!r}; "
            "set the number of sparse points per species."
        )
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise GapfitError(f"random seed must be a non-negative integer, got {seed!r}.")
    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z)
    if X.ndim != 2 or Z.ndim != 1 or X.shape[0] != Z.shape[0]:
        raise GapfitError(
            f"expected X (n_env, d) and Z (n_env,), got X {X.shape} and "
            f"Z {Z.shape}; pass one descriptor row per environment."
        )
    if Z.size and (not np.issubdtype(Z.dtype, np.integer) or Z.min() < 0):
        raise GapfitError(
            f"Z must hold non-negative integer atomic numbers, got "
            f"dtype {Z.dtype} with values {np.unique(Z)[:5]}."
        )
    if not np.all(np.isfinite(X)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(X), axis=1))[0])
        raise GapfitError(
            f"descriptor row {bad} contains NaN or inf; check the "
            "structure of that environment and the descriptor settings."
        )

    n_sparse = int(n_sparse)
    chosen: list[np.ndarray] = []
    for z in np.unique(Z):
        env = np.flatnonzero(Z == z)  # this species' rows of X
        X_hat = _normalise_rows(X[env])
        distinct = _distinct_rows(X_hat)  # positions into env, original order
        n, m = distinct.size, min(n_sparse, distinct.size)
        rng = np.random.default_rng([int(seed), int(z)])  # independent of species order
        if m == n:
            pick = np.arange(n)
        elif name == "cur_points":
            pick = _cur_points(X_hat[distinct], m, n_sparse, rng)
        elif name == "uniform":
            pick = _uniform(n, m)
        elif name == "random":
            pick = rng.choice(n, size=m, replace=False)
        else:  # fps
            pick = np.asarray(farthest_point_sampling(jnp.asarray(X_hat[distinct]), m))
        chosen.append(env[distinct[pick]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
