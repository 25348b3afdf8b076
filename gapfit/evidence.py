"""The evidence of a sparse GAP as a function of its hyperparameters.

Observations ``y (n,)`` (energies without e0, force and virial components), sparse
points ``z (M,)`` of all terms, kernel rows ``K_nm`` and ``K_mm`` as in
``sparse_gp.py``. The evidence is the deterministic-training-conditional (DTC)
log marginal likelihood (Seeger, Williams & Lawrence, AISTATS 2003;
Quiñonero-Candela & Rasmussen, JMLR 6, 1939 (2005), sec. 5)::

    log p(y) = log N(y | 0, Q + Lambda),     Q = K_nm K_mm^-1 K_mn

Hyperparameters: ``delta_t`` of each term (its kernel is ``delta_t^2 k``) and a noise
factor ``s_g`` per group of observations (``Lambda_ii = s_g^2 sigma_i^2``, sigma_i the
configured sigmas). Relative to the values ``delta0``, ``sigma_i`` the rows were built
with, ``a = delta / delta0`` per sparse column::

    K_nm = K0_nm diag(a^2),   K_mm = diag(a) K0_mm diag(a) + jitter I

In the whitened coordinates of ``sparse_gp.py`` (``B = Lambda^-1/2 K_nm L_mm^-T``, the
matrix determinant lemma and Woodbury)::

    log|Q + Lambda|        = log|Lambda| + log|I + B^T B|
    y^T (Q + Lambda)^-1 y  = |c|^2 - |Q^T c|^2 = rho^2,   c = Lambda^-1/2 y

Both come from the upper factor ``R`` of the fit's whitened augmented system
``[[I, 0], [B, c]]`` (``sparse_gp.whitened``): ``I + B^T B = R[:M, :M]^T R[:M, :M]``
and ``rho = R[M, M]``, the residual of the regularised least squares. The sufficient
statistic of group g is the triangular ``R_g (M+1, M+1)`` of its own scaled rows
``[Lambda0_g^-1/2 K0_g | Lambda0_g^-1/2 y_g]``, folded chunk by chunk in one streamed
pass (``sparse_gp.fold``); at new hyperparameters group g's rows equal
``Q_g R_g diag(a^2, 1) / s_g`` with ``Q_g`` orthonormal, so the data factor of all
groups is the QR of::

    [[R_1 diag(a^2, 1) / s_1], ..., [R_G diag(a^2, 1) / s_G]]

``(G(M+1), M+1)``, whitened with the ``L_mm`` of the new ``K_mm``: O(G M^3) per
evaluation whatever n is, differentiated by JAX through the QRs, the triangular solve
and the Cholesky of ``K_mm``. The same data factor gives the weights at the chosen
hyperparameters (``sparse_gp.whitened``), so no second pass over the data is needed.
The factors ``R_g`` are kept rather than ``G_g = K_g^T W_g K_g``, ``b_g``, ``c_g``
(their products): forming ``K_mm + sum_g G_g / s_g^2`` squares the condition number
(for examples/cu_emt_small.xyz with a small 2-body + SOAP model, M = 70, default_sigma
0.001 0.05 0.05 and sparse_jitter 1e-8 the formed matrix is numerically indefinite and
its Cholesky fails), and ``rho^2`` would be a difference of two nearly equal numbers.

Why DTC and not Titsias' bound (AISTATS 2009): the bound subtracts
``sum_i (K_ii - Q_ii) / (2 Lambda_ii)``, which needs the exact prior variance of every
training force and virial component (second derivatives of the kernel through the
descriptor, per atom: another pass costlier than the kernel rows). DTC is also the
model behind gapfit's predictive variance (``sparse_gp.dtc_variance``), so the chosen
hyperparameters and the reported standard deviations describe one GP.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gapfit.sparse_gp import whitened


class Statistics(NamedTuple):
    """Streamed sufficient statistics of the evidence (see module doc)."""

    R: jax.Array  # (G, M+1, M+1) factor of group g's [Lambda0^-1/2 K0 | ... y]
    K_mm: jax.Array  # (M, M) eV^2, at delta0, without jitter
    term: jax.Array  # (M,) int, term index of each sparse column
    n: jax.Array  # (G,) observations per group
    log_var: jax.Array  # () sum over observations of log sigma_i^2 (configured)


def _factors(
    log_a: jax.Array, log_s: jax.Array, stats: Statistics, jitter: float
) -> tuple[jax.Array, jax.Array]:
    """Lower ``L (M, M)`` of ``K_mm`` and the data factor ``R (M+1, M+1)`` of all
    groups at the given hyperparameters."""
    M = stats.K_mm.shape[0]
    a = jnp.exp(log_a)[stats.term]  # (M,) delta / delta0 per sparse column
    K_mm = a[:, None] * stats.K_mm * a[None, :] + jitter * jnp.eye(M)
    L = jnp.linalg.cholesky(K_mm)  # K_mm = L L^T
    col = jnp.concatenate([a**2, jnp.ones(1)])  # (M+1,) column scale diag(a^2, 1)
    blocks = stats.R * col[None, None, :] * jnp.exp(-log_s)[:, None, None]
    return L, jnp.linalg.qr(blocks.reshape(-1, M + 1), mode="r")


@jax.jit
def data_factor(
    log_a: jax.Array, log_s: jax.Array, stats: Statistics, jitter: float
) -> jax.Array:
    """Unwhitened data factor ``R (M+1, M+1)`` (``sparse_gp.whitened`` takes it) at
    ``delta = delta0 e^log_a`` (``log_a (T,)``, one per term) and noise factors
    ``s = e^log_s`` (``log_s (G,)``, one per group)."""
    return _factors(log_a, log_s, stats, jitter)[1]


def log_evidence(
    log_a: jax.Array, log_s: jax.Array, stats: Statistics, jitter: float
) -> jax.Array:
    """DTC ``log N(y | 0, Q + Lambda)`` in nats (arguments as ``data_factor``)."""
    M = stats.K_mm.shape[0]
    L, R_data = _factors(log_a, log_s, stats, jitter)
    R = whitened(R_data, L)
    logdet_B = 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diag(R)[:M])))  # log|I + B^T B|
    logdet_noise = stats.log_var + 2.0 * jnp.sum(stats.n * log_s)  # log|Lambda|
    rho2 = R[M, M] ** 2  # y^T (Q + Lambda)^-1 y
    n = jnp.sum(stats.n)
    return -0.5 * (rho2 + logdet_noise + logdet_B + n * math.log(2.0 * math.pi))


evidence_and_gradient = jax.jit(jax.value_and_grad(log_evidence, argnums=(0, 1)))
"""``(log_evidence, (d/dlog_a (T,), d/dlog_s (G,)))``, jitted."""
