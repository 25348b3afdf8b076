"""Uncertainty-driven choices: which structures to label next, which environments
become sparse points.

Two scores of a pool structure S, both DTC variances (Quiñonero-Candela & Rasmussen,
JMLR 6, 1939 (2005)) of the SOAP term, for environments with unit SOAP vectors
``x_hat`` and species ``s``, from descriptors alone (no derivatives, so a whole pool
costs a few matrix products per step; zero columns for the other terms' sparse
points):

- ``local_energy_variance``: of each local energy, summed over the structure,
  ``sum_{i in S} var eps(x_i)``, ``var eps(x) = delta^2 - |L_mm^-1 k_x|^2 +
  |R^-T L_mm^-1 k_x|^2`` with ``k_x,m = delta^2 (x_hat . z_hat_m)^zeta [s == s_m]``:
  how much of the structure's environments the model has not pinned down. Forces are
  derivatives of the local energies, so this tracks what a force label teaches; on
  the EMT Cu pool of ``benchmarks/bench_learn.py`` it reached lower test force and
  energy errors with fewer labels than the energy score;
- ``energy_variance``: of the total energy ``E_S = sum_{i in S} eps(x_i)``,
  ``sum_{i,j in S} k(x_i, x_j) - |L_mm^-1 k|^2 + |R^-T L_mm^-1 k|^2`` with
  ``k = sum_{i in S} k_{x_i}``: an observed quantity, but dominated by the
  structure's mean environment.

Greedy maximum determinant (``greedy_max_det``): for a PSD matrix ``K (n, n)``, pick
``i_1 = argmax K_ii``, then repeatedly the item with the largest variance conditional
on those picked, ``d_i = K_ii - K_iS K_SS^-1 K_Si`` (a pivoted partial Cholesky,
O(n k) per pick). It maximises ``log det K_SS`` greedily, so a near-duplicate of a
picked item (``d_i ~ 0``) is never picked. Two uses:

- batches of pool structures: ``K_ij = u_i u_j S_ij`` with ``u_i`` the score (a
  std) of structure i and ``S_ij = (s_hat_i . s_hat_j)^zeta`` the normalised
  kernel of the structures' mean unit SOAP vectors: a quality-diversity determinantal
  point process (Kulesza & Taskar, Found. Trends Mach. Learn. 5, 123 (2012); greedy
  MAP as in Chen, Zhang & Zhou, NeurIPS 2018);
- new sparse points: ``K`` the Nyström residual ``K_cc - K_cm K_mm^-1 K_mc`` of the
  candidate environments, the part of their prior the sparse set does not represent.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import ase
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from gapfit.assembly import chunk_batch
from gapfit.data import Frame, as_frames
from gapfit.fit import GAP, _specs, triplet_cutoff
from gapfit.kernels import DotProductKernel, kernel_block, normalise
from gapfit.model import Model, chunk_indices
from gapfit.neighbours import bucket, padded_stream
from gapfit.sparse_gp import dtc_variance

CHUNK = 2048  # environments per jitted call
SCORES = ("environments", "energy")  # pool-mode scores (see the module docstring)
# pool-mode batches (gapfit.pool_mode)
STRATEGIES = ("mixed", "tournament", "uncertainty", "random")


def soap_columns(model: Model) -> slice:
    """Columns of the SOAP term's sparse points among all the model's weights."""
    start = 0
    for term in model.terms:
        if term.name == "soap":
            return slice(start, start + term.n_sparse)
        start += term.n_sparse
    raise ValueError("the model has no SOAP term")


@jax.jit
def _kernel_rows(kernel, X_hat, s, Z_hat, Z_s) -> jax.Array:
    return kernel_block(kernel, X_hat, s, Z_hat, Z_s)


def energy_prior(
    kernel: DotProductKernel, X_hat: np.ndarray, s: np.ndarray, owner: np.ndarray
) -> np.ndarray:
    """Prior variance ``sum_{i,j in S} k(x_i, x_j)`` ``(n,)`` eV^2 of the SOAP energy of
    each structure S, from the unit SOAP rows of its environments (``owner``: the
    structure of each row, sorted). It does not depend on the data: compute it once."""
    bounds = np.searchsorted(owner, np.arange(owner[-1] + 2))
    return np.array(
        [
            float(jnp.sum(kernel_block(kernel, *(2 * (X_hat[a:b], s[a:b])))))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    )


def _soap_rows(model: Model, X_hat: np.ndarray, s: np.ndarray):
    """SOAP kernel rows ``k(x_i, z_m)`` of the environments in chunks: yields
    ``(start, rows (n_chunk, M_soap))``; one compilation per model size."""
    term = model.term("soap")
    for a in range(0, len(X_hat), CHUNK):
        x, t = X_hat[a : a + CHUNK], s[a : a + CHUNK]
        pad = CHUNK - len(x)
        k = _kernel_rows(
            term.kernel,
            jnp.asarray(np.pad(x, ((0, pad), (0, 0)))),
            jnp.asarray(np.pad(t, (0, pad), constant_values=-1)),
            *term._z,
        )
        yield a, k[: len(x)]


def soap_cholesky(model: Model) -> jax.Array:
    """The SOAP block of ``L_mm`` (M_soap, M_soap): the Cholesky factor of the SOAP
    term's ``K_mm`` (with jitter), ``L_mm`` being block diagonal over the terms."""
    cols = soap_columns(model)
    return model.posterior.L_mm[cols][:, cols]


