"""Sparse GP solve by a streamed QR, and the DTC predictive variance.

Observations ``y = A eps + noise`` (totals, force and virial components; ``Lambda`` the
diagonal noise variance) of local energies ``eps`` with a GP prior, ``M`` sparse points
``z``. The DTC/SoR mean (Quiñonero-Candela & Rasmussen, JMLR 6, 1939 (2005);
gap_fit: Bartók et al. 2015) has weights::

    w = (K_mm + K_mn Lambda^-1 K_nm)^-1 K_mn Lambda^-1 y

solved in whitened coordinates ``v = L_mm^T w`` (``K_mm + jitter I = L_mm L_mm^T``), in
which the prior is ``N(0, I)``: with ``B = Lambda^-1/2 K_nm L_mm^-T``::

    v = R^-1 Q^T c,   QR = [B ; I],   c = [Lambda^-1/2 y ; 0],   w = L_mm^-T v

never the normal equations. Each chunk of data rows is whitened and folded into the
upper-triangular ``R_data (M+1, M+1)`` of ``[B | c]`` (``fold_whitened``; memory
O(M^2 + chunk)); the prior rows ``[I | 0]`` join at the end (``finish``). Why whiten:
with a large ``delta`` (e.g. a 2-body term carrying the cohesive energy) ``K_mm`` has
condition numbers of 10^7 and more, and a factor of the unwhitened system
``[L_mm^T ; Lambda^-1/2 K_nm]`` holds the prior rows only to rounding relative to the
data rows: its posterior covariance ``(R^T R)^-1`` is then wrong by orders of magnitude
in the prior-dominated directions (posterior stds of training forces 100x their
noise). ``[B ; I]`` has singular values >= 1, so its factor is well conditioned. The
rows are whitened before the QR, not the data factor after it: the QR's rounding,
relative to the rows it sees, is then not amplified by ``L_mm^-1`` (a small SOAP model
with ``cond(L_mm)`` 5e4: weights within 2e-14 of a dense least-squares solve this way,
1e-7 the other way). The posterior over whitened weights is ``(R^T R)^-1``; the model
stores ``R`` and ``L_mm``.

Predictive variance of a target ``f* = k*^T``-row (DTC, Quiñonero-Candela & Rasmussen
eq. 20b): ``var = k** - |L_mm^-1 k*|^2 + |R^-T L_mm^-1 k*|^2``: the prior variance not
captured by the sparse set (the Nyström residual) plus the posterior uncertainty of the
weights. DTC is chosen over SoR because SoR's variance collapses to 0 far from the
sparse points (overconfident exactly where a user needs a warning), and over FITC
because FITC's training-point heteroscedastic correction does not extend to derivative
observations. With every training environment a sparse point DTC equals the exact GP
(tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from gapfit.errors import GapfitError

# Factors start at FOLD_START * I, not 0: JAX's CPU QR of a zero block stacked on a few
# rows (rank-deficient, columns of rounding noise) returned NaN for si_zuo2020's
# energies; 1e-100 keeps it finite and adds 1e-200 to the Gram matrix.
FOLD_START = 1e-100
SOLVE_BLOCK = 128  # rows per diagonal block of ``lower_solve``


class Posterior(NamedTuple):
    """Weights and factors of a fitted sparse GP (all (M,) or (M, M))."""

    weights: jax.Array  # (M,) so that eps(p) = sum_m w_m k(p, z_m)
    L_mm: jax.Array  # (M, M) lower Cholesky factor of K_mm + jitter I
    R: jax.Array  # (M, M) upper factor of [B ; I]: Cov(L_mm^T w) = (R^T R)^-1


def prior_factor(K_mm: jax.Array, jitter: float) -> jax.Array:
    """``L_mm``, lower Cholesky factor of ``K_mm + jitter I``; GapfitError when it is
    not positive definite."""
    L = _jittered_cholesky(K_mm, jitter)
    if not np.isfinite(np.asarray(L)).all():
        raise GapfitError(
            "the sparse covariance K_mm is not positive definite (duplicate or nearly "
            "identical sparse points); raise --sparse-jitter (e.g. 1e-6) or lower "
            "n_sparse."
        )
    return L


@jax.jit
def _jittered_cholesky(K_mm: jax.Array, jitter: float) -> jax.Array:
    return jnp.linalg.cholesky(K_mm + jitter * jnp.eye(K_mm.shape[0]))


def empty_factor(M: int) -> jax.Array:
    """Factor ``(M+1, M+1)`` of no rows, to fold rows into: ``FOLD_START I``."""
    return jnp.asarray(FOLD_START * np.eye(M + 1))


@jax.jit
def fold(R_aug: jax.Array, A: jax.Array, b: jax.Array) -> jax.Array:
    """Absorb scaled rows ``A (r, M)``, ``b (r,)``: R of ``[[R_aug], [A | b]]``."""
    stacked = jnp.concatenate([R_aug, jnp.concatenate([A, b[:, None]], axis=1)], axis=0)
    return jnp.linalg.qr(stacked, mode="r")[: R_aug.shape[0]]


@jax.jit
def whiten_rows(A: jax.Array, L: jax.Array) -> jax.Array:
    """``A L^-T`` for rows ``A (r, M)`` and the lower factor ``L (M, M)``."""
    return jsl.solve_triangular(L, A.T, lower=True).T


@jax.jit
def fold_whitened(
    R_aug: jax.Array, A: jax.Array, b: jax.Array, L: jax.Array
) -> jax.Array:
    """``fold`` of the whitened rows ``[A L^-T | b]``: the fit's streamed step."""
    return fold(R_aug, whiten_rows(A, L), b)


