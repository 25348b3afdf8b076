"""Three-body term (gap_fit's ``angle_3b``, and ``distance_Nb order=3``, with
``covariance_type=ard_se``).

For every centre i and every unordered pair of its neighbours j, k closer than the
cutoff (periodic images included), the triplet descriptor is gap_fit's::

    d = (r_ij + r_ik, (r_ij - r_ik)^2, r_jk)          (symmetric in j <-> k)

and the triplet adds ``u = 2 f_c(r_ij) f_c(r_ik) eps_t(d)`` to the local energy of i.
gap_fit visits both orders (j, k) and (k, j), hence the 2: ``delta`` means what it
means there. ``t`` is the triplet type (centre species, unordered neighbour species),
``f_c`` the cosine cutoff of ``distance_2b`` and ``eps_t`` a GP with the ARD
squared-exponential kernel::

    k(d, d') = delta^2 exp(-sum_a (d_a - d'_a)^2 / (2 theta_a^2))     [t == t']

gap_fit's ``distance_Nb order=3 compact_clusters=T`` is the same term with
``TripletSpec.form = "distances"``: the descriptor is the distances ``r`` themselves,
each triplet counts once (``u = f_c(r_ij) f_c(r_ik) eps(r)``), and the kernel sums
over the 6 orders of the three distances (``k(d, d') = sum_o k_SE(d[o], d')``, every
relabelling of the triangle's atoms; one length, on data of one element).

Sparse points are triplet descriptors; as in ``distance_2b`` the cutoff multiplies
the GP, not the covariance of the sparse points. Everything is a function of each
triplet's distances ``r = (r_ij, r_ik, r_jk)``: ``du/dr_s`` become pair gradients
along ``D_ij``, ``D_ik`` and ``D_ij - D_ik`` (forces and virials).

Prior variances: a quantity linear in the triplet energies is
``sum_t c_t . (eps, grad eps)(d_t)`` with coefficients ``c_t (4,)`` from the geometry;
its prior variance is ``sum_{t,t'} c_t^T K(d_t, d_t') c_t'`` with the (4, 4)
covariance of the GP and its gradient (``_gradient_sums``). Forces sum over each
atom's triplets (``Batch.triplet_touch``), energies and virials over each
configuration's, in tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gapfit.blocks import VOIGT, Mean, Rows, forces_and_virials
from gapfit.distance_2b import THETA_MIN, CutoffSpec, cutoff_function, pair_type
from gapfit.errors import GapfitError
from gapfit.kernels import delta_leaf_pytree
from gapfit.neighbours import Batch, PairTables
from gapfit.soap import blocked
from gapfit.variance import Std

TRIPLET_BLOCK = 512  # triplets per block of the kernel rows (memory and speed)
MEAN_BLOCK = 2048  # triplets per block of the mean
TILE = 256  # triplets per side of a tile of the energy and virial prior double sums
ATOM_BLOCK = 8  # atoms per block of the force prior sums
SAME = 1e-9  # Å (Å^2): triplet descriptors closer than this count as one


FORMS = ("angle", "distances")  # gap_fit's angle_3b; its distance_Nb order=3
# the orders of a triangle's three distances (r_ij, r_ik, r_jk) that relabelling
# its atoms gives: the identity first
ORDERS = ((0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1))


@dataclass(frozen=True)
class TripletSpec(CutoffSpec):
    """3-body settings (``CutoffSpec``; both neighbours inside ``cutoff``);
    ``form``: the descriptor, gap_fit's ``angle_3b`` (``"angle"``) or its
    ``distance_Nb order=3 compact_clusters=T`` (``"distances"``: the triangle's
    three distances, its kernel summed over their 6 orders, each triplet once; data
    of one species)."""

    cutoff: float = 3.0
    cutoff_transition_width: float = 0.5
    form: str = "angle"
    name = "angle_3b"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.form not in FORMS:
            raise GapfitError(
                f"angle_3b form={self.form!r} is not one of {FORMS}; refit."
            )

    @property
    def n_types(self) -> int:
        """Centre species x unordered neighbour-species pairs."""
        S = len(self.species)
        return S * S * (S + 1) // 2

    @property
    def orders(self) -> tuple[tuple[int, int, int], ...]:
        """The orders of the descriptor's components the kernel sums over."""
        return ORDERS if self.form == "distances" else ORDERS[:1]

    @property
    def visits(self) -> int:
        """Times each triplet counts: gap_fit's angle_3b lists (j, k) and (k, j)."""
        return 2 if self.form == "angle" else 1

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.form == "angle":  # as gapfits before the distances form wrote it
            del d["form"]
        return d