def _soap_variance(model: Model, prior: jax.Array, k: jax.Array) -> np.ndarray:
    """DTC variance of SOAP-only targets with prior variances ``prior (n,)`` and SOAP
    kernel rows ``k (n, M_soap)``, widened with zeros for the other terms' sparse
    points."""
    full = (
        jnp.zeros((len(k), model.posterior.L_mm.shape[0]))
        .at[:, soap_columns(model)]
        .set(k)
    )
    return np.asarray(dtc_variance([prior], [full], model.posterior))


def energy_variance(
    model: Model,
    X_hat: np.ndarray,
    s: np.ndarray,
    owner: np.ndarray,
    prior: np.ndarray,
) -> np.ndarray:
    """DTC variance ``(n,)`` eV^2 of the SOAP energy of each structure (see the module
    docstring), from the unit SOAP ``X_hat (n_env, F)``, species index ``s (n_env,)``
    and structure ``owner (n_env,)`` (sorted) of its environments and the
    ``energy_prior``."""
    k_E = np.zeros((len(prior), model.term("soap").n_sparse))  # sum_i k(x_i, z_m)
    for a, k in _soap_rows(model, X_hat, s):
        o = owner[a : a + len(k)]
        first = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])  # segment starts
        k_E[o[first]] += np.add.reduceat(np.asarray(k), first, axis=0)
    return _soap_variance(model, jnp.asarray(prior), jnp.asarray(k_E))


def local_energy_variance(model: Model, X_hat: np.ndarray, s: np.ndarray) -> np.ndarray:
    """DTC variance ``(n_env,)`` eV^2 of the SOAP local energy of each environment
    (unit SOAP ``X_hat (n_env, F)``, species index ``s (n_env,)``): prior ``delta^2``
    less what the sparse set and the data explain (the ``energies_std`` of
    ``Model.predict`` for a SOAP-only model)."""
    term = model.term("soap")
    out = np.empty(len(X_hat))
    for a, k in _soap_rows(model, X_hat, s):
        prior = jnp.full(len(k), term.kernel.delta**2)
        out[a : a + len(k)] = _soap_variance(model, prior, k)
    return out


