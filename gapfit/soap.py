"""SOAP power spectrum in JAX, equal to ``dscribe.descriptors.SOAP`` (GTO basis).

Per centre i and neighbour species Z the smoothed density is
``rho_Z(r) = sum_j w(r_ij) exp(-eta |r - r_ij|^2)`` with ``eta = 1 / (2 sigma^2)``.
Its projection on orthonormal GTO radial functions ``g_nl`` and real spherical
harmonics has the closed form (Bartók, Kondor, Csányi, PRB 87, 184115 (2013);
dscribe: Himanen et al., CPC 247, 106949 (2020))::

    c^Z_nlm = sum_j w_j sum_k B_lnk exp(-alpha'_lk r_j^2) R_lm(r_j)
    B_lnk   = pi^{3/2} beta^(l)_nk eta^l (alpha_lk + eta)^-(l + 3/2)
    alpha'  = alpha_lk eta / (alpha_lk + eta)
    p^{ab}_lnn' = pi sqrt(8 / (2l + 1)) sum_m c^a_nlm c^b_n'lm

with ``R_lm = r^l Y_lm`` real solid harmonics and ``beta = sqrtm(inv(S))`` the Löwdin
orthonormaliser of the primitive GTOs (exactly dscribe's scipy call). The centre atom
contributes ``w(0)`` to ``c_n00``. The output layout is dscribe's (pair blocks a <= b,
then l, n, n'). The vector is not normalised; the kernel normalises it.

Weightings (``w``): ``"none"`` (dscribe's default; neighbours up to
``r_cut + 3.717 sigma``; the energy jumps when an atom crosses that sphere),
``"poly"`` (dscribe's ``weighting={"function": "poly", r0, c, m}``; smooth), and
``"cosine"`` (gapfit's default, gap_fit's ``cutoff_transition_width``: ``w = 1`` below
``r_cut - width``, ``(1 + cos(pi x)) / 2`` across the transition, ``0`` beyond
``r_cut``; smooth (C^1), a documented deviation from dscribe, which has no such
weighting).

Positions enter only through pair vectors ``D_p = r_j - r_i + S_p . cell`` so forces
and virials follow from ``dE/dD_p`` (see ``blocks.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from scipy.special import gamma

from gapfit.errors import GapfitError

GAUSS_PADDING = (
    3.7169221888498383  # sqrt(-2 ln 1e-3): dscribe's neighbour padding / sigma
)
WEIGHTINGS = ("cosine", "poly", "none")


@dataclass(frozen=True)
class SoapSpec:
    """Settings of one SOAP descriptor (gap_fit names; dscribe meaning).

    Attributes:
        species: sorted atomic numbers (all blocks present even if absent).
        cutoff: dscribe ``r_cut`` in Å (GTO decay radii and the weighting cutoff).
        n_max: number of radial functions.
        l_max: maximum angular momentum (0..20).
        atom_sigma: Gaussian width sigma in Å.
        weighting: ``"cosine"``, ``"poly"`` or ``"none"``.
        cutoff_transition_width: width of the cosine transition in Å.
        poly_r0, poly_c, poly_m: dscribe's poly weighting parameters (Å, -, -).
        centre: the atomic number of the central atoms the term covers (gap_fit's
            ``Z`` with ``add_species=F``); 0: every species, each apart.
    """

    species: tuple[int, ...]
    cutoff: float = 5.0
    n_max: int = 8
    l_max: int = 6
    atom_sigma: float = 0.5
    weighting: str = "cosine"
    cutoff_transition_width: float = 1.0
    poly_r0: float = 5.0
    poly_c: float = 1.0
    poly_m: float = 2.0
    centre: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "species", tuple(sorted({int(z) for z in self.species}))
        )
        if not self.species:
            raise GapfitError("SOAP needs at least one species; found none.")
        if self.centre and self.centre not in self.species:
            raise GapfitError(
                f"SOAP centre Z={self.centre} is not one of its species "
                f"{list(self.species)}."
            )
        if self.weighting not in WEIGHTINGS:
            raise GapfitError(
                f"SOAP weighting '{self.weighting}' is unknown; "
                f"use one of {WEIGHTINGS}."
            )
        if not self.cutoff > 1.0:
            raise GapfitError(
                f"SOAP cutoff={self.cutoff} Å: the GTO basis needs > 1 Å."
            )
        if not (0 <= self.l_max <= 20 and self.n_max >= 1):
            raise GapfitError(
                f"SOAP n_max={self.n_max}, l_max={self.l_max}: need n_max >= 1 and "
                "0 <= l_max <= 20."
            )
        if not self.atom_sigma > 0:
            raise GapfitError(f"SOAP atom_sigma={self.atom_sigma} Å must be > 0.")
        if self.weighting == "cosine" and not (
            0 < self.cutoff_transition_width <= self.cutoff
        ):
            raise GapfitError(
                f"cutoff_transition_width={self.cutoff_transition_width} Å must lie in "
                f"(0, cutoff={self.cutoff}]."
            )

    @property
    def neighbour_cutoff(self) -> float:
        """Radius (Å) beyond which a neighbour contributes nothing."""
        if self.weighting == "cosine":
            return self.cutoff
        padded = self.cutoff + GAUSS_PADDING * self.atom_sigma
        return min(padded, self.poly_r0) if self.weighting == "poly" else padded

    @property
    def centre_index(self) -> int | None:
        """Species index of ``centre``, None for a term over every species."""
        return self.species.index(self.centre) if self.centre else None

    @property
    def n_features(self) -> int:
        """Length of the SOAP vector (dscribe's ``get_number_of_features``)."""
        sn = len(self.species) * self.n_max
        return sn * (sn + 1) // 2 * (self.l_max + 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["species"] = list(self.species)
        if not self.centre:  # as gapfits before per-species terms wrote it
            del d["centre"]
        return d

    def dscribe_kwargs(self) -> dict:
        """Arguments of ``dscribe.descriptors.SOAP`` giving the same vectors
        (``weighting="cosine"`` has no dscribe equivalent)."""
        kw = dict(
            species=list(self.species),
            r_cut=self.cutoff,
            n_max=self.n_max,
            l_max=self.l_max,
            sigma=self.atom_sigma,
            rbf="gto",
        )
        if self.weighting == "poly":
            kw["weighting"] = {
                "function": "poly",
                "r0": self.poly_r0,
                "c": self.poly_c,
                "m": self.poly_m,
            }
        elif self.weighting == "cosine":
            raise GapfitError("the cosine weighting has no dscribe equivalent")
        return kw

    @cached_property
    def constants(self) -> SoapConstants:
        return soap_constants(self)


@dataclass(frozen=True)
class SoapConstants:
    """Host-side constants: ``B (L+1, N, K)``, ``alpha' (L+1, K)``, self term ``(N,)``,
    the gather index of dscribe's layout, and ``radial ((L+1) K, 2 (L+1) N)``: the
    block-diagonal ``B`` and ``-alpha' B`` that map ``exp(-alpha' r^2)`` to the radial
    functions and their r^2-derivatives in one matrix product."""

    B: np.ndarray
    alpha_p: np.ndarray
    self_c: np.ndarray
    layout: np.ndarray
    radial: np.ndarray


def _gto_betas(cutoff: float, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """alpha (L+1, N) in Å^-2 and Löwdin beta (L+1, N, N), exactly as dscribe."""
    a = np.linspace(1.0, cutoff, n_max)
    alphas = np.zeros((l_max + 1, n_max))
    betas = np.zeros((l_max + 1, n_max, n_max))
    for l in range(l_max + 1):
        alpha = -np.log(1e-3 / np.power(a, l)) / a**2
        s = alpha[:, None] + alpha[None, :]
        overlap = 0.5 * gamma(l + 1.5) * s ** (-(l + 1.5))
        beta = scipy.linalg.sqrtm(scipy.linalg.inv(overlap))
        if np.iscomplexobj(beta):
            if np.abs(beta.imag).max() > 1e-8 * np.abs(beta.real).max():
                raise GapfitError(
                    f"SOAP radial basis is singular for cutoff={cutoff}, "
                    f"n_max={n_max}; "
                    "lower n_max."
                )
            beta = beta.real
        alphas[l], betas[l] = alpha, beta
    return alphas, betas


def _layout(n_species: int, n_max: int, l_max: int) -> np.ndarray:
    """Flat indices into P[a, b, l, n, n'] (shape S, S, L+1, N, N) in dscribe order."""
    shape = (n_species, n_species, l_max + 1, n_max, n_max)
    idx = []
    for a in range(n_species):
        for b in range(a, n_species):
            for l in range(l_max + 1):
                for n in range(n_max):
                    for n2 in range(n if a == b else 0, n_max):
                        idx.append(np.ravel_multi_index((a, b, l, n, n2), shape))
    return np.asarray(idx, dtype=np.int64)


def soap_constants(spec: SoapSpec) -> SoapConstants:
    """Precompute the GTO constants of ``spec`` on the host (no gradients needed)."""
    eta = 1.0 / (2.0 * spec.atom_sigma**2)
    alphas, betas = _gto_betas(spec.cutoff, spec.n_max, spec.l_max)
    ls = np.arange(spec.l_max + 1)[:, None]
    # B_lnk = pi^{3/2} beta_nk eta^l (alpha_lk + eta)^-(l+3/2)            (L+1, N, K)
    B = np.pi**1.5 * betas * (eta**ls * (alphas + eta) ** (-(ls + 1.5)))[:, None, :]
    alpha_p = alphas * eta / (alphas + eta)
    centre_w = spec.poly_c if spec.weighting == "poly" else 1.0
    self_c = centre_w * B[0].sum(axis=1) / (2.0 * np.sqrt(np.pi))  # R_00 = Y_00
    layout = _layout(len(spec.species), spec.n_max, spec.l_max)
    L1, N, K = B.shape
    radial = np.zeros((L1, K, 2, L1, N))
    for l in range(L1):
        radial[l, :, 0, l] = B[l].T
        radial[l, :, 1, l] = -alpha_p[l][:, None] * B[l].T
    return SoapConstants(B, alpha_p, self_c, layout, radial.reshape(L1 * K, -1))


def solid_harmonics(D: jax.Array, l_max: int) -> jax.Array:
    """Real orthonormal solid harmonics ``r^l Y_lm`` of vectors ``D (..., 3)`` in Å^l.

    Returns ``(..., (l_max+1)^2)`` ordered l, m = -l..l. Built from the Cartesian
    recursion of the modified associated Legendre polynomials (Bigi et al., JCP 159,
    064802 (2023)), so it is polynomial in x, y, z and smooth at the poles.
    """
    x, y, z = D[..., 0], D[..., 1], D[..., 2]
    r2 = x * x + y * y + z * z
    Q = {(0, 0): jnp.ones_like(x)}
    for l in range(1, l_max + 1):
        Q[(l, l)] = -(2 * l - 1) * Q[(l - 1, l - 1)]
        Q[(l, l - 1)] = (2 * l - 1) * z * Q[(l - 1, l - 1)]
        for m in range(l - 2, -1, -1):
            Q[(l, m)] = (
                (2 * l - 1) * z * Q[(l - 1, m)] - (l + m - 1) * r2 * Q[(l - 2, m)]
            ) / (l - m)
    C, S = [jnp.ones_like(x)], [jnp.zeros_like(x)]
    for m in range(1, l_max + 1):
        C.append(x * C[m - 1] - y * S[m - 1])
        S.append(x * S[m - 1] + y * C[m - 1])
    out = []
    for l in range(l_max + 1):
        row = [None] * (2 * l + 1)
        row[l] = math.sqrt((2 * l + 1) / (4 * math.pi)) * Q[(l, 0)]
        for m in range(1, l + 1):
            f = math.sqrt(
                (2 * l + 1)
                / (2 * math.pi)
                * math.factorial(l - m)
                / math.factorial(l + m)
            )
            row[l + m] = f * Q[(l, m)] * C[m]
            row[l - m] = f * Q[(l, m)] * S[m]
        out.extend(row)
    return jnp.stack(out, axis=-1)


def neighbour_weight(spec: SoapSpec, r2: jax.Array) -> jax.Array:
    """Weight ``w(r)`` of a neighbour at squared distance ``r2`` (Å^2); 0 beyond."""
    r = jnp.sqrt(jnp.maximum(r2, 1e-30))
    inside = r2 <= spec.neighbour_cutoff**2
    if spec.weighting == "none":
        return jnp.where(inside, 1.0, 0.0)
    if spec.weighting == "poly":
        x = jnp.minimum(r / spec.poly_r0, 1.0)
        return jnp.where(
            inside, spec.poly_c * (1 + 2 * x**3 - 3 * x**2) ** spec.poly_m, 0.0
        )
    r_in = spec.cutoff - spec.cutoff_transition_width
    x = jnp.clip((r - r_in) / spec.cutoff_transition_width, 0.0, 1.0)
    return jnp.where(inside, 0.5 * (1.0 + jnp.cos(jnp.pi * x)), 0.0)


def radial(spec: SoapSpec, r2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``g_ln = sum_k B_lnk exp(-alpha'_lk r^2)`` and ``dg_ln / d(r^2)``, each
    ``(..., L+1, N)``, of ``r2 (...)`` in Å^2: one product with the block-diagonal
    ``constants.radial`` (a batched product per l is slower on the CPU)."""
    k = spec.constants
    alpha = k.alpha_p.reshape((1,) * r2.ndim + (-1,))
    E = jnp.exp(-alpha * r2[..., None])  # (..., (L+1) K)
    g = (E @ k.radial).reshape(*r2.shape, 2, spec.l_max + 1, spec.n_max)
    return g[..., 0, :, :], g[..., 1, :, :]


def pair_basis(spec: SoapSpec, D: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted radial functions ``[w g]_ln`` and their r^2-derivatives ``(..., L+1,
    N)``, and the solid harmonics ``R_lm (..., (L+1)^2)``, of pair vectors ``D (...,
    3)`` Å."""
    r2 = jnp.sum(D * D, axis=-1)
    w, dw = jax.jvp(lambda x: neighbour_weight(spec, x), (r2,), (jnp.ones_like(r2),))
    g, dg = radial(spec, r2)
    w, dw = w[..., None, None], dw[..., None, None]
    return w * g, dw * g + w * dg, solid_harmonics(D, spec.l_max)


def pair_expansion(spec: SoapSpec, D: jax.Array) -> jax.Array:
    """Density coefficients ``(..., N, (L+1)^2)`` of neighbours at ``D (..., 3)`` Å."""
    wg, _, R = pair_basis(spec, D)
    # per-l outer products, concatenated: a gather of radial[l(lm)] would become a
    # slow scatter-add in reverse passes, and a one-hot matmul is 3x slower here
    blocks = [
        wg[..., l, :, None] * R[..., None, l * l : (l + 1) ** 2]
        for l in range(spec.l_max + 1)
    ]
    return jnp.concatenate(blocks, axis=-1)


class CentreBasis(NamedTuple):
    """The pairs of C centres, K slots each, as the mean's passes use them."""

    W: jax.Array  # (C, K, 2, S, L+1, N) [w g] and its r^2-derivative, own species only
    R: jax.Array  # (C, K, (L+1)^2) solid harmonics R_lm(D)


def centre_basis(
    spec: SoapSpec, D: jax.Array, species: jax.Array, mask: jax.Array
) -> CentreBasis:
    """``CentreBasis`` of pair vectors ``D (C, K, 3)`` Å, the neighbours' species
    indices ``species (C, K)`` and ``mask (C, K)`` (0: a padding slot, no
    contribution)."""
    C, K = mask.shape
    S, N, L1 = len(spec.species), spec.n_max, spec.l_max + 1
    wg, dwg, R = pair_basis(spec, D.reshape(C * K, 3))
    pick = jax.nn.one_hot(species, S, dtype=D.dtype) * mask[..., None]  # (C, K, S)
    W = jnp.stack([wg, dwg], axis=1).reshape(C, K, 2, 1, L1, N)
    return CentreBasis(W * pick[:, :, None, :, None, None], R.reshape(C, K, -1))


def centre_coefficients(
    spec: SoapSpec, basis: CentreBasis, centre_species: jax.Array
) -> jax.Array:
    """Density coefficients ``c (C, S, N, (L+1)^2)`` of C centres from all their
    pairs' ``basis`` and their species indices ``(C,)`` (the self term): per l, one
    product of each centre's pairs (``coefficients`` does the same for pairs in any
    order, by scatter)."""
    W, R = basis.W[:, :, 0], basis.R
    c = jnp.concatenate(
        [
            jnp.einsum("cksn,ckm->csnm", W[..., l, :], R[..., l * l : (l + 1) ** 2])
            for l in range(spec.l_max + 1)
        ],
        axis=-1,
    )
    return _add_self(spec, c, centre_species)


def pair_gradient(
    spec: SoapSpec, D: jax.Array, basis: CentreBasis, u: jax.Array
) -> jax.Array:
    """Force contributions ``d/dD_p sum_{s,n,lm} u[i, s, n, lm] phi_s(D_p)[n, lm]``
    ``(C, K, 3)`` of the pairs of C centres i, K pairs each: ``D (C, K, 3)`` Å pair
    vectors, their ``basis`` (``centre_basis``; padding slots contribute 0) and
    ``u (C, S, N, (L+1)^2)`` the cotangent of each centre's density coefficients.
    Analytic, with ``phi = [w g]_ln(r^2) R_lm(D)``::

        dD = 2 D sum_ln [w g]'_ln (u R)_ln + sum_lm (sum_n [w g]_ln u_nlm) dR_lm/dD

    The sums over n are, per l, one product of each centre's pairs with that
    centre's own ``u`` (no per-pair copies of ``u``); the last sum is one reverse
    pass through the solid harmonics (no (P, (L+1)^2, 3) Jacobian).
    """
    W, R = basis
    radial_part, Wu = 0.0, []
    for l in range(spec.l_max + 1):
        sl = slice(l * l, (l + 1) ** 2)
        Y = jnp.einsum("ckxsn,csnm->ckxm", W[..., l, :], u[..., sl])  # (C,K,2,2l+1)
        Wu.append(Y[:, :, 0])
        radial_part = radial_part + jnp.sum(Y[:, :, 1] * R[..., sl], axis=-1)
    _, back = jax.vjp(lambda d: solid_harmonics(d, spec.l_max), D)
    (angular,) = back(jnp.concatenate(Wu, axis=-1))
    return 2.0 * D * radial_part[..., None] + angular


def coefficients(
    spec: SoapSpec,
    D: jax.Array,
    centre: jax.Array,
    neighbour_species: jax.Array,
    mask: jax.Array,
    centre_species: jax.Array,
) -> jax.Array:
    """Density coefficients ``c (n_atoms, S, N, (L+1)^2)`` of every centre.

    Args:
        D: (n_pairs, 3) Å pair vectors (padded pairs anywhere, masked).
        centre: (n_pairs,) int centre index of each pair.
        neighbour_species: (n_pairs,) int species index (0..S-1) of the neighbour.
        mask: (n_pairs,) 1.0 for real pairs, 0.0 for padding.
        centre_species: (n_atoms,) int species index of each centre (self term).
    """
    n_atoms, S = centre_species.shape[0], len(spec.species)

    def add_block(c, blk):  # blocks of pairs: memory O(block N LM), not O(P N LM)
        phi = pair_expansion(spec, blk["D"]) * blk["mask"][:, None, None]
        return c.at[blk["segment"]].add(phi), None

    segment = centre * S + neighbour_species
    blocks = blocked({"D": D, "segment": segment, "mask": mask})
    zeros = jnp.zeros((n_atoms * S, spec.n_max, (spec.l_max + 1) ** 2), D.dtype)
    c, _ = jax.lax.scan(add_block, zeros, blocks)
    return _add_self(spec, c.reshape(n_atoms, S, spec.n_max, -1), centre_species)


def _add_self(spec: SoapSpec, c: jax.Array, centre_species: jax.Array) -> jax.Array:
    """``c (A, S, N, LM)`` plus each centre's own density ``w(0) g_n0 R_00`` in its
    species block."""
    onehot = jax.nn.one_hot(centre_species, len(spec.species), dtype=c.dtype)
    self_c = jnp.asarray(spec.constants.self_c)
    return c.at[:, :, :, 0].add(onehot[:, :, None] * self_c[None, None, :])


PAIR_BLOCK = 512  # pairs per block of the per-pair work of a batch (memory knob)


def blocked(
    arrays: dict[str, jax.Array], size: int = PAIR_BLOCK
) -> dict[str, jax.Array]:
    """Arrays ``(n, ...)`` (per pair, or per centre) as ``(n_blocks, size, ...)`` for a
    ``lax.scan`` or ``lax.map`` (one block of all when there are fewer), the last
    padded with 0 (masks, indices, cotangents) except ``D = (1, 1, 1)`` Å, which
    keeps padded pairs away from r = 0."""
    n = next(iter(arrays.values())).shape[0]
    size = max(1, min(size, n))
    n_blocks = -(-n // size)
    pad = n_blocks * size - n
    return {
        k: jnp.pad(
            v, [(0, pad)] + [(0, 0)] * (v.ndim - 1), constant_values=k == "D"
        ).reshape(n_blocks, size, *v.shape[1:])
        for k, v in arrays.items()
    }


def covered(spec: SoapSpec, b: dict) -> dict:
    """The batch ``b`` as the term sees it: with a central species ``spec.centre``,
    the other atoms' ``atom_mask`` is 0, so their environments add no local energy,
    row or prior variance while their densities still count in their neighbours'
    SOAP; ``b`` itself for a term over every species."""
    if spec.centre_index is None:
        return b
    own = b["species"] == spec.centre_index
    return {**b, "atom_mask": b["atom_mask"] * own}


def power_spectrum(spec: SoapSpec, c: jax.Array) -> jax.Array:
    """SOAP ``p (..., n_features)`` from coefficients ``c (..., S, N, (L+1)^2)``."""
    blocks = []
    for l in range(spec.l_max + 1):
        cl = c[..., l * l : (l + 1) * (l + 1)]
        pref = np.pi * math.sqrt(8.0 / (2 * l + 1))
        blocks.append(pref * jnp.einsum("...axm,...bym->...abxy", cl, cl))
    P = jnp.stack(blocks, axis=-3)  # (..., S, S, L+1, N, N)
    return P.reshape(*P.shape[:-5], -1)[..., spec.constants.layout]


def soap(
    spec: SoapSpec,
    D: jax.Array,
    centre: jax.Array,
    neighbour_species: jax.Array,
    mask: jax.Array,
    centre_species: jax.Array,
) -> jax.Array:
    """SOAP ``(n_atoms, n_features)`` of every atom (arguments as ``coefficients``)."""
    return power_spectrum(
        spec, coefficients(spec, D, centre, neighbour_species, mask, centre_species)
    )


def pair_derivatives(
    spec: SoapSpec,
    c: jax.Array,
    D: jax.Array,
    centre: jax.Array,
    neighbour_species: jax.Array,
    mask: jax.Array,
    slices: bool = False,
) -> jax.Array:
    """``dP (n_pairs, 3, F) = d p_centre(p) / d D_p`` given the coefficients ``c``.

    With ``phi = [w g]_ln(r^2) R_lm(D)`` and ``p_lnn' ~ sum_m c_nlm c_n'lm``, the
    tangent of pair p along direction k is, for its neighbour's species block::

        X_k[b, l, n, n'] = pref_l sum_m dphi_k[n, lm] c_i[b, n', lm]
                         = pref_l (2 D_k [w g]'_ln (c_i R)_bln'
                                   + [w g]_ln (c_i dR_k)_bln')

    and ``dp^{ab} = [a = s_j] X[b] + [b = s_j] X[a]^T``. ``[w g]'`` comes from
    ``pair_basis`` and ``dR/dD`` from forward mode; no per-pair ``dphi`` or
    (N, N, 3, F) array is formed. Works on any subset (block) of the pairs.

    dscribe's layout is one gather from all blocks, or with ``slices`` a concatenation
    of slices (row n of each l's upper triangle, n' >= n): a third faster on all pairs
    of a cell at once (the std), but a larger program to compile (the fit's scan over
    blocks of pairs keeps the gather).
    """
    S, L, N = len(spec.species), spec.l_max, spec.n_max
    wg, dwg, R = pair_basis(spec, D)
    dR = jax.vmap(jax.jacfwd(lambda d: solid_harmonics(d, L)))(D)  # (P, LM, 3)
    RdR = jnp.concatenate([R[:, :, None], dR], axis=-1)  # (P, LM, 4)
    c_i = c[centre]  # (P, S, N, LM)
    P = c_i.shape[0]
    X = []  # per l: (P, 3, S, N, N'), n the neighbour's radial index
    for l in range(L + 1):
        sl = slice(l * l, (l + 1) ** 2)
        # c_i R and c_i dR as one batched product (alone 4x faster than two einsums)
        cRdR = jnp.matmul(c_i[..., sl].reshape(P, S * N, -1), RdR[:, sl])
        cRdR = cRdR.reshape(P, S, N, 4)
        cR = cRdR[..., 0]  # (P, S, N)
        cdR = jnp.moveaxis(cRdR[..., 1:], -1, 1)  # (P, 3, S, N)
        Xl = (
            2.0
            * D[:, :, None, None, None]
            * dwg[:, None, None, l, :, None]
            * cR[:, None, :, None, :]
            + wg[:, None, None, l, :, None] * cdR[:, :, :, None, :]
        )
        pref = np.pi * math.sqrt(8.0 / (2 * l + 1))
        X.append(pref * Xl * mask[:, None, None, None, None])
    own = jax.nn.one_hot(neighbour_species, S, dtype=c.dtype)  # (P, S)
    if not slices:
        X = jnp.stack(X, axis=3)  # (P, 3, S, L+1, N, N)
        full = (
            own[:, None, :, None, None, None, None] * X[:, :, None]
            + own[:, None, None, :, None, None, None]
            * jnp.swapaxes(X, -1, -2)[:, :, :, None]
        )  # (P, 3, S, S, L+1, N, N)
        return full.reshape(*full.shape[:2], -1)[..., spec.constants.layout]
    own = own[:, None, :, None, None]
    parts = []  # dscribe order: species a <= b, l, n, n' (n' >= n if a == b)
    for a in range(S):
        for b in range(a, S):
            for Xl in X:
                blk = own[:, :, a] * Xl[:, :, b] + own[:, :, b] * jnp.swapaxes(
                    Xl[:, :, a], -1, -2
                )  # (P, 3, N, N')
                if a == b:
                    parts.extend(blk[:, :, n, n:] for n in range(N))
                else:
                    parts.append(blk.reshape(*blk.shape[:2], N * N))
    return jnp.concatenate(parts, axis=-1)


def soap_and_pair_derivatives(
    spec: SoapSpec,
    D: jax.Array,
    centre: jax.Array,
    neighbour_species: jax.Array,
    mask: jax.Array,
    centre_species: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """SOAP ``p (n_atoms, F)`` and ``dP (n_pairs, 3, F)`` of every pair."""
    c = coefficients(spec, D, centre, neighbour_species, mask, centre_species)
    dP = pair_derivatives(spec, c, D, centre, neighbour_species, mask)
    return power_spectrum(spec, c), dP