@partial(delta_leaf_pytree, static=("theta",))
@dataclass(frozen=True)
class ARDKernel:
    """ARD squared exponential: ``delta`` eV, one length ``theta`` per descriptor
    component (Å, Å^2, Å), for every triplet type or a tuple of one such triple per
    triplet type (gap_fit's ``theta_fac`` measures each type's own)."""

    delta: float = 1.0
    theta: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        array = np.asarray(self.theta, dtype=float)
        theta = (
            tuple(map(tuple, array.tolist()))
            if array.ndim == 2
            else tuple(array.tolist())
        )
        object.__setattr__(self, "theta", theta)
        if not (
            self.delta > 0 and array.shape[-1:] == (3,) and array.ndim <= 2
        ) or not np.all(array > 0):
            raise GapfitError(
                f"angle_3b delta={self.delta} eV and its lengths theta={theta} "
                "(three, or three per triplet type) must all be > 0."
            )

    @property
    def per_type(self) -> bool:
        """Whether the triplet types have lengths of their own (``theta_fac``)."""
        return np.ndim(self.theta) == 2

    def lengths(self, n_types: int) -> np.ndarray:
        """``(n_types, 3)``: the lengths of each triplet type."""
        theta = np.asarray(self.theta, dtype=float)
        if theta.ndim == 2 and len(theta) != n_types:
            raise GapfitError(
                f"angle_3b has lengths for {len(theta)} triplet types, not "
                f"{n_types}; refit."
            )
        return np.broadcast_to(theta, (n_types, 3))

    def inverse_squares(self, spec: TripletSpec, types: jax.Array) -> jax.Array:
        """``(..., 3)`` ``1 / theta^2`` of triplets of ``types``."""
        return jnp.asarray(1.0 / self.lengths(spec.n_types) ** 2)[types]