def nystrom_residual(model: Model, X_hat: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``K_cc - K_cm K_mm^-1 K_mc`` ``(n, n)`` eV^2 of the SOAP term for candidate
    environments ``X_hat (n, F)`` (unit rows), species index ``s (n,)``."""
    n = len(X_hat)
    size = bucket(n)  # padded (zero rows, no species): few compilations
    X = np.zeros((size, X_hat.shape[1]))
    X[:n] = X_hat
    t = np.full(size, -1, dtype=np.int64)
    t[:n] = s
    term = model.term("soap")
    L = soap_cholesky(model)
    K = _nystrom_residual(term.kernel, jnp.asarray(X), jnp.asarray(t), *term._z, L)
    return np.asarray(K)[:n, :n]


@jax.jit
def _nystrom_residual(kernel, X, t, Z_hat, Z_s, L) -> jax.Array:
    k = kernel_block(kernel, X, t, Z_hat, Z_s)  # (n, M_soap)
    V = jsl.solve_triangular(L, k.T, lower=True)  # L^-1 k: (M_soap, n)
    return kernel_block(kernel, X, t, X, t) - V.T @ V


def greedy_max_det(
    K: np.ndarray,
    n_pick: int,
    tol: float = 0.0,
    group: np.ndarray | None = None,
    cap: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy maximum-determinant subset of a PSD ``K (n, n)`` (pivoted partial
    Cholesky; see the module docstring).

    Args:
        n_pick: at most this many items.
        tol: stop when the largest conditional variance is <= tol (units of K).
        group, cap: optional group index ``(n,)`` of each item and the most items
            ``cap[g]`` to take from group g.

    Returns:
        Indices ``(k,)``, k <= n_pick, in the order picked; deterministic (the first
        of equal maxima).
    """
    n = K.shape[0]
    d = np.diag(K).astype(float).copy()  # conditional variances
    rows = np.zeros((min(n_pick, n), n))  # rows of the partial Cholesky factor
    left = None if cap is None else np.array(cap, dtype=int).copy()
    picks: list[int] = []
    for t in range(min(n_pick, n)):
        if left is not None:
            d = np.where(left[group] > 0, d, -np.inf)
        i = int(np.argmax(d))
        if not d[i] > tol:
            break
        picks.append(i)
        rows[t] = (K[i] - rows[:t, i] @ rows[:t]) / np.sqrt(d[i])
        d = d - rows[t] ** 2
        d[picks] = -np.inf
        if left is not None:
            left[group[i]] -= 1
    return np.array(picks, dtype=np.int64)


def unit_soap(
    gap: GAP, species: Sequence[int], frames: Sequence[Frame | ase.Atoms]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit SOAP vectors ``(n_env, F)`` (settings of ``gap``), species index
    ``(n_env,)`` and frame index ``(n_env,)`` of every environment of ``frames``."""
    frames = as_frames(frames, require=(), source="structures")
    soap, pair = gap._settings()
    specs = {"soap": _specs(soap, pair, tuple(species))["soap"]}
    X, s = descriptors(gap, specs, frames)["soap"]
    X_hat = np.asarray(normalise(jnp.asarray(X))[0]) if len(X) else X
    owner = np.repeat(np.arange(len(frames)), [len(f.numbers) for f in frames])
    return X_hat, s, owner


def descriptors(
    gap: GAP, specs: dict, frames: Sequence[Frame]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``GAP._descriptors`` of ``frames`` in chunks of 512 atoms padded to one
    shape, their neighbour lists streamed beyond ``neighbours.HELD_ATOMS`` atoms
    (``neighbours.padded_stream``): ``{term name: (values, types)}`` of the terms in
    ``specs``."""
    sizes = [len(f.numbers) for f in frames]
    chunks = chunk_indices(sizes, 512)
    cutoff = max(spec.neighbour_cutoff for spec, _ in specs.values())
    species = next(iter(specs.values()))[0].species
    build = partial(
        chunk_batch,
        frames,
        species=species,
        cutoff=cutoff,
        triplet_cutoff=triplet_cutoff(specs),
    )
    _, _, batches = padded_stream(build, chunks, sum(sizes))
    return gap._descriptors(specs, frames, chunks, batches)


def unit_mean_soap(X_hat: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Unit mean SOAP vector ``(n, F)`` of each structure, from the unit SOAP rows
    ``X_hat (n_env, F)`` of environments belonging to structure ``owner (n_env,)``."""
    total = np.zeros((n, X_hat.shape[1]))
    np.add.at(total, owner, X_hat)
    return np.asarray(normalise(jnp.asarray(total))[0])


def diverse_batch(
    u: np.ndarray,
    S_hat: np.ndarray,
    kernel: DotProductKernel,
    n_pick: int,
    n_candidates: int,
    labelled: Sequence[int] = (),
    tol: float = 1e-6,
) -> np.ndarray:
    """The next batch: greedy max-determinant of ``u_i u_j S_ij``,
    ``S_ij = (s_hat_i . s_hat_j)^zeta``, among the ``n_candidates`` structures of
    largest uncertainty ``u (n,)`` (a std; -inf marks structures not to pick), with
    unit mean SOAP ``S_hat (n, F)``. Near-duplicates (``1 - S_ij^2 < tol``) of
    ``labelled`` structures are no candidates, and no item whose conditional variance
    is below ``tol max(u)^2`` (a near-duplicate of a picked one) is taken, so the
    batch may be smaller than ``n_pick``."""
    order = np.argsort(-u, kind="stable")
    cand = order[np.isfinite(u[order])][:n_candidates]
    if len(cand) and len(labelled):
        S = (S_hat[cand] @ S_hat[np.asarray(labelled)].T) ** kernel.zeta
        cand = cand[1.0 - S.max(axis=1) ** 2 >= tol]
    if len(cand) == 0:
        return cand
    S = (S_hat[cand] @ S_hat[cand].T) ** kernel.zeta  # (c, c)
    K = u[cand, None] * u[None, cand] * S
    return cand[greedy_max_det(K, n_pick, tol * float(u[cand].max()) ** 2)]
