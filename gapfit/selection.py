"""Uncertainty-driven choices: which structures to label next, which environments
become sparse points.

Two scores of a pool structure S, both DTC variances (Quiñonero-Candela & Rasmussen,
JMLR 6, 1939 (2005)) of the SOAP terms' part of the model (their local energies
summed; with one term per element, each atom's own element's), for environments
with unit SOAP vectors ``x_hat`` and species ``s``, from descriptors alone (no
derivatives, so a whole pool costs a few matrix products per step; zero columns for
the other terms' sparse points):

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

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import NamedTuple

import ase
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from gapfit.assembly import chunk_batch
from gapfit.data import Frame, as_frames
from gapfit.fit import GAP, term_specs, triplet_cutoff
from gapfit.kernels import DotProductKernel, kernel_block, normalise
from gapfit.model import Model, chunk_indices
from gapfit.neighbours import bucket, padded_stream
from gapfit.soap import SoapSpec
from gapfit.sparse_gp import dtc_variance
from gapfit.terms import SoapTerm

CHUNK = 2048  # environments per jitted call
SCORES = ("environments", "energy")  # pool-mode scores (see the module docstring)
# pool-mode batches (gapfit.pool_mode)
STRATEGIES = ("mixed", "tournament", "uncertainty", "random")


class Environments(NamedTuple):
    """Every atom's environment in a set of structures, as the SOAP terms see it
    (rows in frame, then atom order)."""

    X_hat: dict[str, np.ndarray]  # {SOAP term: unit SOAP (n_atoms, F_term)}
    species: np.ndarray  # (n_atoms,) species index
    owner: np.ndarray  # (n_atoms,) structure index, sorted

    def take(self, rows: np.ndarray) -> Environments:
        """The environments ``rows`` (indices or a mask)."""
        X_hat = {name: X[rows] for name, X in self.X_hat.items()}
        return Environments(X_hat, self.species[rows], self.owner[rows])


def soap_terms(model: Model) -> list[SoapTerm]:
    """The model's SOAP terms, in term order."""
    return [t for t in model.terms if isinstance(t, SoapTerm)]


def covers(spec: SoapSpec, species: np.ndarray) -> np.ndarray:
    """``(n,)`` True for the environments (species index ``species``) that carry a
    local energy of a SOAP term: every one, or its centre species' (gap_fit's
    ``Z``)."""
    centre = spec.centre_index
    return np.ones(len(species), bool) if centre is None else species == centre


def soap_columns(model: Model, name: str = "soap") -> slice:
    """Columns of SOAP term ``name``'s sparse points among all the model's weights."""
    start = 0
    for term in model.terms:
        if term.name == name:
            return slice(start, start + term.n_sparse)
        start += term.n_sparse
    raise ValueError(f"the model has no term {name}")


@jax.jit
def _kernel_rows(kernel, X_hat, s, Z_hat, Z_s) -> jax.Array:
    return kernel_block(kernel, X_hat, s, Z_hat, Z_s)


