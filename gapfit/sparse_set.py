"""The growing SOAP sparse set of active learning, held at a fixed capacity.

A sparse point with the zero vector and species index ``PAD`` (-1) has zero
covariance with every environment and every other sparse point, so ``K_mm`` gains a
decoupled ``jitter I`` block, its weights are 0 and every prediction and variance is
unchanged (the QR factor is block diagonal in it, exactly: the padding columns share no
non-zero row with the others). Active learning keeps each SOAP term at its
``capacity`` of points this way and fills padding slots as environments are added,
so the jitted kernels compile once for the whole run instead of once per sparse-set
size. Models are saved without padding (``compact``) and padded again on loading
(``padded``); both are exact array operations on the posterior, no refit.

New sparse points are the candidate environments of largest Nyström residual
``K_cc - K_cm K_mm^-1 K_mc``, picked by greedy maximum determinant
(``selection.greedy_max_det``): the environments the current sparse set represents
worst, never two near-duplicates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import ase
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from gapfit.angle_3b import SAME
from gapfit.assembly import model_batches
from gapfit.baseline import Baseline
from gapfit.blocks import batch_arrays
from gapfit.data import Frame, as_frames
from gapfit.distance_2b import PairSummary, pair_ranges
from gapfit.fit import GAP, pair_term, term_specs, triplet_term
from gapfit.kernels import kernel_block
from gapfit.model import Model
from gapfit.neighbours import bucket, pair_tables
from gapfit.selection import (
    covers,
    descriptors,
    greedy_max_det,
    nystrom_residual,
    soap_cholesky,
    soap_terms,
)
from gapfit.sparse_gp import Posterior
from gapfit.terms import PairTerm, SoapTerm, term_pairs
from gapfit.update import LABELS, refit

PAD = -1  # species index of padding sparse points


def _is_pad(model: Model) -> np.ndarray:
    """``(M,)`` True for the padding columns among all terms' sparse points."""
    return np.concatenate(
        [
            (t.sparse_species == PAD)
            if isinstance(t, SoapTerm)
            else np.zeros(t.n_sparse, bool)
            for t in model.terms
        ]
    )


def compact(model: Model) -> Model:
    """The model without padding sparse points (for saving)."""
    keep = np.flatnonzero(~_is_pad(model))
    terms = tuple(
        dataclasses.replace(
            t,
            sparse_X=t.sparse_X[t.sparse_species != PAD],
            sparse_species=t.sparse_species[t.sparse_species != PAD],
        )
        if isinstance(t, SoapTerm)
        else t
        for t in model.terms
    )
    w, L, R = (np.asarray(x) for x in model.posterior)  # numpy: no compilations
    post = Posterior(
        jnp.asarray(w[keep]),
        jnp.asarray(L[np.ix_(keep, keep)]),
        jnp.asarray(R[np.ix_(keep, keep)]),
    )
    info = {**model.info, "n_sparse": {t.name: t.sparse_counts() for t in terms}}
    return dataclasses.replace(model, terms=terms, posterior=post, info=info)


def capacities(gap: GAP, species: Sequence[int]) -> dict[str, int]:
    """``{SOAP term: sparse points it holds}``: its ``n_sparse`` per species it
    covers (every one, or its ``Z``)."""
    named = gap._term_settings("soap")
    specs = term_specs(named, tuple(sorted(int(z) for z in species)))
    return {
        name: int(named[name][1]["n_sparse"])
        * (len(species) if spec.centre_index is None else 1)
        for name, (spec, _) in specs.items()
    }


def padded(model: Model, capacity: Mapping[str, int]) -> Model:
    """The model with each SOAP term padded to ``capacity[name]`` sparse points (see
    the module docstring); a term's padding columns go after its real points."""
    terms, old = [], []  # new terms; the new column of each old one
    M = 0
    for t in model.terms:
        old.append(M + np.arange(t.n_sparse))
        n_pad = capacity[t.name] - t.n_sparse if isinstance(t, SoapTerm) else 0
        if n_pad < 0:
            raise ValueError(
                f"{t.n_sparse} sparse points of {t.name} exceed {capacity[t.name]}"
            )
        if n_pad:
            F = t.sparse_X.shape[1]
            t = dataclasses.replace(
                t,
                sparse_X=np.concatenate([t.sparse_X, np.zeros((n_pad, F))]),
                sparse_species=np.concatenate(
                    [t.sparse_species, np.full(n_pad, PAD)]
                ).astype(np.int64),
            )
        terms.append(t)
        M += t.n_sparse
    keep = np.concatenate(old)
    w, L, R = np.zeros(M), np.sqrt(_jitter(model)) * np.eye(M), np.eye(M)
    w[keep] = model.posterior.weights  # padding: w = 0, jitter block in L_mm, I in R
    L[np.ix_(keep, keep)] = model.posterior.L_mm
    R[np.ix_(keep, keep)] = model.posterior.R
    post = Posterior(jnp.asarray(w), jnp.asarray(L), jnp.asarray(R))
    return dataclasses.replace(model, terms=tuple(terms), posterior=post)


