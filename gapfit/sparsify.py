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
        S and V come from the R factor of X̂ = Q R, so U_ij = x̂_i·v_j / s_j.
    uniform: evenly spaced indices over the environments in their original order.
    random: uniform random choice without replacement.
    fps: farthest-point sampling with d²(i, j) = ‖x̂_i − x̂_j‖² = 2 − 2 x̂_i·x̂_j,
        starting from the point farthest from the mean direction, then
        i_{t+1} = argmax_i min_{s≤t} d²(i, i_s).

Randomness comes from ``np.random.default_rng([seed, z])`` per species z, so a
species' choice does not depend on which other species are present or their order.

The selection is split into steps that need only small things, so that a distributed
fit (``gapfit.distributed``) runs the same code as ``select_sparse``: ``row_keys``
(128-bit keys of the rounded rows; duplicates are found from keys alone),
``distinct_rows`` (candidates per species), ``cur_basis`` (from an R factor of the
candidates, (d, d)), ``leverage_scores`` (per row) and ``choose_sparse`` (the seeded
choice from the scores). Only fps needs all candidate rows in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
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


def normalise_rows(X: np.ndarray) -> np.ndarray:
    """x̂ = x / ‖x‖ row-wise; an all-zero row stays zero. X: (n, d) -> (n, d)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)  # (n, 1)
    return X / np.where(norm > 0.0, norm, 1.0)


def _multipliers(d: int) -> np.ndarray:
    """(d, 2) odd uint64 constants of the row hash: splitmix64 of 1..2d, a fixed
    sequence (no random generator whose stream could change between versions)."""
    x = np.arange(1, 2 * d + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) | np.uint64(1)).reshape(d, 2)


def row_keys(X_hat: np.ndarray) -> np.ndarray:
    """128-bit keys of the rows of X̂ rounded to 1e-10: equal rows get equal keys.

    key_i = Σ_j bits(round(x̂_ij)) c_j mod 2^64 for two fixed sets of odd c_j
    (multilinear hashing), so distinct rows share a key with negligible probability.
    A distributed fit moves these 16 bytes per row instead of the rows.

    Args:
        X_hat: (n, d) row-normalised descriptors.

    Returns:
        (n, 2) uint64 keys.
    """
    rounded = np.round(X_hat, _DEDUP_DECIMALS) + 0.0  # "+ 0.0" turns -0.0 into +0.0
    bits = np.ascontiguousarray(rounded, dtype=np.float64).view(np.uint64)  # (n, d)
    return bits @ _multipliers(X_hat.shape[1])  # wraps mod 2^64


def distinct_rows(Z: np.ndarray, keys: np.ndarray) -> dict[int, np.ndarray]:
    """The candidates of each species: sorted indices of the first row with each key.

    Args:
        Z: (n,) species of each row. keys: (n, 2) ``row_keys`` of the rows.

    Returns:
        {z: sorted int64 indices into Z} for every z in Z, in increasing z.
    """
    out = {}
    for z in np.unique(Z):
        env = np.flatnonzero(Z == z)  # this species' rows, original order
        _, first = np.unique(keys[env], axis=0, return_index=True)
        out[int(z)] = env[np.sort(first)]
    return out


def cur_basis(R: np.ndarray, n_rows: int, n_sparse: int) -> np.ndarray:
    """``B (d, k)`` with leverage ``π_i = |x̂_i B|²`` from the R factor of X̂.

    X̂ = Q R and R = U_R S Vᵀ give X̂ = (Q U_R) S Vᵀ, so U_ij = x̂_i·v_j / s_j and
    π_i = Σ_{j<k} U_ij² / k with k = min(n_sparse, rank X̂); B = V_k S_k⁻¹ / √k.
    A factor folded chunk by chunk (or reduced over workers) serves as well as a
    one-shot QR: only R's singular values and right vectors are used.

    Args:
        R: (r, d) upper-triangular factor of the n_rows distinct rows of X̂ (≥ 2
            rows, so that s_0 > 0).
        n_rows: number of rows of X̂ (for the rank tolerance max(n, d) eps s_0).
        n_sparse: sparse points wanted.
    """
    _, s, Vt = np.linalg.svd(R)  # same s, V as X̂'s
    d = R.shape[1]
    rank = int(np.sum(s > s[0] * max(n_rows, d) * np.finfo(float).eps))
    k = max(1, min(n_sparse, rank))
    return Vt[:k].T / (s[:k] * np.sqrt(k))


def leverage_scores(X_hat: np.ndarray, B: np.ndarray) -> np.ndarray:
    """π_i = |x̂_i B|²: X̂ (n, d), B (d, k) from ``cur_basis`` -> (n,)."""
    return np.sum((X_hat @ B) ** 2, axis=1)


def _sample_cur(scores: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m of n rows sampled ∝ leverage, without replacement."""
    # Rows orthogonal to the top-k subspace have π_i = 0; a tiny floor lets the
    # sampler still fill m > (#rows with π_i > 0) slots without changing the rest.
    p = np.maximum(scores, 1e-12)
    return rng.choice(scores.size, size=m, replace=False, p=p / p.sum())


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


