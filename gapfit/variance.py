"""Exact prior variances of energies, forces and virials, and the DTC predictive std.

A target that is linear in the local energies, ``f = sum_e U_e . grad eps(p_e)``
(forces and virials: ``U_e = dp_e / d(coordinate)``), has prior variance
``sum_{e,e'} U_e^T H(p_e, p_e') U_e'`` with ``H = d^2 k / dp dp'``. For the normalised
dot-product kernel ``k = delta^2 q^zeta`` (``q = p_hat . p_hat'``), writing
``U~ = (I - p_hat p_hat^T) U / |p|``::

    U^T H U' = delta^2 zeta [ (zeta - 1) q^(zeta-2) (U~ . p_hat')(p_hat . U~')
                              + q^(zeta-1) U~ . U~' ]

For the force on atom a the entries are the pairs whose neighbour is a (environment of
their centre, ``U = dP_p``) and a itself (``U = -sum_{p: i_p = a} dP_p``); for a virial
component they are all atoms of the configuration (``U = sum_p dP_p (x) D_p``).
Energies use ``sum_{i,i'} k(p_i, p_i')``. Cost per atom is O(neighbours^2 x F).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.blocks import Mean, Rows, atom_terms, mean_and_descriptors, voigt
from gapfit.kernels import DotProductKernel, normalise, same_species
from gapfit.neighbours import PairTables
from gapfit.soap import SoapSpec, coefficients, pair_derivatives, power_spectrum
from gapfit.sparse_gp import Posterior, dtc_variance


class Std(NamedTuple):
    """Predictive standard deviations (same units as the quantity); forces and
    virial are None where only the energy stds were asked for."""

    local_energy: jax.Array  # (A,) eV
    energy: jax.Array  # (C,) eV
    forces: jax.Array  # (A, 3) eV/Å
    virial: jax.Array  # (C, 6) eV


def _gram_variance(
    kernel: DotProductKernel,
    U: jax.Array,
    p_hat: jax.Array,
    norm: jax.Array,
    s: jax.Array,
) -> jax.Array:
    """``sum_{e'} U_e^T H U_e'`` ``(..., E, K)`` for entries ``U (..., E, K, F)`` at
    unit SOAP ``p_hat (..., E, F)`` with norms ``(..., E)``; ``s (..., E, E)`` masks
    species and padding; ``...`` are independent groups. Summed over e it is the
    prior variance of each of the K components.

    Two matrix products carry the cost, ``(w U)_e = sum_e' w_ee' U_e'`` and
    ``C_ee' = U_e . p_hat_e'``; with ``a_e = C_ee`` the projections of the module
    docstring follow without forming U~ (E, K, F)::

        U~_e . U~_e'    = (U_e . U_e' - a_e' C_ee' - a_e C_e'e + a_e a_e' q_ee') / n n'
        U~_e . p_hat_e' = (C_ee' - a_e q_ee') / |p_e|
    """
    inv = 1.0 / norm
    q = jnp.einsum("...ef,...gf->...eg", p_hat, p_hat)
    w = s * q ** (kernel.zeta - 1) * inv[..., :, None] * inv[..., None, :]
    wU = jnp.einsum("...eg,...gkf->...ekf", w, U)  # (..., E, K, F)
    C = jnp.einsum("...ekf,...gf->...ekg", U, p_hat)  # (..., E, K, E)
    # elementwise products and sums from here: as dots they would be (E K) tiny ones
    a = jnp.sum(U * p_hat[..., None, :], axis=-1)  # C_ee (..., E, K)
    a_g = jnp.swapaxes(a, -1, -2)[..., None, :, :]  # a_e' at [e, k, e']
    Ct = jnp.einsum("...ekg->...gke", C)  # C_e'e at [e, k, e']
    q_ = q[..., :, None, :]
    cross = a_g * (a[..., None] * q_ - C) - a[..., None] * Ct
    var = jnp.sum(U * wU, axis=-1) + jnp.sum(w[..., :, None, :] * cross, axis=-1)
    if kernel.zeta > 1:
        B = (C - a[..., None] * q_) * inv[..., None, None]  # U~_e . p_hat_e'
        w2 = (s * q ** (kernel.zeta - 2))[..., :, None, :]
        Bt = jnp.einsum("...ekg->...gke", B)
        var += (kernel.zeta - 1) * jnp.sum(w2 * B * Bt, axis=-1)
    return kernel.delta**2 * kernel.zeta * var


def prior_force_variance(
    kernel: DotProductKernel,
    p_hat: jax.Array,
    norm: jax.Array,
    dP_in: jax.Array,
    U_self: jax.Array,
    centre_in: jax.Array,
    mask_in: jax.Array,
    b: dict,
) -> jax.Array:
    """Prior variance ``(A, 3)`` of every force component (eV^2/Å^2), from the pairs
    into each atom ``dP_in (A, K, 3, F)`` (centres ``centre_in``, mask ``mask_in``
    (A, K)) and ``U_self = -sum_{p: i_p = a} dP_p`` ``(A, 3, F)``."""
    A = p_hat.shape[0]
    U = jnp.concatenate([U_self[:, None], dP_in], axis=1)  # (A, K+1, 3, F)
    env = jnp.concatenate([jnp.arange(A)[:, None], centre_in], axis=1)
    real = jnp.concatenate([b["atom_mask"][:, None], mask_in], axis=1)
    spec_e = b["species"][env]
    s = (spec_e[:, :, None] == spec_e[:, None, :]) * real[:, :, None] * real[:, None, :]
    var = _gram_variance(kernel, U, p_hat[env], norm[env], s).sum(axis=1)
    return var * b["atom_mask"][:, None]


def prior_virial_variance(
    kernel: DotProductKernel, p_hat: jax.Array, norm: jax.Array, V: jax.Array, b: dict
) -> jax.Array:
    """Prior variance ``(C, 6)`` of every Voigt virial component (eV^2), from each
    atom's ``V_i = sum_{p: i_p = i} dP_p (x) D_p`` in Voigt order ``(A, 6, F)``."""
    C = b["config_mask"].shape[0]
    same = (b["atom_config"][:, None] == b["atom_config"][None, :]) * b["atom_mask"][
        None, :
    ]
    s = same_species(b["species"], b["species"]) * same * b["atom_mask"][:, None]
    return jax.ops.segment_sum(
        _gram_variance(kernel, V, p_hat, norm, s), b["atom_config"], C
    )


def prior_energy_variance(
    kernel: DotProductKernel, p_hat: jax.Array, b: dict
) -> jax.Array:
    """Prior variance ``(C,)`` of every total energy (eV^2): sum_{i,i'} k(p_i, p_i')."""
    same = b["atom_config"][:, None] == b["atom_config"][None, :]
    s = same_species(b["species"], b["species"]) * same
    s = s * b["atom_mask"][:, None] * b["atom_mask"][None, :]
    K = kernel.delta**2 * (p_hat @ p_hat.T) ** kernel.zeta * s
    return jax.ops.segment_sum(
        K.sum(axis=1), b["atom_config"], b["config_mask"].shape[0]
    )


def incoming_derivatives(
    spec: SoapSpec, b: dict, tables: PairTables
) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """Unit SOAP ``p_hat (A, F)``, norms ``(A,)`` and ``dP (A K, 3, F)`` (masked) of a
    batch, with the pairs laid out by the atom they point into (``tables.incoming``);
    also those pairs' ``D``, ``centre``, ``neighbour_species`` and ``pair_mask``."""
    A, K = tables.incoming.shape
    pair = {
        k: b[k][tables.incoming].reshape(A * K, *b[k].shape[1:]) for k in _PAIR_KEYS
    }
    c = coefficients(
        spec, b["D"], b["centre"], b["neighbour_species"], b["pair_mask"], b["species"]
    )
    p_hat, norm = normalise(power_spectrum(spec, c))
    dP = pair_derivatives(
        spec,
        c,
        pair["D"],
        pair["centre"],
        pair["neighbour_species"],
        pair["pair_mask"],
        slices=True,
    )
    return p_hat, norm, dP, pair


@partial(jax.jit, static_argnums=0)
def soap_rows_and_priors(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    b: dict,
    tables: PairTables,
) -> tuple[Rows, Std]:
    """Kernel rows and prior variances (``Std`` fields hold variances here) of the
    SOAP term for one batch.

    ``dP`` is computed once with the pairs laid out by the atom they point into
    (``tables.incoming (A, K)``), so each force row is a dense sum over K (no scatter
    of (P, 3, M) arrays) and the same ``dP`` serves the rows and the prior
    variances; a gather regroups it by centre (``tables.outgoing``) for the dense
    sums ``S_a = sum_{p: i_p = a} dP_p`` and ``V_a = sum_{p: i_p = a} dP_p (x) D_p``.
    With ``t_p`` of ``blocks`` (``t_p = a_i (z - q_i p_hat_i) . dP_p``), linear in
    ``dP_p``::

        F_a = a_a (Z S_a - q_a (p_hat_a . S_a)) - sum_{p into a} t_p       (A, 3, M)
        W   = -sum_p t_p (x) D_p = -sum_i a_i (Z V_i - q_i (p_hat_i . V_i)) (C, 6, M)
    """
    A, K = tables.incoming.shape
    C = b["config_mask"].shape[0]
    p_hat, norm, dP, pair = incoming_derivatives(spec, b, tables)
    i = pair["centre"]
    # by centre: slot A K of the extended arrays is an empty pair
    dP_out = jnp.concatenate([dP, jnp.zeros_like(dP[:1])])[tables.outgoing]
    D_out = jnp.concatenate([pair["D"], jnp.zeros_like(pair["D"][:1])])[tables.outgoing]
    S = dP_out.sum(axis=1)  # (A, 3, F)
    V = voigt(jnp.einsum("akxf,aky->afxy", dP_out, D_out))  # (A, F, 6)
    V = jnp.swapaxes(V, 1, 2)  # (A, 6, F)

    q, a, local, energy = atom_terms(kernel, p_hat, norm, Z_hat, Z_species, b)

    def projected(U):  # a_i (z - q_i p_hat_i) . U_i for U (A, 3 or 6, F) per atom
        ZU = jnp.einsum("akf,mf->akm", U, Z_hat)
        pU = jnp.einsum("akf,af->ak", U, p_hat)
        return a[:, None, :] * (ZU - q[:, None, :] * pU[..., None])

    # sum over the pairs into a of t_p, with a_i and a_i q_i of each pair's centre
    ZdP = jnp.einsum("pkf,mf->pkm", dP, Z_hat).reshape(A, K, 3, -1)  # the main GEMM
    pdP = jnp.einsum("pkf,pf->pk", dP, p_hat[i]).reshape(A, K, 3)
    t_in = jnp.sum(a[i].reshape(A, K, 1, -1) * ZdP, axis=1) - jnp.einsum(
        "akx,akm->axm", pdP, (a * q)[i].reshape(A, K, -1)
    )
    forces = projected(S) - t_in  # (A, 3, M)
    # W = -sum_p t_p (x) D_p = -sum_i (the projection of V_i): no pass over t_p
    virial = -jax.ops.segment_sum(projected(V), b["atom_config"], C)  # (C, 6, M)
    rows = Rows(energy, forces, virial, local)

    priors = Std(
        kernel.delta**2 * b["atom_mask"],
        prior_energy_variance(kernel, p_hat, b),
        prior_force_variance(
            kernel,
            p_hat,
            norm,
            dP.reshape(A, K, 3, -1),
            -S,
            i.reshape(A, K),
            pair["pair_mask"].reshape(A, K),
            b,
        ),
        prior_virial_variance(kernel, p_hat, norm, V, b),
    )
    return rows, priors


@partial(jax.jit, static_argnums=0)
def soap_mean_and_energy_rows(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> tuple[Mean, Rows, Std]:
    """The SOAP term's means, and the local-energy and energy rows and prior
    variances (forces and virials None): all the energy stds need, from the
    descriptors the mean computed (no pair derivatives)."""
    mean, p_hat, norm = mean_and_descriptors(
        spec, kernel, Z_hat, Z_species, weights, b, tables
    )
    _, _, local, energy = atom_terms(kernel, p_hat, norm, Z_hat, Z_species, b)
    priors = Std(
        kernel.delta**2 * b["atom_mask"],
        prior_energy_variance(kernel, p_hat, b),
        None,
        None,
    )
    return mean, Rows(energy, None, None, local), priors


_PAIR_KEYS = ("D", "centre", "neighbour_species", "pair_mask")


@jax.jit
def combine_std(rows: Sequence[Rows], priors: Sequence[Std], post: Posterior) -> Std:
    """DTC stds from the kernel rows and prior variances of each term (independent
    GPs, in weight order); ``sparse_gp.dtc_variance`` forms each term's residual, for
    every quantity in one pair of triangular solves."""
    fields = {  # Std's field: Rows' field; those the priors hold (not None)
        q: r
        for q, r in (
            ("local_energy", "local"),
            ("energy", "energy"),
            ("forces", "forces"),
            ("virial", "virial"),
        )
        if getattr(priors[0], q) is not None
    }
    shapes = [getattr(priors[0], q).shape for q in fields]
    stacked_rows = [
        jnp.concatenate(
            [
                getattr(r, k).reshape(-1, getattr(r, k).shape[-1])
                for k in fields.values()
            ]
        )
        for r in rows
    ]
    stacked_priors = [
        jnp.concatenate([jnp.ravel(getattr(p, q)) for q in fields]) for p in priors
    ]
    std = jnp.sqrt(dtc_variance(stacked_priors, stacked_rows, post))
    ends = np.cumsum([int(np.prod(shape)) for shape in shapes])
    parts = zip(fields, jnp.split(std, ends[:-1]), shapes, strict=True)
    return Std(**dict.fromkeys(Std._fields) | {q: x.reshape(n) for q, x, n in parts})