def _jitter(model: Model) -> float:
    """The model's ``sparse_jitter`` (eV^2), on the diagonal of ``K_mm``."""
    return float(model.info["settings"]["sparse_jitter"])


def free_slots(model: Model, name: str | None = None) -> np.ndarray:
    """Padding slots left per species ``(n_species,)`` in SOAP term ``name`` (None:
    summed over the SOAP terms), each term's capacity shared evenly among the
    species it covers."""
    out = np.zeros(len(model.species), np.int64)
    for term in soap_terms(model):
        if name is not None and term.name != name:
            continue
        own = covers(term.spec, np.arange(len(model.species)))
        real = term.sparse_species[term.sparse_species != PAD]
        used = np.bincount(real, minlength=len(model.species))
        out += np.where(own, term.n_sparse // own.sum() - used, 0)
    return out


def choose_sparse(
    model: Model,
    X_hat: np.ndarray,
    s: np.ndarray,
    n_max: int,
    tol: float,
    name: str = "soap",
) -> np.ndarray:
    """Indices of candidate environments (unit SOAP ``X_hat (n, F)`` of SOAP term
    ``name``, species index ``s (n,)``) to add as its sparse points: greedy
    max-determinant of their Nyström residual, at most ``n_max``, within each
    species' free slots, each with a residual variance above ``tol delta^2``."""
    if len(X_hat) == 0 or n_max <= 0:
        return np.zeros(0, np.int64)
    K = nystrom_residual(model, X_hat, s, name)
    delta2 = model.term(name).kernel.delta ** 2
    free = np.maximum(free_slots(model, name), 0)
    return greedy_max_det(K, n_max, tol * delta2, s, free)


def force_residuals(
    model: Model,
    frames: Sequence[Frame],
    X_hat: np.ndarray,
    s: np.ndarray,
    shape: list[int] | None = None,
    name: str = "soap",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nyström residuals of SOAP term ``name`` for the force components of ``frames``
    and the local energies of candidate environments (unit SOAP ``X_hat (n, F)``,
    species index ``s (n,)``): ``r_F (n_F,)`` eV^2/Å^2, the residual variance of each
    force component (real atoms, atom-major); ``R_Fc (n_F, n)`` eV^2/Å, their residual
    covariances with the candidates' local energies; ``R_cc (n, n)`` eV^2, plus the
    sparse jitter on its diagonal (a candidate's as a sparse point). Residual means
    ``k_xy - k_xm K_mm^-1 k_my`` (what the sparse set leaves unexplained); a sparse
    point at candidate j lowers ``r_F`` by ``R_Fc[:, j]^2 / R_cc[j, j]``. ``shape``:
    floor of the padded batch shape (raised in place, as in ``update``)."""
    term = model.term(name)
    size = bucket(len(X_hat))  # padded candidates (PAD: no covariance): few shapes
    X = np.zeros((size, X_hat.shape[1]))
    X[: len(X_hat)] = X_hat
    t = np.full(size, PAD, dtype=np.int64)
    t[: len(s)] = s
    both = dataclasses.replace(
        term,
        sparse_X=np.concatenate([term.sparse_X, X]),
        sparse_species=np.concatenate([term.sparse_species, t]),
    )
    L = soap_cholesky(model, name)
    k_c = kernel_block(term.kernel, jnp.asarray(X), jnp.asarray(t), *term._z)
    V_c = jsl.solve_triangular(L, k_c.T, lower=True).T  # (L^-1 k_c)^T
    r_F, R_Fc = [], []
    chunks = [[k] for k in range(len(frames))]
    for batch in model_batches(model, frames, chunks, shape):
        tables = jax.device_put(pair_tables(batch, keep=term_pairs(term.spec, batch)))
        rows, priors = both.rows_and_priors(batch_arrays(batch), tables)
        r, R = _force_residuals(rows.forces, priors.forces, L, V_c)  # padded atoms
        real = np.flatnonzero(batch.atom_mask)
        comps = (3 * real[:, None] + np.arange(3)).ravel()  # their force components
        r_F.append(np.asarray(r)[comps])
        R_Fc.append(np.asarray(R)[comps, : len(X_hat)])
    # with K_mm's jitter: the candidate's variance as a sparse point
    R_cc = nystrom_residual(model, X_hat, s, name) + _jitter(model) * np.eye(len(X_hat))
    return np.concatenate(r_F), np.concatenate(R_Fc), R_cc


@jax.jit
def _force_residuals(
    rows: jax.Array, priors: jax.Array, L: jax.Array, V_c: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``force_residuals``' ``r_F`` and ``R_Fc`` of a batch's force components
    (atom-major) from their kernel rows ``(A, 3, M + size)`` over the sparse points
    then the candidates, their prior variances ``(A, 3)``, ``L`` and ``V_c``."""
    M = L.shape[0]
    k_F = rows.reshape(-1, rows.shape[-1])
    V_F = jsl.solve_triangular(L, k_F[:, :M].T, lower=True).T
    return jnp.ravel(priors) - jnp.sum(V_F**2, axis=1), k_F[:, M:] - V_F @ V_c.T


def force_sparse(
    model: Model,
    frames: Sequence[Frame],
    X_hat: np.ndarray,
    s: np.ndarray,
    n_max: int,
    target: float,
    shape: list[int] | None = None,
    name: str = "soap",
) -> np.ndarray:
    """Indices of candidate environments (unit SOAP ``X_hat (n, F)`` of SOAP term
    ``name``, species index ``s (n,)``; on the fly: those of the labelled ``frames``) to
    add as its sparse points for the frames' forces: greedily, each the candidate whose
    sparse point most lowers the summed Nyström residual variance of the force
    components (``force_residuals``, conditioned on the points picked before), at most
    ``n_max`` within each species' free slots, until no component's residual variance is
    above ``target`` (eV^2/Å^2). The forces' DTC variance is this residual plus a
    posterior part that labels shrink; the residual only falls with sparse points, and
    the local-energy residual of ``choose_sparse`` can be tiny where the force residual
    is not (environments close to sparse points, displaced along new directions)."""
    if len(X_hat) == 0 or n_max <= 0:
        return np.zeros(0, np.int64)
    r_F, R, K = force_residuals(model, frames, X_hat, s, shape, name)
    floor = _jitter(model) + 1e-10 * model.term(name).kernel.delta ** 2  # not 0
    left = np.maximum(free_slots(model, name), 0)
    picks: list[int] = []
    while len(picks) < n_max and r_F.max(initial=0.0) > target:
        d = np.diag(K).copy()
        ok = (d > floor) & (left[s] > 0)
        ok[picks] = False
        if not ok.any():
            break
        gain = np.where(ok, np.sum(R**2, axis=0) / np.where(ok, d, 1.0), -np.inf)
        j = int(np.argmax(gain))
        g, k = R[:, j] / np.sqrt(d[j]), K[:, j] / np.sqrt(d[j])
        R, K, r_F = R - np.outer(g, k), K - np.outer(k, k), r_F - g**2
        picks.append(j)
        left[s[j]] -= 1
    return np.array(sorted(picks), dtype=np.int64)


def widened_pairs(
    model: Model, gap: GAP, new: Sequence[Frame], frames: Sequence[Frame]
) -> Model | None:
    """The model with each 2-body term's sparse points (and ``theta_fac`` lengths)
    chosen again (as ``GAP.fit`` does, delta kept) among the distances of all
    ``frames`` when a distance of the ``new`` frames within its cutoff lies outside
    its points' range of that pair type (of its own pair, for a term of one); None
    when no term widens (or without a 2-body term). Its posterior is then stale:
    ``update.refit`` it. Chosen from the first frames only, the points would leave
    the distances that the sampler reaches later (shorter bonds in hot MD) with a
    2-body std that no label lowers."""
    pairs = {t.name: (t.spec, t.kernel) for t in model.terms if isinstance(t, PairTerm)}
    if not pairs or not new:
        return None
    got = descriptors(gap, pairs, new)  # one neighbour pass for every 2-body term
    wide = []
    for name, (spec, _) in pairs.items():
        term = model.term(name)
        have = pair_ranges(spec, term.sparse_r, term.sparse_type)
        lo_hi = pair_ranges(spec, *got[name])
        if not np.all((lo_hi[:, 0] >= have[:, 0]) & (lo_hi[:, 1] <= have[:, 1])):
            wide.append(name)
    if not wide:
        return None
    every = descriptors(gap, {n: pairs[n] for n in wide}, frames)
    settings = gap._term_settings()
    chosen = {}
    for name in wide:
        (spec, kernel), pair = pairs[name], settings[name][1]
        summary = PairSummary.of(spec, *every[name], pair["sparse_method"])
        chosen[name] = pair_term(spec, kernel, pair, summary, gap.rnd_seed, name)
    terms = tuple(chosen.get(t.name, t) for t in model.terms)
    return dataclasses.replace(model, terms=terms)


def with_sparse(
    model: Model, X_hat: np.ndarray, s: np.ndarray, name: str = "soap"
) -> Model:
    """The model with environments ``X_hat (k, F)`` (unit rows), species ``s (k,)``
    in the first padding slots of SOAP term ``name``. Its posterior is then stale:
    ``update.refit`` it."""
    term = model.term(name)
    slots = np.flatnonzero(term.sparse_species == PAD)[: len(s)]
    if len(slots) < len(s):
        raise ValueError(f"{len(s)} new sparse points but {len(slots)} free slots")
    X = term.sparse_X.copy()
    species = term.sparse_species.copy()
    X[slots], species[slots] = X_hat, s
    new = dataclasses.replace(term, sparse_X=X, sparse_species=species)
    return dataclasses.replace(
        model, terms=tuple(new if t is term else t for t in model.terms)
    )


def widened_triplets(
    model: Model, gap: GAP, new: Sequence[Frame], frames: Sequence[Frame]
) -> Model | None:
    """The model with its 3-body sparse points chosen again (as ``GAP.fit`` does,
    delta kept) among the triplets of all ``frames`` when a triplet of the ``new``
    frames lies outside their range (a type without points, or a component beyond
    the points' smallest or largest value of its type); None otherwise (or without a
    3-body term). Its posterior is then stale: ``update.refit`` it. As for
    ``widened_pairs``: points chosen from the first frames would leave what the
    sampler reaches later with a std that no label lowers."""
    term = model.term("angle_3b")
    if term is None or not new:
        return None
    only = {"angle_3b": (term.spec, term.kernel)}
    d, t = descriptors(gap, only, new)["angle_3b"]
    for ty in np.unique(t):
        have = term.sparse_d[term.sparse_type == ty]
        if (
            not len(have)
            or (d[t == ty].min(axis=0) < have.min(axis=0) - SAME).any()
            or (d[t == ty].max(axis=0) > have.max(axis=0) + SAME).any()
        ):
            break
    else:
        return None
    d, t = descriptors(gap, only, frames)["angle_3b"]
    settings = gap._triplet_settings()
    wide = triplet_term(term.spec, term.kernel, settings, d, t, gap.rnd_seed)
    return dataclasses.replace(
        model, terms=tuple(wide if x is term else x for x in model.terms)
    )


def prior_model(
    gap: GAP,
    species: Sequence[int],
    frames: Sequence[Frame | ase.Atoms],
    capacity: Mapping[str, int],
) -> Model:
    """A model with the settings of ``gap`` and no data (``w = 0``, ``R = I``):
    e0 and the 2-body and 3-body sparse points (as in ``GAP.fit``) from ``frames``,
    and each SOAP term with ``capacity[name]`` padding points, to be filled by
    ``with_sparse``."""
    frames = as_frames(frames, require=LABELS)
    named = gap._term_settings()
    species = tuple(sorted(int(z) for z in species))
    specs = term_specs(named, species)
    baseline = Baseline.of(gap.baseline, gap.baseline_kwargs)
    e0 = gap._e0(frames, species, baseline)
    terms: list = []
    for name, (kind, settings) in named.items():
        spec, kernel = specs[name]
        if kind == "distance_2b":
            r, t = descriptors(gap, {name: specs[name]}, frames)[name]
            summary = PairSummary.of(spec, r, t, settings["sparse_method"])
            terms.append(pair_term(spec, kernel, settings, summary, gap.rnd_seed, name))
        elif kind == "angle_3b":
            d, t = descriptors(gap, {name: specs[name]}, frames)[name]
            terms.append(triplet_term(spec, kernel, settings, d, t, gap.rnd_seed))
        else:
            X = np.zeros((capacity[name], spec.n_features))
            pad = np.full(capacity[name], PAD, dtype=np.int64)
            terms.append(SoapTerm(spec, kernel, X, pad, name))
    model = Model(tuple(terms), species, None, e0, gap._info(named), baseline)
    return refit(model, [])
