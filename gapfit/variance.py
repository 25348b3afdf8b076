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

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.blocks import Mean, Rows, atom_terms, mean_and_descriptors, voigt
from gapfit.kernels import DotProductKernel, normalise, same_species
from gapfit.neighbours import PairTables
from gapfit.soap import (
    SoapSpec,
    blocked,
    coefficients,
    covered,
    pair_derivatives,
    power_spectrum,
)
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
    right: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """``sum_{g} U_e^T H U_g`` ``(..., E, K)`` for entries ``U (..., E, K, F)`` at
    unit SOAP ``p_hat (..., E, F)`` with norms ``(..., E)`` against the entries
    ``right = (U', p_hat', norm')`` of a second set (``(..., G, ...)``; default: the
    same set); ``s (..., E, G)`` masks species and padding; ``...`` are independent
    groups. Summed over e it is the prior covariance of the two sets' sums of each
    of the K components (over one set: its prior variance).

    Two matrix products carry the cost, ``(w U')_e = sum_g w_eg U'_g`` and
    ``C_eg = U_e . p_hat'_g`` (and, for a second set, ``C'_eg = U'_g . p_hat_e``; for
    the same set the transpose of ``C``); with ``a_e = U_e . p_hat_e`` and ``a'_g``
    alike the projections of the module docstring follow without forming U~::

        U~_e . U~'_g    = (U_e . U'_g - a'_g C_eg - a_e C'_eg + a_e a'_g q_eg) / n n'
        U~_e . p_hat'_g = (C_eg - a_e q_eg) / |p_e|
    """
    inv = 1.0 / norm
    a = jnp.sum(U * p_hat[..., None, :], axis=-1)  # (..., E, K)
    C = jnp.einsum("...ekf,...gf->...ekg", U, right[1] if right else p_hat)
    if right is None:
        U2, p2, inv2, a2 = U, p_hat, inv, a
        Ct = jnp.einsum("...gke->...ekg", C)  # C'_eg = C_ge
    else:
        U2, p2, inv2 = right[0], right[1], 1.0 / right[2]
        a2 = jnp.sum(U2 * p2[..., None, :], axis=-1)  # (..., G, K)
        Ct = jnp.einsum("...gkf,...ef->...ekg", U2, p_hat)
    q = jnp.einsum("...ef,...gf->...eg", p_hat, p2)
    w = s * q ** (kernel.zeta - 1) * inv[..., :, None] * inv2[..., None, :]
    wU = jnp.einsum("...eg,...gkf->...ekf", w, U2)  # (..., E, K, F)
    # elementwise products and sums from here: as dots they would be (E K) tiny ones
    a_g = jnp.swapaxes(a2, -1, -2)[..., None, :, :]  # a'_g at [e, k, g]
    q_ = q[..., :, None, :]
    cross = a_g * (a[..., None] * q_ - C) - a[..., None] * Ct
    var = jnp.sum(U * wU, axis=-1) + jnp.sum(w[..., :, None, :] * cross, axis=-1)
    if kernel.zeta > 1:
        B = (C - a[..., None] * q_) * inv[..., None, None]  # U~_e . p_hat'_g
        Bt = (Ct - a_g * q_) * inv2[..., None, None, :]  # U~'_g . p_hat_e
        w2 = (s * q ** (kernel.zeta - 2))[..., :, None, :]
        var += (kernel.zeta - 1) * jnp.sum(w2 * B * Bt, axis=-1)
    return kernel.delta**2 * kernel.zeta * var


def _rows_of(x: jax.Array, atom: jax.Array | None) -> jax.Array:
    """``x``'s rows of the atoms ``atom``, or all of them for None (no gather: index
    gathers of the whole batch cost the 108-atom std 20 ms)."""
    return x if atom is None else x[atom]