def check_selection(n_sparse: int, method: str, seed: int) -> tuple[str, int, int]:
    """Validated ``(method name, n_sparse, seed)``; GapfitError on a bad one."""
    name = _check_method(method)
    if isinstance(n_sparse, bool) or int(n_sparse) != n_sparse or n_sparse < 1:
        raise GapfitError(
            f"n_sparse must be an integer ≥ 1, got {n_sparse!r}; "
            "set the number of sparse points per species."
        )
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise GapfitError(f"random seed must be a non-negative integer, got {seed!r}.")
    return name, int(n_sparse), int(seed)


def choose_sparse(
    candidates: Mapping[int, np.ndarray],
    n_sparse: int,
    method: str,
    seed: int,
    scores: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """The seeded choice among each species' candidates (every method but fps).

    Args:
        candidates: {z: sorted row indices of species z's distinct environments}
            (``distinct_rows``).
        n_sparse, method, seed: as ``select_sparse``.
        scores: cur_points only: {z: leverage of each candidate} for every species
            with more than n_sparse candidates (``leverage_scores``).

    Returns:
        (n_chosen,) sorted int64 row indices.
    """
    name, n_sparse, seed = check_selection(n_sparse, method, seed)
    chosen = []
    for z, rows in candidates.items():
        n, m = rows.size, min(n_sparse, rows.size)
        rng = np.random.default_rng([seed, int(z)])  # independent of species order
        if m == n:
            pick = np.arange(n)
        elif name == "cur_points":
            pick = _sample_cur(np.asarray((scores or {})[z]), m, rng)
        elif name == "uniform":
            pick = _uniform(n, m)
        elif name == "random":
            pick = rng.choice(n, size=m, replace=False)
        else:
            raise GapfitError("fps is not a score-based choice; use select_sparse.")
        chosen.append(rows[pick])
    return _sorted(chosen)


def _sorted(chosen: list[np.ndarray]) -> np.ndarray:
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


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
    name, n_sparse, seed = check_selection(n_sparse, method, seed)
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

    X_hat = normalise_rows(X)
    candidates = distinct_rows(Z, row_keys(X_hat))
    if name == "fps":  # greedy over all candidates at once: not a score + choice
        chosen = []
        for rows in candidates.values():
            m = min(n_sparse, rows.size)
            pick = farthest_point_sampling(jnp.asarray(X_hat[rows]), m)
            chosen.append(rows if m == rows.size else rows[np.asarray(pick)])
        return _sorted(chosen)
    scores = {}
    if name == "cur_points":
        for z, rows in candidates.items():
            if rows.size > n_sparse:
                R = np.linalg.qr(X_hat[rows], mode="r")  # X̂ = Q R, R: (r, d)
                B = cur_basis(R, rows.size, n_sparse)
                scores[z] = leverage_scores(X_hat[rows], B)
    return choose_sparse(candidates, n_sparse, name, seed, scores)


def select_sparse_by_config_type(
    X: np.ndarray,
    Z: np.ndarray,
    config_types: np.ndarray,
    counts: Mapping[str, int],
    method: str,
    seed: int,
) -> np.ndarray:
    """gap_fit's ``config_type_n_sparse``: ``select_sparse`` with ``counts[t]``
    points per species among the environments of each config_type ``t`` (types not
    in ``counts`` give none); an environment chosen by two types is kept once.

    Args:
        config_types: (n_env,) config_type of each environment's configuration.
        counts: {config_type: sparse points per species}.
        X, Z, method, seed: as for ``select_sparse``.

    Raises:
        GapfitError: a type in ``counts`` that no environment has.
    """
    config_types = np.asarray(config_types)
    check_config_types(counts, config_types.tolist())
    chosen = []
    for name, n in counts.items():
        rows = np.flatnonzero(config_types == name)
        chosen.append(rows[select_sparse(X[rows], Z[rows], n, method, seed)])
    idx = np.sort(np.concatenate(chosen))
    kept = distinct_rows(np.asarray(Z)[idx], row_keys(normalise_rows(X[idx])))
    return _sorted([idx[rows] for rows in kept.values()])


def check_config_types(counts: Mapping[str, int], found: Sequence[str]) -> None:
    """Every config_type that ``config_type_n_sparse`` names is among ``found``.

    Raises:
        GapfitError: one is not, with the types there are.
    """
    have = set(found)
    for name in counts:
        if name not in have:
            raise GapfitError(
                f"config_type_n_sparse names config_type '{name}', which no training "
                f"configuration has (found: {', '.join(sorted(have))}); fix the name."
            )
