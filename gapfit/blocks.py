"""Kernel rows of energies, forces and virials against the sparse set, per batch.

The total energy of a configuration is a sum of local energies
``E = sum_i eps(p_i)``, with the sparse-GP mean ``eps(p) = sum_m w_m k(p, z_m)``.
All positional dependence is through pair vectors ``D_p = r_j - r_i + S_p . cell``::

    t_pm   = dk(p_i(p), z_m)/dD_p = a_im / |p_i| (z_m - q_im p_i) . dP_p     (P, 3, M)
    F_a    = sum_{p: i_p = a} t_p - sum_{p: j_p = a} t_p                      (A, 3, M)
    W      = -sum_p t_p (x) D_p           (virial = -dE/d(strain), eV)        (C, 6, M)

with ``a_im = delta^2 zeta q_im^(zeta-1)`` and ``dP_p = dp_i/dD_p`` from ``soap.py``.
Virials are symmetrised and stored in Voigt order (xx, yy, zz, yz, xz, xy).
Nothing of size (atoms x atoms) or (pairs x pairs) is formed.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.kernels import DotProductKernel, cosine, normalise, same_species
from gapfit.neighbours import Batch, PairTables
from gapfit.soap import (
    SoapSpec,
    blocked,
    centre_basis,
    centre_coefficients,
    coefficients,
    covered,
    pair_derivatives,
    pair_gradient,
    power_spectrum,
    soap,
)

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
VOIGT_INDEX = tuple(np.array(VOIGT).T)  # t[VOIGT_INDEX]: Voigt (6,) of a 3x3 t


def voigt_of(t: np.ndarray) -> np.ndarray:
    """Voigt ``(6,)`` (xx yy zz yz xz xy) of a symmetric 3x3 tensor (numpy)."""
    return np.asarray(t)[VOIGT_INDEX]


class Rows(NamedTuple):
    """Kernel rows against the M sparse points (eV^2 scale, unscaled by sigmas)."""

    energy: jax.Array  # (C, M)   d E_c / d w_m
    forces: jax.Array  # (A, 3, M)
    virial: jax.Array  # (C, 6, M)
    local: jax.Array  # (A, M)   k(p_i, z_m)


class Mean(NamedTuple):
    """Predicted means of a batch."""

    local_energy: jax.Array  # (A,) eV, without e0
    energy: jax.Array  # (C,) eV, without e0
    forces: jax.Array  # (A, 3) eV/Å
    virial: jax.Array  # (C, 6) eV, Voigt


def voigt(W: jax.Array) -> jax.Array:
    """Symmetrised Voigt components ``(..., 6)`` of ``(..., 3, 3)`` tensors."""
    return jnp.stack([0.5 * (W[..., a, b] + W[..., b, a]) for a, b in VOIGT], axis=-1)


def batch_arrays(batch: Batch) -> dict:
    """The batch as device arrays (keyword arguments of the jitted functions), sent
    in one transfer (``jnp.asarray`` per array dispatches a program each: 0.3 ms
    apiece on a GPU)."""
    return jax.device_put(batch._asdict())


def descriptors(spec: SoapSpec, b: dict) -> jax.Array:
    """SOAP vectors ``(A, F)`` of every atom of a batch."""
    return soap(
        spec, b["D"], b["centre"], b["neighbour_species"], b["pair_mask"], b["species"]
    )


descriptors_jit = jax.jit(descriptors, static_argnums=0)


def forces_and_virials(t: jax.Array, b: dict) -> tuple[jax.Array, jax.Array]:
    """Per-pair gradients ``t (P, 3, ...)`` -> forces ``(A, 3, ...)`` and virials
    ``(C, 6, ...)``."""
    A, C = b["species"].shape[0], b["config_mask"].shape[0]
    forces = jax.ops.segment_sum(t, b["centre"], A) - jax.ops.segment_sum(
        t, b["neighbour"], A
    )
    # W_ckl = -sum_{p in c} t_pk D_pl as one contraction over p (no (P, 3, 3, M) array)
    G = (
        jax.nn.one_hot(b["pair_config"], C, dtype=t.dtype)[:, :, None]
        * b["D"][:, None, :]
    )
    W = -jnp.einsum("pcl,pk...->ckl...", G, t)  # (C, 3, 3, ...)
    W = jnp.stack([0.5 * (W[:, a, b_] + W[:, b_, a]) for a, b_ in VOIGT], axis=1)
    return forces, W


@partial(jax.jit, static_argnums=0)
def design_rows(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    b: dict,
    pairs: jax.Array | None = None,
) -> Rows:
    """Kernel rows of every energy, force and virial of a batch (see module doc).

    Pairs are processed in blocks of ``soap.PAIR_BLOCK`` (a ``lax.scan`` accumulating
    the force and virial rows), so memory is O(A M + block x (F + M)), not O(P M).

    Args:
        Z_hat: (M, F) unit SOAP vectors of the sparse points.
        Z_species: (M,) species index of each sparse point.
        b: ``batch_arrays(batch)``.
        pairs: the term's own pairs (indices, masked ones as padding: those inside
            its cutoff, out of its central species), or None for every pair.
    """
    b = covered(spec, b)
    keys = ("D", "centre", "neighbour", "neighbour_species", "pair_mask", "pair_config")
    own = {k: b[k] if pairs is None else b[k][pairs] for k in keys}
    c = coefficients(
        spec, own["D"], own["centre"], own["neighbour_species"], own["pair_mask"],
        b["species"],
    )  # fmt: skip
    p_hat, norm = normalise(power_spectrum(spec, c))
    q, a, local, energy = atom_terms(kernel, p_hat, norm, Z_hat, Z_species, b)
    A, C, M = p_hat.shape[0], b["config_mask"].shape[0], Z_hat.shape[0]
    blocks = blocked(own)  # padded pairs are masked

    def body(carry, blk):
        dP = pair_derivatives(
            spec, c, blk["D"], blk["centre"], blk["neighbour_species"], blk["pair_mask"]
        )
        t = _pair_rows(dP, p_hat, q, a, Z_hat, blk)
        forces, virial = forces_and_virials(t, {**b, **blk})
        return (carry[0] + forces, carry[1] + virial), None

    zeros = (jnp.zeros((A, 3, M)), jnp.zeros((C, 6, M)))
    (forces, virial), _ = jax.lax.scan(body, zeros, blocks)
    return Rows(energy, forces, virial, local)


def atom_terms(kernel, p_hat, norm, Z_hat, Z_species, b):
    """Per-atom pieces: cosines ``q``, ``a = dk/dq / |p|``, local and energy rows."""
    q = cosine(p_hat, Z_hat)  # (A, M)
    s = same_species(b["species"], Z_species) * b["atom_mask"][:, None]
    d2, zeta = kernel.delta**2, kernel.zeta
    local = d2 * q**zeta * s  # (A, M)
    energy = jax.ops.segment_sum(local, b["atom_config"], b["config_mask"].shape[0])
    a = d2 * zeta * q ** (zeta - 1) * s / norm[:, None]  # (A, M)
    return q, a, local, energy


def _pair_rows(dP, p_hat, q, a, Z_hat, b) -> jax.Array:
    """``t_pm = dk(p_i, z_m)/dD_p`` ``(P, 3, M)`` from ``dP (P, 3, F)``."""
    ZdP = jnp.einsum("mf,pkf->pkm", Z_hat, dP)  # (P, 3, M): the main GEMM
    i = b["centre"]
    pdP = jnp.einsum("pf,pkf->pk", p_hat[i], dP)  # (P, 3)
    t = a[i][:, None, :] * (ZdP - q[i][:, None, :] * pdP[:, :, None])
    return t * b["pair_mask"][:, None, None]


# pairs per block of centres of the mean, the centres split evenly over the blocks (2
# cores: a 108-atom cell in one block of 5,376 pairs 3.5 ms, at most 4,096 a block 4.1
# ms; a 512-atom chunk of 24,576 in five 17.5 ms, in blocks of 8,192 27.7 ms)
MEAN_BLOCK = 6000


def mean_and_descriptors(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> tuple[Mean, jax.Array, jax.Array]:
    """Local energies, energies, forces and virials of a batch, and the unit SOAP
    vectors ``(A, F)`` and norms ``(A,)`` they came from.

    A local energy depends only on its centre's pairs, so the work runs per block of
    centres (``tables.centres``: every atom, or a one-element term's own; about
    ``MEAN_BLOCK`` pairs a block, ``tables.by_centre``): each pair's radial
    functions and solid harmonics once (``soap.centre_basis``), the centres'
    coefficients ``c`` as dense sums over their pairs, reverse mode through the power
    spectrum and kernel to ``dE/dc``, and ``dE/dD_p = (dE/dc_i) . (dphi_p/dD_p)``
    analytically (``soap.pair_gradient``: no (P, N, LM, 3) Jacobian, no per-pair
    copy of the cotangent).
    """
    b = covered(spec, b)
    pairs, centres = tables.by_centre, tables.centres  # (C, K), (C,)
    C, K = pairs.shape
    A = b["species"].shape[0]
    per_centre = {
        "D": b["D"][pairs],
        "species": b["neighbour_species"][pairs],
        "mask": b["pair_mask"][pairs],
        "centre_species": b["species"][centres],
        "atom_mask": b["atom_mask"][centres] * tables.centre_mask,
    }

    def centre_block(blk: dict) -> tuple[jax.Array, ...]:
        basis = centre_basis(spec, blk["D"], blk["species"], blk["mask"])
        s = same_species(blk["centre_species"], Z_species)

        def energy(c):  # the block's local energies (eV) and their sum
            p_hat, norm = normalise(power_spectrum(spec, c))
            local = kernel.delta**2 * (cosine(p_hat, Z_hat) ** kernel.zeta * s)
            local = (local @ weights) * blk["atom_mask"]
            return jnp.sum(local), (local, p_hat, norm)

        c = centre_coefficients(spec, basis, blk["centre_species"])
        u, aux = jax.grad(energy, has_aux=True)(c)  # u: (centres, S, N, LM)
        return pair_gradient(spec, blk["D"], basis, u), *aux

    n_blocks = -(-C * K // MEAN_BLOCK)  # as even as the centres allow: little padding
    blocks = blocked(per_centre, -(-C // n_blocks))
    g, local, p_hat, norm = jax.lax.map(centre_block, blocks)
    # back to the batch's atoms: padding centres (atom 0, mask 0) add nothing; atoms
    # that are no centre have p_hat 0 and norm 1 (their environments are masked)
    m = tables.centre_mask
    local = jnp.zeros(A).at[centres].add(local.reshape(-1)[:C])
    norm = jnp.ones(A).at[centres].add((norm.reshape(-1)[:C] - 1.0) * m)
    p_hat = p_hat.reshape(-1, p_hat.shape[-1])[:C] * m[:, None]
    p_hat = jnp.zeros((A, p_hat.shape[1])).at[centres].add(p_hat)
    # back in pair order; the padding slots add 0 to a masked pair
    grad = jnp.zeros_like(b["D"]).at[pairs].add(g.reshape(-1, K, 3)[:C])
    forces, virial = forces_and_virials(grad, b)
    energy_c = jax.ops.segment_sum(local, b["atom_config"], b["config_mask"].shape[0])
    return Mean(local, energy_c, forces, virial), p_hat, norm


@partial(jax.jit, static_argnums=0)
def predict_mean(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> Mean:
    """The means of ``mean_and_descriptors``."""
    return mean_and_descriptors(spec, kernel, Z_hat, Z_species, weights, b, tables)[0]