@jax.jit
def with_prior(R_data: jax.Array) -> jax.Array:
    """Upper factor ``(M+1, M+1)`` of ``[[I, 0], [R_data]]``: the whitened prior
    rows added to a factor of whitened data rows."""
    M = R_data.shape[0] - 1
    return jnp.linalg.qr(jnp.concatenate([jnp.eye(M, M + 1), R_data]), mode="r")


@jax.jit
def whitened(R_raw: jax.Array, L: jax.Array) -> jax.Array:
    """``with_prior`` of a factor ``R_raw`` of unwhitened rows ``[K | y]`` (the
    evidence's statistics), whitened as a whole: less accurate than whitening each
    chunk (module doc), used where the prior changes after the pass."""
    M = L.shape[0]
    return with_prior(jnp.concatenate([whiten_rows(R_raw[:, :M], L), R_raw[:, M:]], 1))


def solve(R_aug: jax.Array, L: jax.Array) -> Posterior:
    """Posterior from the whitened augmented factor ``R_aug (M+1, M+1)`` (prior rows
    included): ``v = R^-1 Q^T c``, ``w = L^-T v``."""
    w, R, smallest = _weights(R_aug, L)
    if float(smallest) < 1e-300:
        raise GapfitError(
            "the least-squares system is singular; raise --sparse-jitter."
        )
    return Posterior(w, L, R)


@jax.jit
def _weights(R_aug: jax.Array, L: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``solve``'s weights, ``R`` and the smallest ``|R_ii|`` in one program."""
    M = L.shape[0]
    R, Qtc = R_aug[:M, :M], R_aug[:M, M]
    v = jsl.solve_triangular(R, Qtc, lower=False)
    w = jsl.solve_triangular(L, v, lower=True, trans="T")
    return w, R, jnp.min(jnp.abs(jnp.diag(R)))


def finish(R_data: jax.Array, L: jax.Array) -> Posterior:
    """Weights and factors from the factor ``R_data (M+1, M+1)`` of the whitened data
    rows (``fold_whitened``) and ``L = L_mm``."""
    return solve(with_prior(R_data), L)


def lower_solve(T: jax.Array, B: jax.Array, transposed: bool = False) -> jax.Array:
    """``X = op(T)^-1 B`` for ``B (M, n)`` and a lower-triangular ``op(T)``: ``T``
    itself, or with ``transposed`` the transpose of an upper-triangular ``T``.

    Blocked forward substitution, as LAPACK's own blocked trsm: each diagonal block of
    ``SOLVE_BLOCK`` rows by a triangular solve, what the solved rows contribute to the
    next block by one matrix product, which XLA runs on every core (a LAPACK trsm runs
    on one BLAS thread in the std programs, ``model._blas``: M = 1020 with 109
    right-hand sides, the two solves of the energy stds took 6.7 ms that way and 3.4 ms
    blocked, on 2 cores; results equal to 1e-15 relative).
    """
    M = T.shape[0]
    done: list[jax.Array] = []  # solved row blocks, in order
    for s in range(0, M, SOLVE_BLOCK):
        e = min(s + SOLVE_BLOCK, M)
        rhs = B[s:e]
        if done:
            left = T[:s, s:e].T if transposed else T[s:e, :s]
            rhs = rhs - left @ jnp.concatenate(done)
        diag = T[s:e, s:e]
        done.append(
            jsl.solve_triangular(diag, rhs, lower=not transposed, trans=int(transposed))
        )
    return jnp.concatenate(done)


def dtc_variance(
    priors: Sequence[jax.Array], rows: Sequence[jax.Array], post: Posterior
) -> jax.Array:
    """DTC variance (the priors' units) of targets of a sum of independent terms,
    term t with prior variances ``priors[t] (n,)`` and kernel rows ``rows[t]
    (n, M_t)`` (consecutive sparse points, in weight order)::

        sum_t max(prior_t - |L_t^-1 k_t|^2, 0) + |R^-T L_mm^-1 k|^2

    by triangular solves with ``L_mm`` and ``R`` (``lower_solve``): products with their
    explicit inverses lose what cancels. On the shipped cu_emt model (2-body delta 100
    eV, ``cond L_mm`` 3e6) a 32-atom cell's energy posterior part came out 0.0096 eV^2
    that way against a true 4.5e-8 eV^2 (80-bit reference; the solves: 1.5e-11 off), and
    its 2-body energy residual 0 against 2.4e-4 eV^2 (solves: 1.8e-7 off).
    ``L_mm`` is block diagonal over the terms, so each term's Nyström residual is
    formed and clipped apart: summed first, a term with a large prior would carry its
    rounding into the others' residuals.
    """
    k = jnp.concatenate(rows, axis=1)
    y = lower_solve(post.L_mm, k.T)  # L_mm^-1 k: (M, n)
    z = lower_solve(post.R, y, transposed=True)  # R^-T L_mm^-1 k
    var = jnp.sum(z**2, axis=0)
    start = 0
    for prior, r in zip(priors, rows, strict=True):
        end = start + r.shape[-1]
        residual = prior - jnp.sum(y[start:end] ** 2, axis=0)
        var += jnp.maximum(residual, 0.0)
        start = end
    return var