def energy_prior(
    specs: Mapping[str, tuple[SoapSpec, DotProductKernel]], env: Environments
) -> dict[str, np.ndarray]:
    """``{term: sum_{i,j in S} q(x_i, x_j)^zeta (n,)}`` of each structure S, for the
    SOAP terms ``specs`` (the prior variance of the term's energy over delta^2), over
    the environments each term covers. It depends on neither the data nor delta:
    compute it once (``energy_variance`` scales it by each term's delta^2)."""
    n = int(env.owner[-1]) + 1
    out = {}
    for name, (spec, kernel) in specs.items():
        unit = dataclasses.replace(kernel, delta=1.0)
        keep = covers(spec, env.species)
        X, s, o = env.X_hat[name][keep], env.species[keep], env.owner[keep]
        bounds = np.searchsorted(o, np.arange(n + 1))
        out[name] = np.array(
            [
                float(jnp.sum(kernel_block(unit, *(2 * (X[a:b], s[a:b])))))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )
    return out


def _soap_rows(model: Model, env: Environments):
    """Kernel rows ``k(x_i, z_m)`` ``(n_chunk, M)`` of the environments' SOAP local
    energies, summed over the SOAP terms (each term's own columns, zeros for the
    other terms' sparse points) in chunks: yields ``(start, rows)``; one compilation
    per model size."""
    M = model.posterior.L_mm.shape[0]
    for a in range(0, len(env.species), CHUNK):
        t = env.species[a : a + CHUNK]
        pad = CHUNK - len(t)
        full = jnp.zeros((CHUNK, M))
        for term in soap_terms(model):
            x = env.X_hat[term.name][a : a + CHUNK]
            k = _kernel_rows(
                term.kernel,
                jnp.asarray(np.pad(x, ((0, pad), (0, 0)))),
                jnp.asarray(np.pad(t, (0, pad), constant_values=-1)),
                *term._z,
            )
            full = full.at[:, soap_columns(model, term.name)].set(k)
        yield a, full[: len(t)]


def soap_cholesky(model: Model, name: str = "soap") -> jax.Array:
    """The block of ``L_mm`` of SOAP term ``name``: the Cholesky factor of its
    ``K_mm`` (with jitter), ``L_mm`` being block diagonal over the terms."""
    cols = soap_columns(model, name)
    return model.posterior.L_mm[cols][:, cols]


def energy_variance(
    model: Model, env: Environments, prior: Mapping[str, np.ndarray]
) -> np.ndarray:
    """DTC variance ``(n,)`` eV^2 of the SOAP energy of each structure (see the module
    docstring), from its environments and their ``energy_prior``."""
    n = int(env.owner[-1]) + 1
    k_E = np.zeros((n, model.posterior.L_mm.shape[0]))  # sum_i k(x_i, z_m)
    for a, k in _soap_rows(model, env):
        o = env.owner[a : a + len(k)]
        first = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])  # segment starts
        k_E[o[first]] += np.add.reduceat(np.asarray(k), first, axis=0)
    p = sum(t.kernel.delta**2 * prior[t.name] for t in soap_terms(model))
    return np.asarray(
        dtc_variance([jnp.asarray(p)], [jnp.asarray(k_E)], model.posterior)
    )


def local_energy_variance(model: Model, env: Environments) -> np.ndarray:
    """DTC variance ``(n_atoms,)`` eV^2 of the SOAP local energy of each environment
    (the sum of the SOAP terms' that cover it): prior (their ``delta^2``) less what
    the sparse set and the data explain (the ``energies_std`` of ``Model.predict``
    for a SOAP-only model)."""
    prior = sum(
        t.kernel.delta**2 * covers(t.spec, env.species) for t in soap_terms(model)
    )
    out = np.empty(len(env.species))
    for a, k in _soap_rows(model, env):
        p = jnp.asarray(prior[a : a + len(k)])
        out[a : a + len(k)] = np.asarray(dtc_variance([p], [k], model.posterior))
    return out


def nystrom_residual(
    model: Model, X_hat: np.ndarray, s: np.ndarray, name: str = "soap"
) -> np.ndarray:
    """``K_cc - K_cm K_mm^-1 K_mc`` ``(n, n)`` eV^2 of SOAP term ``name`` for
    candidate environments ``X_hat (n, F)`` (unit rows), species index ``s (n,)``."""
    n = len(X_hat)
    size = bucket(n)  # padded (zero rows, no species): few compilations
    X = np.zeros((size, X_hat.shape[1]))
    X[:n] = X_hat
    t = np.full(size, -1, dtype=np.int64)
    t[:n] = s
    term = model.term(name)
    L = soap_cholesky(model, name)
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
) -> Environments:
    """The ``Environments`` of every atom of ``frames`` under the SOAP terms of
    ``gap``."""
    frames = as_frames(frames, require=(), source="structures")
    named = gap._term_settings("soap")
    out = descriptors(gap, term_specs(named, tuple(species)), frames)
    X_hat = {
        name: np.asarray(normalise(jnp.asarray(X))[0]) if len(X) else X
        for name, (X, _) in out.items()
    }
    s = next(iter(out.values()))[1]
    owner = np.repeat(np.arange(len(frames)), [len(f.numbers) for f in frames])
    return Environments(X_hat, s, owner)


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


def unit_mean_soap(
    specs: Mapping[str, tuple[SoapSpec, object]], env: Environments
) -> np.ndarray:
    """Unit mean SOAP vector ``(n, F)`` of each structure: the sums of its
    environments' unit SOAP rows under each SOAP term (those the term covers),
    joined and normalised (one term: the unit mean)."""
    n = int(env.owner[-1]) + 1
    parts = []
    for name, (spec, _) in specs.items():
        X = env.X_hat[name] * covers(spec, env.species)[:, None]
        total = np.zeros((n, X.shape[1]))
        np.add.at(total, env.owner, X)
        parts.append(total)
    return np.asarray(normalise(jnp.asarray(np.concatenate(parts, axis=1)))[0])


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