def prior_force_variance(
    kernel: DotProductKernel,
    p_hat: jax.Array,
    norm: jax.Array,
    rows: dict,
    b: dict,
) -> jax.Array:
    """Prior variance ``(R, 3)`` of the force components of R atoms ``rows["atom"]``
    (None: every atom of the batch, in order) (eV^2/Å^2), from the pairs into each
    ``rows["dP"] (R, K, 3, F)`` (centres ``rows["centre"]``, mask ``rows["mask"]``
    (R, K)) and ``rows["S"] = sum_{p: i_p = a} dP_p`` ``(R, 3, F)``; ``p_hat``,
    ``norm``: all atoms'."""
    atom = rows["atom"]
    own = jnp.arange(p_hat.shape[0]) if atom is None else atom
    U = jnp.concatenate([-rows["S"][:, None], rows["dP"]], axis=1)  # (R, K+1, 3, F)
    env = jnp.concatenate([own[:, None], rows["centre"]], axis=1)
    # environments that count: real pairs' centres and the atom's own, unless masked
    # (padding, or a species the term does not cover: ``soap.covered``); an atom's
    # force still varies with its neighbours' environments when its own is masked
    real = b["atom_mask"][env] * jnp.concatenate(
        [jnp.ones_like(own, dtype=rows["mask"].dtype)[:, None], rows["mask"]], axis=1
    )
    spec_e = b["species"][env]
    s = (spec_e[:, :, None] == spec_e[:, None, :]) * real[:, :, None] * real[:, None, :]
    return _gram_variance(kernel, U, p_hat[env], norm[env], s).sum(axis=1)


ATOM_TILE = 512  # atoms per side of a tile of the energy and virial prior double sums


def _tile_sums(
    pair_sum: Callable[[dict, dict | None, jax.Array], jax.Array],
    atoms: dict[str, jax.Array],
    b: dict,
    tile: int,
) -> jax.Array:
    """Per-configuration sums ``(C, ...)`` of a double sum over the atom pairs of each
    configuration, symmetric in the two atoms: ``pair_sum(x, y, s)`` gives the row
    sums ``(T, ...)`` of tile ``x`` against tile ``y`` (dicts of the per-atom arrays
    ``atoms`` plus ``species``, ``config`` and ``mask``; ``y`` None: ``x`` against
    itself) with ``s (T, T')`` the same-configuration, same-species and padding mask.
    One call when the batch fits one tile; otherwise tiles (t, u >= t) of ``tile``
    atoms, the off-diagonal ones counted twice, each booked to the configurations of
    its rows: memory O(tile^2), not O(A^2)."""
    atoms = {**atoms, "species": b["species"], "config": b["atom_config"]}
    atoms["mask"] = b["atom_mask"]
    C = b["config_mask"].shape[0]

    def mask(x, y):
        return (
            same_species(x["species"], y["species"])
            * (x["config"][:, None] == y["config"][None, :])
            * x["mask"][:, None]
            * y["mask"][None, :]
        )

    if atoms["mask"].shape[0] <= tile:
        return jax.ops.segment_sum(
            pair_sum(atoms, None, mask(atoms, atoms)), atoms["config"], C
        )
    tiles = blocked(atoms, tile)  # padding: mask 0
    rows, cols = np.triu_indices(len(tiles["mask"]))

    def one(tu):
        x, y = ({k: v[t] for k, v in tiles.items()} for t in tu)
        return jnp.where(tu[0] == tu[1], 1.0, 2.0) * pair_sum(x, y, mask(x, y))

    sums = jax.lax.map(one, (jnp.asarray(rows), jnp.asarray(cols)))
    sums = sums.reshape(-1, *sums.shape[2:])
    return jax.ops.segment_sum(sums, tiles["config"][rows].reshape(-1), C)


def prior_virial_variance(
    kernel: DotProductKernel,
    p_hat: jax.Array,
    norm: jax.Array,
    V: jax.Array,
    b: dict,
    tile: int = ATOM_TILE,
) -> jax.Array:
    """Prior variance ``(C, 6)`` of every Voigt virial component (eV^2), from each
    atom's ``V_i = sum_{p: i_p = i} dP_p (x) D_p`` in Voigt order ``(A, 6, F)``, over
    tiles of ``tile`` atoms."""

    def pair_sum(x, y, s):
        def side(t):  # a tile's padding has norm 0: 1 instead (its mask is 0)
            return t["V"], t["p_hat"], jnp.where(t["mask"] > 0, t["norm"], 1.0)

        right = None if y is None else side(y)
        return _gram_variance(kernel, *side(x), s, right)

    return _tile_sums(pair_sum, {"V": V, "p_hat": p_hat, "norm": norm}, b, tile)