def triplet_type(s_i, s_j, s_k, n_species: int):
    """Index of (centre species, unordered neighbour species) in 0..n_types-1."""
    return s_i * (n_species * (n_species + 1) // 2) + pair_type(s_j, s_k, n_species)


def descriptor(spec: TripletSpec, r):
    """The descriptor ``(..., 3)`` of distances ``r (..., 3)`` (r_ij, r_ik, r_jk) in
    Å: gap_fit's angle_3b ``(r_ij + r_ik, (r_ij - r_ik)^2, r_jk)``, or the distances
    themselves (``form="distances"``); numpy for numpy input, else JAX."""
    if spec.form == "distances":
        return r
    xp = np if isinstance(r, np.ndarray) else jnp
    return xp.stack(
        [r[..., 0] + r[..., 1], (r[..., 0] - r[..., 1]) ** 2, r[..., 2]], axis=-1
    )


class Triplets(NamedTuple):
    """The triplets of a batch (padded ones masked)."""

    r: jax.Array  # (T, 3) Å: r_ij, r_ik, r_jk (1 where padded)
    unit: jax.Array  # (T, 3, 3): unit vectors of D_ij, D_ik, D_ij - D_ik
    types: jax.Array  # (T,)
    mask: jax.Array  # (T,)
    atoms: jax.Array  # (T, 3) atom indices i, j, k
    pairs: jax.Array  # (T, 2) pair indices ij, ik
    config: jax.Array  # (T,)


def triplets(spec: TripletSpec, b: dict) -> Triplets:
    """Geometry of the triplets of a batch (``b["triplet_pairs"]``)."""
    p, q = b["triplet_pairs"][:, 0], b["triplet_pairs"][:, 1]
    mask = b["pair_mask"][p] * b["pair_mask"][q]
    vecs = jnp.stack([b["D"][p], b["D"][q], b["D"][p] - b["D"][q]], axis=1)
    vecs = jnp.where(mask[:, None, None] > 0, vecs, jnp.eye(3)[None])  # padded: r = 1
    r = jnp.sqrt(jnp.sum(vecs**2, axis=-1))
    s = b["species"]
    centre = b["centre"][p]
    types = triplet_type(
        s[centre],
        b["neighbour_species"][p],
        b["neighbour_species"][q],
        len(spec.species),
    )
    atoms = jnp.stack([centre, b["neighbour"][p], b["neighbour"][q]], axis=1)
    return Triplets(
        r,
        vecs / r[..., None],
        types,
        mask,
        atoms,
        b["triplet_pairs"],
        b["pair_config"][p],
    )


def _envelope(spec: TripletSpec, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``f = v f_c(r_ij) f_c(r_ik)`` ``(T,)`` (``v = spec.visits``) and ``df/dr``
    ``(T, 3)``."""
    fc, dfc = jax.jvp(
        lambda x: cutoff_function(spec, x), (r[:, :2],), (jnp.ones_like(r[:, :2]),)
    )
    v = spec.visits
    f = v * fc[:, 0] * fc[:, 1]
    df = jnp.stack(
        [v * dfc[:, 0] * fc[:, 1], v * fc[:, 0] * dfc[:, 1], jnp.zeros_like(f)], -1
    )
    return f, df


def _jacobian(spec: TripletSpec, r: jax.Array) -> jax.Array:
    """``dd_a / dr_s`` ``(T, 3 [a], 3 [s])`` of the descriptor."""
    if spec.form == "distances":
        return jnp.broadcast_to(jnp.eye(3), (r.shape[0], 3, 3))
    one, zero = jnp.ones_like(r[:, 0]), jnp.zeros_like(r[:, 0])
    two_diff = 2 * (r[:, 0] - r[:, 1])
    return jnp.stack(
        [
            jnp.stack([one, one, zero], -1),
            jnp.stack([two_diff, -two_diff, zero], -1),
            jnp.stack([zero, zero, one], -1),
        ],
        axis=1,
    )


def slope_coefficients(spec: TripletSpec, tri: Triplets) -> jax.Array:
    """``(T, 3 [s], 4)``: ``du/dr_s`` on ``(eps, deps/dd_0..2)`` at each triplet
    (``(df/dr_s, f dd/dr_s)``; 0 for padded triplets)."""
    f, df = _envelope(spec, tri.r)
    J = _jacobian(spec, tri.r)
    c = jnp.concatenate([df[:, :, None], f[:, None, None] * jnp.swapaxes(J, 1, 2)], -1)
    return c * tri.mask[:, None, None]


def _levers(r: jax.Array, unit: jax.Array) -> jax.Array:
    """``dr_s / d strain`` in Voigt order ``(T, 3 [s], 6)``: ``r_s u_k u_l``."""
    return jnp.stack([r * unit[:, :, a] * unit[:, :, b] for a, b in VOIGT], axis=-1)


def _kernel_tile(
    spec: TripletSpec,
    kernel: ARDKernel,
    d: jax.Array,
    types: jax.Array,
    d2: jax.Array,
    types2: jax.Array,
) -> jax.Array:
    """``k (n, m)`` of triplet descriptors (0 across types), the squared scaled
    distance as ``|x|^2 + |x2|^2 - 2 x . x2`` (one matrix product, no (n, m, 3)),
    each side scaled by its type's lengths (equal where types match)."""
    x = d * jnp.sqrt(kernel.inverse_squares(spec, types))
    x2 = d2 * jnp.sqrt(kernel.inverse_squares(spec, types2))
    q = jnp.sum(x**2, 1)[:, None] + jnp.sum(x2**2, 1)[None, :] - 2 * x @ x2.T
    k = kernel.delta**2 * jnp.exp(-0.5 * jnp.maximum(q, 0.0))
    return k * (types[:, None] == types2[None, :])


def _atom_gradients(unit: jax.Array, slopes: jax.Array) -> jax.Array:
    """``dE/dr`` of atoms i, j, k ``(T, 3 [atom], 3 [xyz], M)`` from the distance
    slopes ``(T, 3 [s], M)`` and unit vectors ``(T, 3 [s], 3)``: r_ij moves with
    j - i, r_ik with k - i, r_jk with j - k."""
    g = [unit[:, s, :, None] * slopes[:, s, None, :] for s in range(3)]
    return jnp.stack([-g[0] - g[1], g[0] + g[2], g[1] - g[2]], axis=1)


@partial(jax.jit, static_argnums=0)
def triplet_rows(
    spec: TripletSpec, kernel: ARDKernel, Z_d: jax.Array, Z_t: jax.Array, b: dict
) -> Rows:
    """Kernel rows of energies, forces and virials against sparse triplet
    descriptors ``Z_d (M, 3)`` of types ``Z_t (M,)``, in blocks of
    ``TRIPLET_BLOCK`` triplets (memory O((A + C) M + block M))."""
    tri = triplets(spec, b)
    A, C, M = b["species"].shape[0], b["config_mask"].shape[0], Z_t.shape[0]
    per = {
        "d": descriptor(spec, tri.r),
        "types": tri.types,
        "f": _envelope(spec, tri.r)[0] * tri.mask,
        "c": slope_coefficients(spec, tri),
        "unit": tri.unit,
        "r": tri.r,
        "atoms": tri.atoms,
        "config": tri.config,
    }
    blocks = blocked(per, TRIPLET_BLOCK)  # padding: coefficients 0

    def step(acc, x):
        energy, forces, virial, local = acc
        k_sum, slopes = 0.0, 0.0
        lam = kernel.inverse_squares(spec, x["types"])  # (B, 3)
        for d, c in _orders(spec, x["d"], x["c"]):
            k = _kernel_tile(spec, kernel, d, x["types"], Z_d, Z_t)
            # du/dr_s = k (c_s0 - sum_a c_sa (d_a - z_a) / theta_a^2)
            cl = c[:, :, 1:] * lam[:, None, :]  # (B, 3 [s], 3 [a])
            offset = jnp.einsum("bsa,ba->bs", cl, d)[:, :, None] - jnp.einsum(
                "bsa,ma->bsm", cl, Z_d
            )
            slopes = slopes + k[:, None, :] * (c[:, :, :1] - offset)
            k_sum = k_sum + k
        e = x["f"][:, None] * k_sum  # (B, M)
        grads = _atom_gradients(x["unit"], slopes)  # (B, 3, 3, M) dE/dr
        forces = forces.at[x["atoms"]].add(-grads)
        W = -jnp.einsum("bsv,bsm->bvm", _levers(x["r"], x["unit"]), slopes)
        return (
            energy.at[x["config"]].add(e),
            forces,
            virial.at[x["config"]].add(W),
            local.at[x["atoms"][:, 0]].add(e),
        ), None

    zeros = (
        jnp.zeros((C, M)),
        jnp.zeros((A, 3, M)),
        jnp.zeros((C, 6, M)),
        jnp.zeros((A, M)),
    )
    (energy, forces, virial, local), _ = jax.lax.scan(step, zeros, blocks)
    return Rows(energy, forces, virial, local * b["atom_mask"][:, None])


def _triplet_energies(spec, kernel, Z_d, Z_t, weights, tri) -> tuple[jax.Array, ...]:
    """``u (T,)`` eV and ``du/dr_s (T, 3)`` eV/Å of every triplet, in blocks."""
    per = {
        "d": descriptor(spec, tri.r),
        "types": tri.types,
        "f": _envelope(spec, tri.r)[0] * tri.mask,
        "c": slope_coefficients(spec, tri),
    }
    T = tri.r.shape[0]

    def block(x):
        eps, slopes = 0.0, 0.0
        lam = kernel.inverse_squares(spec, x["types"])  # (B, 3)
        for d, c in _orders(spec, x["d"], x["c"]):
            kw = _kernel_tile(spec, kernel, d, x["types"], Z_d, Z_t) * weights[None, :]
            e = jnp.sum(kw, axis=1)
            grad = (kw @ Z_d - d * e[:, None]) * lam  # d eps / d d
            slopes = slopes + c[:, :, 0] * e[:, None]
            slopes = slopes + jnp.einsum("bsa,ba->bs", c[:, :, 1:], grad)
            eps = eps + e
        return x["f"] * eps, slopes

    u, slopes = jax.lax.map(block, blocked(per, MEAN_BLOCK))
    return u.reshape(-1)[:T], slopes.reshape(-1, 3)[:T]


@partial(jax.jit, static_argnums=0)
def triplet_mean(
    spec: TripletSpec,
    kernel: ARDKernel,
    Z_d: jax.Array,
    Z_t: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> Mean:
    """Local energies (each triplet's to its centre), energies, forces and virials
    of the 3-body term."""
    tri = triplets(spec, b)
    u, slopes = _triplet_energies(spec, kernel, Z_d, Z_t, weights, tri)
    A, C, P = b["species"].shape[0], b["config_mask"].shape[0], b["D"].shape[0]
    # pair gradients dE/dD: D_ij carries r_ij and +r_jk, D_ik carries r_ik and -r_jk
    g = slopes[:, :, None] * tri.unit  # (T, 3, 3)
    t = jax.ops.segment_sum(g[:, 0] + g[:, 2], tri.pairs[:, 0], P)
    t = t + jax.ops.segment_sum(g[:, 1] - g[:, 2], tri.pairs[:, 1], P)
    forces, virial = forces_and_virials(t, b)
    local = jax.ops.segment_sum(u, tri.atoms[:, 0], A) * b["atom_mask"]
    return Mean(local, jax.ops.segment_sum(u, tri.config, C), forces, virial)


def _gradient_sums(
    k: jax.Array,
    lam: jax.Array,
    d: jax.Array,
    c: jax.Array,
    lam2: jax.Array,
    d2: jax.Array,
    c2: jax.Array,
) -> jax.Array:
    """``sum_m c_n^T K(d_n, d2_m) c2_m`` ``(n, K)`` for coefficient sets
    ``c (n, K, 4)``, ``c2 (m, K, 4)`` on ``(eps, grad eps)`` and the kernel block
    ``k (n, m)`` (masked as wanted; 0 across types). With ``L = 1 / theta^2`` of the
    pair's type (``lam (n, 3)`` on the n side, ``lam2 (m, 3)`` on the m side: equal
    where ``k`` is not 0) and ``y = L (d - d2)``::

        K = k [[1, y^T], [-y, diag(L) - y y^T]]

    Every term is a product of a function of n and one of m, so the sum over m is
    one matrix product of the kernel block with 20 columns per set (``k @ F``)."""
    # m side: c0', c', e = L d'.c', c0' d', d'_a c'_b, d' e
    b0, bv = c2[..., 0], c2[..., 1:]  # (m, K), (m, K, 3)
    e = jnp.einsum("ma,mka->mk", d2 * lam2, bv)
    F = jnp.concatenate(
        [
            b0[..., None],
            bv,
            e[..., None],
            b0[..., None] * d2[:, None, :],
            (d2[:, None, :, None] * bv[:, :, None, :]).reshape(*bv.shape[:2], 9),
            d2[:, None, :] * e[..., None],
        ],
        axis=-1,
    )  # (m, K, 20)
    S = (k @ F.reshape(F.shape[0], -1)).reshape(k.shape[0], *F.shape[1:])
    A0, Ac, Ae = S[..., 0], S[..., 1:4], S[..., 4]
    Acd, Adc, Ade = S[..., 5:8], S[..., 8:17].reshape(*S.shape[:2], 3, 3), S[..., 17:]
    # n side: c0, u = L c, v = L d, u.d
    a0, u = c[..., 0], c[..., 1:] * lam[:, None, :]  # (n, K), (n, K, 3)
    v = (d * lam)[:, None, :]  # (n, 1, 3)
    ud = jnp.einsum("nka,na->nk", u, d)
    vAc = jnp.sum(v * Ac, axis=-1)
    return (
        a0 * A0
        + a0 * (vAc - Ae)
        - ud * A0
        + jnp.sum(u * (Acd + Ac - Ade), axis=-1)
        - ud * vAc
        + ud * Ae
        + jnp.einsum("nka,nb,nkab->nk", u, v[:, 0], Adc)
    )


def _force_coefficients(
    spec: TripletSpec, tri: Triplets, touch: jax.Array
) -> jax.Array:
    """For each atom's triplets ``touch (A, W)``: the coefficients
    ``(A, W, 3 [F_x, F_y, F_z], 4)`` of the atom's force."""
    A = touch.shape[0]
    c = slope_coefficients(spec, tri)[touch]  # (A, W, 3 [s], 4)
    atoms, unit = tri.atoms[touch], tri.unit[touch]  # (A, W, 3), (A, W, 3 [s], 3)
    me = (atoms == jnp.arange(A)[:, None, None]).astype(c.dtype)  # roles i, j, k
    # d r_s / d r_a: i: -u_ij, -u_ik, 0; j: u_ij, 0, u_jk; k: 0, u_ik, -u_jk
    sign = jnp.array([[-1.0, -1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, -1.0]])
    G = jnp.einsum("awr,rs,awsx->awsx", me, sign, unit)  # (A, W, 3 [s], 3 [xyz])
    return -jnp.einsum("awsx,awsc->awxc", G, c)  # F = -dE/dr_a


@partial(jax.jit, static_argnums=(0, 4))
def triplet_priors(
    spec: TripletSpec, kernel: ARDKernel, b: dict, tables: PairTables, forces: bool
) -> Std:
    """Prior variances of local energies ``(A,)``, energies ``(C,)`` and, with
    ``forces``, forces ``(A, 3)`` and virials ``(C, 6)`` of the 3-body term (eV^2,
    eV^2/Å^2)."""
    del tables
    tri = triplets(spec, b)
    A, C = b["species"].shape[0], b["config_mask"].shape[0]
    d = descriptor(spec, tri.r)
    f = _envelope(spec, tri.r)[0] * tri.mask
    # energies, local energies and virials: double sums over each configuration's
    # triplets in tiles (t, u >= t), off-diagonal tiles counted twice
    per = {"d": d, "t": tri.types, "f": f, "config": tri.config, "i": tri.atoms[:, 0]}
    if forces:
        levers = _levers(tri.r, tri.unit)  # (T, 3 [s], 6)
        per["c"] = -jnp.einsum("tsv,tsc->tvc", levers, slope_coefficients(spec, tri))
    tiles = blocked(per, TILE)  # padding: coefficients 0
    rows, cols = np.triu_indices(len(tiles["d"]))

    def tile(tu):
        x, y = ({k: v[i] for k, v in tiles.items()} for i in tu)
        same_config = x["config"][:, None] == y["config"][None, :]
        k, grads = 0.0, 0.0
        lam_x, lam_y = (kernel.inverse_squares(spec, z["t"]) for z in (x, y))
        for d, c in _orders(spec, x["d"], x.get("c")):
            k_o = _kernel_tile(spec, kernel, d, x["t"], y["d"], y["t"]) * same_config
            if forces:
                grads = grads + _gradient_sums(k_o, lam_x, d, c, lam_y, y["d"], y["c"])
            k = k + k_o
        same_centre = x["i"][:, None] == y["i"][None, :]
        out = [x["f"] * (k @ y["f"]), x["f"] * ((k * same_centre) @ y["f"])]
        if forces:
            out.append(grads)
        twice = jnp.where(tu[0] == tu[1], 1.0, 2.0)
        return [twice * o for o in out]

    sums = jax.lax.map(tile, (jnp.asarray(rows), jnp.asarray(cols)))
    config, centre = tiles["config"][rows].ravel(), tiles["i"][rows].ravel()
    energy = jax.ops.segment_sum(sums[0].ravel(), config, C)
    local = jax.ops.segment_sum(sums[1].ravel(), centre, A) * b["atom_mask"]
    if not forces:
        return Std(local, energy, None, None)
    virial = jax.ops.segment_sum(sums[2].reshape(-1, 6), config, C)
    # forces: double sums over each atom's triplets
    touch = b["triplet_touch"]
    per_atom = blocked(
        {
            "d": d[touch],
            "t": tri.types[touch],
            "c": _force_coefficients(spec, tri, touch),
        },
        ATOM_BLOCK,
    )  # padded atoms: coefficients 0

    def atom_sums(x):
        def one(d, t, c):
            total = 0.0
            lam = kernel.inverse_squares(spec, t)
            for d_o, c_o in _orders(spec, d, c):
                k = _kernel_tile(spec, kernel, d_o, t, d, t)
                total = total + _gradient_sums(k, lam, d_o, c_o, lam, d, c)
            return jnp.sum(total, axis=0)

        return jax.vmap(one)(x["d"], x["t"], x["c"])

    F = jax.lax.map(atom_sums, per_atom).reshape(-1, 3)[:A] * b["atom_mask"][:, None]
    return Std(local, energy, F, virial)


@partial(jax.jit, static_argnums=0)
def triplet_mean_and_energy_rows(
    spec: TripletSpec,
    kernel: ARDKernel,
    Z_d: jax.Array,
    Z_t: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> tuple[Mean, Rows, Std]:
    """``triplet_mean``, and the kernel rows and prior variances of local energies
    and energies only (forces and virials None)."""
    mean = triplet_mean(spec, kernel, Z_d, Z_t, weights, b, tables)
    rows = triplet_rows(spec, kernel, Z_d, Z_t, b)
    priors = triplet_priors(spec, kernel, b, tables, False)
    return mean, rows._replace(forces=None, virial=None), priors


def triplet_kernel_block(
    spec: TripletSpec,
    kernel: ARDKernel,
    d: jax.Array,
    t: jax.Array,
    d2: jax.Array,
    t2: jax.Array,
) -> jax.Array:
    """``K (n, m)`` of triplet descriptors (no cutoff; 0 across types), summed over
    ``spec.orders``."""
    return sum(
        _kernel_tile(spec, kernel, d_o, t, d2, t2) for d_o, _ in _orders(spec, d)
    )


def _orders(
    spec: TripletSpec, d: jax.Array, c: jax.Array | None = None
) -> list[tuple[jax.Array, jax.Array | None]]:
    """``(d, c)`` with the descriptor's components ``d (n, 3)`` and the coefficients'
    on them (``c (n, ..., 4)``: on ``(eps, grad eps)``) put in each order the kernel
    sums over (``spec.orders``): ``k(d, d') = sum_o k_SE(d[o], d')``."""
    if len(spec.orders) == 1:  # the identity
        return [(d, c)]
    out = []
    for o in spec.orders:
        cols = (0, *(1 + a for a in o))
        out.append((d[:, list(o)], None if c is None else c[..., list(cols)]))
    return out


# ---- sparse points ---------------------------------------------------------------
def batch_descriptors(spec: TripletSpec, batch: Batch) -> tuple[np.ndarray, ...]:
    """Descriptors ``(n, 3)`` and types ``(n,)`` of the real triplets of a batch."""
    p, q = batch.triplet_pairs[:, 0], batch.triplet_pairs[:, 1]
    real = (batch.pair_mask[p] * batch.pair_mask[q]) > 0
    p, q = p[real], q[real]
    D_p, D_q = batch.D[p], batch.D[q]
    r = np.linalg.norm(np.stack([D_p, D_q, D_p - D_q], 1), axis=-1)
    d = descriptor(spec, r)
    s = batch.species
    types = triplet_type(
        s[batch.centre[p]],
        batch.neighbour_species[p],
        batch.neighbour_species[q],
        len(spec.species),
    )
    return d, types.astype(np.int64)


def theta_from_factor(
    spec: TripletSpec, d: np.ndarray, types: np.ndarray, factor: float
) -> tuple:
    """gap_fit's ``theta_fac``: each triplet type's length of each component is
    ``factor`` times that component's range over the type's triplets ``d (n, 3)``
    (1 where that is below ``THETA_MIN`` or the type has none); the distances form
    averages each type's three (gap_fit symmetrises them over the orders it sums).
    One triple when every type's is the same."""
    theta = np.ones((spec.n_types, 3))
    for t in np.unique(types):
        span = np.ptp(d[types == t], axis=0) * factor
        theta[t] = np.where(span >= THETA_MIN, span, 1.0)
        if spec.form == "distances":
            theta[t] = theta[t].mean()
    if (theta == theta[0]).all():
        return tuple(theta[0])
    return tuple(map(tuple, theta))


def distinct_triplets(d: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, ...]:
    """The first of each set of triplets equal to 1e-10 (in type and descriptor
    ``d (n, 3)``), in their order: what the sparse points and ``theta_fac`` lengths
    are chosen from. The distinct triplets of parts of the data, concatenated in
    order, have the distinct triplets of the whole."""
    keys = np.concatenate([types[:, None].astype(float), np.round(d, 10)], axis=1)
    first = np.sort(np.unique(keys, axis=0, return_index=True)[1])
    return d[first], types[first]


SPARSE_METHODS_3B = ("uniform", "random")


def triplet_sparse_points(
    d: np.ndarray, types: np.ndarray, n_sparse: int, method: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_sparse`` descriptors per triplet type (all when fewer) among the
    ``distinct_triplets`` ``d (n, 3)``, ``types``. First the triplets of smallest
    and largest value of each component, so that the points span the data; then
    ``uniform``: one from each occupied cell of a grid of about ``n_sparse`` cells
    over the type's range (gap_fit's ``select_uniform``), then random ones;
    ``random``: random ones. Seeded per type."""
    if len(d) == 0:
        raise GapfitError(
            "angle_3b: no atom has two neighbours inside the 3-body cutoff in the "
            "training data; raise its cutoff or drop the 3-body term."
        )
    Z_d, Z_t = [], []
    for t in np.unique(types):
        x = np.unique(d[types == t], axis=0)  # sorted: draws ignore the data order
        rng = np.random.default_rng([seed, int(t)])
        m = min(n_sparse, len(x))
        ends = np.unique(np.concatenate([x.argmin(axis=0), x.argmax(axis=0)]))
        order = (
            _grid_order(x, m, rng) if method == "uniform" else rng.permutation(len(x))
        )
        order = np.concatenate([ends, order[~np.isin(order, ends)]])
        Z_d.append(x[np.sort(order[:m])])
        Z_t.append(np.full(m, t, np.int64))
    return np.concatenate(Z_d), np.concatenate(Z_t)


def _grid_order(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Every row index of ``x (n, 3)``: first the first row of each occupied cell of
    a ``ceil(m^(1/3))``-per-side grid over their range (in random order), then the
    others in random order."""
    n_grid = max(int(np.ceil(m ** (1 / 3) - 1e-9)), 1)
    lo, span = x.min(axis=0), np.ptp(x, axis=0)
    cell = np.rint((x - lo) / np.where(span > 0, span, 1) * (n_grid - 1)).astype(int)
    _, first = np.unique(np.ravel_multi_index(cell.T, (n_grid,) * 3), return_index=True)
    rest = np.setdiff1d(np.arange(len(x)), first)
    return np.concatenate([rng.permutation(first), rng.permutation(rest)])
