"""Sparse GP solve by a streamed QR, and the DTC predictive variance.

Observations ``y = A eps + noise`` (totals, force and virial components; ``Lambda`` the
diagonal noise variance) of local energies ``eps`` with a GP prior, ``M`` sparse points
``z``. The DTC/SoR mean (Quiñonero-Candela & Rasmussen, JMLR 6, 1939 (2005);
gap_fit: Bartók et al. 2015) has weights::

    w     = (K_mm + K_mn Lambda^-1 K_nm)^-1 K_mn Lambda^-1 y
          = R^-1 Q^T b,  QR = [Lambda^-1/2 K_nm ; L_mm^T],  b = [Lambda^-1/2 y ; 0]

with ``K_mm + jitter I = L_mm L_mm^T``: never the normal equations. The QR is folded one
chunk of rows at a time: the upper-triangular ``R_aug`` of ``[A | b]`` absorbs each new
block, so memory is O(M^2 + chunk). The posterior over weights is ``Sigma = R^-1 R^-T``.

Predictive variance of a target ``f* = k*^T``-row (DTC, Quiñonero-Candela & Rasmussen
eq. 20b): ``var = k** - |L_mm^-1 k*|^2 + |R^-T k*|^2``: the prior variance not captured
by the sparse set (the Nyström residual) plus the posterior uncertainty of the weights.
DTC is chosen over SoR because SoR's variance collapses to 0 far from the sparse points
(overconfident exactly where a user needs a warning), and over FITC because FITC's
training-point heteroscedastic correction does not extend to derivative observations.
With every training environment a sparse point DTC equals the exact GP (tested).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from gapfit.errors import GapfitError


class Posterior(NamedTuple):
    """Weights and factors of a fitted sparse GP (all (M,) or (M, M))."""

    weights: jax.Array  # (M,) so that eps(p) = sum_m w_m k(p, z_m)
    L_mm: jax.Array  # (M, M) lower Cholesky factor of K_mm + jitter I
    R: jax.Array  # (M, M) upper factor: Sigma = (R^T R)^-1


def start(K_mm: jax.Array, jitter: float) -> jax.Array:
    """``R_aug (M+1, M+1)`` holding the prior rows ``[L_mm^T | 0]``."""
    M = K_mm.shape[0]
    L = jnp.linalg.cholesky(K_mm + jitter * jnp.eye(M))
    if not bool(jnp.all(jnp.isfinite(L))):
        raise GapfitError(
            "the sparse covariance K_mm is not positive definite (duplicate or nearly "
            "identical sparse points); raise --sparse-jitter (e.g. 1e-6) or lower "
            "n_sparse."
        )
    return jnp.zeros((M + 1, M + 1)).at[:M, :M].set(L.T)


@jax.jit
def fold(R_aug: jax.Array, A: jax.Array, b: jax.Array) -> jax.Array:
    """Absorb scaled rows ``A (r, M)``, ``b (r,)``: R of ``[[R_aug], [A | b]]``."""
    stacked = jnp.concatenate([R_aug, jnp.concatenate([A, b[:, None]], axis=1)], axis=0)
    return jnp.linalg.qr(stacked, mode="r")[: R_aug.shape[0]]


def finish(R_aug: jax.Array, K_mm: jax.Array, jitter: float) -> Posterior:
    """Weights ``w = R^-1 Q^T b`` from the accumulated factor."""
    M = K_mm.shape[0]
    R, Qtb = R_aug[:M, :M], R_aug[:M, M]
    if bool(jnp.any(jnp.abs(jnp.diag(R)) < 1e-300)):
        raise GapfitError(
            "the least-squares system is singular; raise --sparse-jitter."
        )
    w = jsl.solve_triangular(R, Qtb, lower=False)
    L = jnp.linalg.cholesky(K_mm + jitter * jnp.eye(M))
    return Posterior(w, L, R)


class VarianceFactors(NamedTuple):
    """``L_mm^-1`` and ``R^-T`` (both (M, M)) for fast predictive variances."""

    L_inv: jax.Array
    R_inv_T: jax.Array


def variance_factors(post: Posterior) -> VarianceFactors:
    M = post.R.shape[0]
    eye = jnp.eye(M)
    return VarianceFactors(
        jsl.solve_triangular(post.L_mm, eye, lower=True),
        jsl.solve_triangular(post.R, eye, lower=False, trans="T"),
    )


def dtc_variance(prior: jax.Array, k: jax.Array, f: VarianceFactors) -> jax.Array:
    """DTC variance of targets with prior variance ``prior (...)`` and kernel rows
    ``k (..., M)``: ``max(prior - |L^-1 k|^2, 0) + |R^-T k|^2`` (units of prior)."""
    nystrom = jnp.sum((k @ f.L_inv.T) ** 2, axis=-1)
    posterior = jnp.sum((k @ f.R_inv_T.T) ** 2, axis=-1)
    return jnp.maximum(prior - nystrom, 0.0) + posterior