def prior_energy_variance(
    kernel: DotProductKernel, p_hat: jax.Array, b: dict, tile: int = ATOM_TILE
) -> jax.Array:
    """Prior variance ``(C,)`` of every total energy (eV^2): sum_{i,i'} k(p_i, p_i'),
    over tiles of ``tile`` atoms."""

    def pair_sum(x, y, s):
        q = x["p_hat"] @ (x if y is None else y)["p_hat"].T
        return kernel.delta**2 * jnp.sum(q**kernel.zeta * s, axis=1)

    return _tile_sums(pair_sum, {"p_hat": p_hat}, b, tile)


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


ROW_BLOCK = 256  # atoms per block of the force rows and their prior variances


@partial(jax.jit, static_argnums=0, static_argnames="row_block")
def soap_rows_and_priors(
    spec: SoapSpec,
    kernel: DotProductKernel,
    Z_hat: jax.Array,
    Z_species: jax.Array,
    b: dict,
    tables: PairTables,
    row_block: int = ROW_BLOCK,
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

    The force rows and their prior variances run over blocks of ``row_block`` atoms
    (one block for a batch that small), so the (pairs, 3, M) products of a large cell
    are never all held at once.
    """
    b = covered(spec, b)
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

    def projected(U, atom):  # a_i (z - q_i p_hat_i) . U_i for U (R, 3 or 6, F)
        ZU = jnp.einsum("rkf,mf->rkm", U, Z_hat)
        pU = jnp.einsum("rkf,rf->rk", U, _rows_of(p_hat, atom))
        a_r, q_r = _rows_of(a, atom), _rows_of(q, atom)
        return a_r[:, None, :] * (ZU - q_r[:, None, :] * pU[..., None])

    def force_block(rows: dict) -> tuple[jax.Array, jax.Array]:
        """Force rows (R, 3, M) and prior variances (R, 3) of the atoms ``rows``."""
        dP_r, i_r = rows["dP"], rows["centre"]  # (R, K, 3, F), (R, K)
        # sum over the pairs into a of t_p, with a_i and a_i q_i of each pair's centre
        ZdP = jnp.einsum("rkxf,mf->rkxm", dP_r, Z_hat)  # the main GEMM
        pdP = jnp.einsum("rkxf,rkf->rkx", dP_r, p_hat[i_r])
        t_in = jnp.sum(a[i_r][:, :, None] * ZdP, axis=1) - jnp.einsum(
            "rkx,rkm->rxm", pdP, (a * q)[i_r]
        )
        forces = projected(rows["S"], rows["atom"]) - t_in
        return forces, prior_force_variance(kernel, p_hat, norm, rows, b)

    per_atom = {
        "atom": jnp.arange(A),
        "dP": dP.reshape(A, K, 3, -1),
        "centre": i.reshape(A, K),
        "mask": pair["pair_mask"].reshape(A, K),
        "S": S,
    }
    if A <= row_block:
        forces, force_var = force_block({**per_atom, "atom": None})
    else:  # padded rows (atom 0 again) are cut off
        out = jax.lax.map(force_block, blocked(per_atom, row_block))
        forces, force_var = (x.reshape(-1, *x.shape[2:])[:A] for x in out)
    # W = -sum_p t_p (x) D_p = -sum_i (the projection of V_i): no pass over t_p
    virial = -jax.ops.segment_sum(projected(V, None), b["atom_config"], C)
    rows = Rows(energy, forces, virial, local)

    priors = Std(
        kernel.delta**2 * b["atom_mask"],
        prior_energy_variance(kernel, p_hat, b),
        force_var,
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
    b = covered(spec, b)
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
