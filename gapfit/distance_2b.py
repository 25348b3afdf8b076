"""Two-body term (gap_fit's ``distance_2b``, and ``distance_Nb order=2``, with
``covariance_type=ard_se``).

Every pair i-j (periodic images included) adds the energy ``u(r) = v f_c(r) eps_t(r)``
shared half to each atom, where ``t`` is the unordered species pair, ``f_c`` the
cosine cutoff (1 below ``cutoff - width``, 0 beyond ``cutoff``), ``v`` the number of
times gap_fit's descriptor visits the pair (``PairSpec.visits``: 2 for ``distance_2b``,
which lists i-j and j-i) and ``eps_t`` a GP with the squared-exponential kernel::

    k(r, r') = n_t delta^2 exp(-(r - r')^2 / (2 theta^2))     [t == t']

``n_t`` is 1, or 2 for a pair of one species in a term that sums its kernel over the
orders of same-species atoms (``PairSpec.permutations``, gap_fit's ``distance_Nb``).
So ``delta`` means what it means in gap_fit.

Sparse points are distances ``z_m`` (uniform over the observed range per pair type),
so ``u(r) = v f_c(r) sum_m w_m k(r, z_m)``; the cutoff multiplies the GP rather than
the covariance of the sparse points, which keeps ``K_mm`` well conditioned near the
cutoff. Forces and virials follow from ``du/dD_p = u'(r) D_p / r``
(``blocks.forces_and_virials``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from gapfit.blocks import VOIGT, Mean, Rows, forces_and_virials
from gapfit.errors import GapfitError
from gapfit.kernels import delta_leaf_pytree
from gapfit.neighbours import PairTables
from gapfit.soap import blocked
from gapfit.variance import Std


@dataclass(frozen=True)
class CutoffSpec:
    """Settings of a term summed over neighbours: sorted ``species``, the cosine
    ``cutoff`` and its transition width (Å); ``name`` is the term's, for errors."""

    species: tuple[int, ...]
    cutoff: float = 5.0
    cutoff_transition_width: float = 1.0
    name = "distance_2b"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "species", tuple(sorted({int(z) for z in self.species}))
        )
        if not (0 < self.cutoff_transition_width <= self.cutoff):
            raise GapfitError(
                f"{self.name} cutoff_transition_width={self.cutoff_transition_width}"
                f" Å must lie in (0, cutoff={self.cutoff}]."
            )

    @property
    def neighbour_cutoff(self) -> float:
        return self.cutoff

    def to_dict(self) -> dict:
        d = asdict(self)
        d["species"] = list(self.species)
        return d


@dataclass(frozen=True)
class PairSpec(CutoffSpec):
    """2-body settings (``CutoffSpec``); ``pair``: the atomic numbers ``(Z1, Z2)``
    of the one species pair the term covers (gap_fit's ``add_species=F``), ``()``
    for every pair, each apart; ``visits``: times each pair counts in the energy
    (gap_fit's ``distance_2b`` and ``distance_Nb compact_clusters=T`` visit i-j and
    j-i: 2; ``compact_clusters=F``: 1); ``permutations``: the kernel of a pair of one
    species is summed over its two orders (``distance_Nb``: twice ``delta^2``)."""

    pair: tuple[int, ...] = ()
    visits: int = 2
    permutations: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "pair", tuple(sorted(int(z) for z in self.pair)))
        if self.pair and (
            len(self.pair) != 2 or not set(self.pair) <= set(self.species)
        ):
            raise GapfitError(
                f"distance_2b pair {list(self.pair)} is not two of its species "
                f"{list(self.species)}."
            )
        if self.visits not in (1, 2) or not isinstance(self.permutations, bool):
            raise GapfitError(
                f"distance_2b visits={self.visits!r} (1 or 2) and permutations="
                f"{self.permutations!r} (true or false) are not valid; refit."
            )

    @property
    def n_types(self) -> int:
        """Unordered species pairs."""
        S = len(self.species)
        return S * (S + 1) // 2

    @property
    def covered_type(self) -> int | None:
        """The pair type (``pair_type``) of ``pair``, None for every type."""
        if not self.pair:
            return None
        a, b = (self.species.index(z) for z in self.pair)
        return int(pair_type(a, b, len(self.species)))

    def type_variance(self) -> np.ndarray:
        """``(n_types,)`` the factor ``n_t`` of each pair type's kernel: 2 for a pair
        of one species with ``permutations``, else 1."""
        S = len(self.species)
        n = np.ones(self.n_types)
        if self.permutations:
            n[pair_type(np.arange(S), np.arange(S), S)] = 2.0
        return n

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.pair:
            d["pair"] = list(self.pair)
        else:  # as gapfits before per-pair terms wrote it
            del d["pair"]
        if not self.permutations:
            del d["permutations"]
        return d


@partial(delta_leaf_pytree, static=("theta",))
@dataclass(frozen=True)
class SEKernel:
    """Squared-exponential kernel: ``delta`` in eV, length scale ``theta`` in Å, one
    for every pair type or a tuple of one per pair type (gap_fit's ``theta_fac``
    measures each type's own)."""

    delta: float = 1.0
    theta: float | tuple[float, ...] = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.theta, list | tuple | np.ndarray):
            object.__setattr__(self, "theta", tuple(float(t) for t in self.theta))
        else:
            object.__setattr__(self, "theta", float(self.theta))
        if not (self.delta > 0 and np.all(np.asarray(self.theta) > 0)):
            raise GapfitError(
                f"distance_2b delta={self.delta} eV and theta={self.theta} Å "
                "must all be > 0."
            )

    @property
    def per_type(self) -> bool:
        """Whether the pair types have lengths of their own (``theta_fac``)."""
        return isinstance(self.theta, tuple)

    def lengths(self, n_types: int) -> np.ndarray:
        """``(n_types,)`` Å: the length scale of each pair type."""
        theta = np.asarray(self.theta, dtype=float)
        if theta.ndim and theta.shape != (n_types,):
            raise GapfitError(
                f"distance_2b has {theta.size} length scales for {n_types} pair "
                "types; refit."
            )
        return np.broadcast_to(theta, (n_types,))


def pair_type(s_i, s_j, n_species: int):
    """Index of the unordered species pair (a <= b) in 0..S(S+1)/2-1 (numpy or JAX
    integer arrays)."""
    a = (s_i + s_j - abs(s_i - s_j)) // 2  # min, written for numpy and jax alike
    b = s_i + s_j - a
    return a * n_species - a * (a - 1) // 2 + (b - a)


def cutoff_function(spec: PairSpec, r: jax.Array) -> jax.Array:
    """Cosine cutoff: 1 below ``cutoff - width``, 0 beyond ``cutoff``."""
    x = (r - spec.cutoff + spec.cutoff_transition_width) / spec.cutoff_transition_width
    return 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(x, 0.0, 1.0)))


def _cutoff_and_slope(spec: PairSpec, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cutoff function ``f(r)`` and its slope ``f'(r)`` (1/Å), elementwise."""
    return jax.jvp(lambda x: cutoff_function(spec, x), (r,), (jnp.ones_like(r),))


def _covariances(
    spec: PairSpec,
    kernel: SEKernel,
    r: jax.Array,
    r2: jax.Array,
    fc: tuple,
    fc2: tuple,
    types: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Prior covariance of the pair energies ``u(r)``, ``u(r2)`` of one pair type
    ``types`` and its mixed derivative ``d^2 / dr dr2`` (eV^2/Å^2), broadcasting ``r``
    against ``r2``; ``fc``, ``fc2``: their ``_cutoff_and_slope`` (evaluated once per
    distance, not per element). With ``g = v^2 n_t delta^2 exp(-x^2 / 2)``,
    ``x = (r - r2) / theta_t``::

        cov = f f2 g
        d2  = g [f' f2' + (f' f2 - f f2') x / theta + f f2 (1 - x^2) / theta^2]
    """
    (f, df), (f2, df2) = fc, fc2
    theta = jnp.asarray(kernel.lengths(spec.n_types))[types]
    x = (r - r2) / theta
    scale = spec.visits**2 * jnp.asarray(spec.type_variance())[types]
    g = scale * kernel.delta**2 * jnp.exp(-0.5 * x**2)
    cov = f * f2 * g
    d2 = g * (
        df * df2 + (df * f2 - f * df2) * x / theta + f * f2 * (1.0 - x**2) / theta**2
    )
    return cov, d2


def _geometry(b: dict, n_species: int) -> tuple[jax.Array, ...]:
    """Distances ``(P,)``, unit vectors ``(P, 3)`` and pair types ``(P,)``."""
    r = jnp.sqrt(jnp.sum(b["D"] ** 2, axis=1))
    types = pair_type(b["species"][b["centre"]], b["neighbour_species"], n_species)
    return r, b["D"] / r[:, None], types


def _covered(spec: PairSpec, b: dict) -> dict:
    """The batch as the term sees it: with a species ``pair``, the other pairs'
    ``pair_mask`` is 0; ``b`` itself for a term over every pair."""
    if spec.covered_type is None:
        return b
    types = pair_type(
        b["species"][b["centre"]], b["neighbour_species"], len(spec.species)
    )
    return {**b, "pair_mask": b["pair_mask"] * (types == spec.covered_type)}


def _features(spec, kernel, Z_r, Z_t, r, types) -> jax.Array:
    """``(P, M)``: ``v f_c(r_p) k(r_p, z_m)`` (``k`` of ``pair_kernel_block``)."""
    k = pair_kernel_block(spec, kernel, r, types, Z_r, Z_t)
    return spec.visits * cutoff_function(spec, r)[:, None] * k


@partial(jax.jit, static_argnums=0)
def pair_rows(
    spec: PairSpec, kernel: SEKernel, Z_r: jax.Array, Z_t: jax.Array, b: dict
) -> Rows:
    """Kernel rows of energies, forces and virials against sparse distances ``Z_r (M,)``
    Å of pair types ``Z_t (M,)``."""
    b = _covered(spec, b)
    r, D_hat, types = _geometry(b, len(spec.species))
    weight = (b["canonical"] * b["pair_mask"])[:, None]
    phi, dphi = jax.jvp(
        lambda r: _features(spec, kernel, Z_r, Z_t, r, types), (r,), (jnp.ones_like(r),)
    )
    phi, dphi = phi * weight, dphi * weight  # (P, M)
    A, C = b["species"].shape[0], b["config_mask"].shape[0]
    local = 0.5 * (
        jax.ops.segment_sum(phi, b["centre"], A)
        + jax.ops.segment_sum(phi, b["neighbour"], A)
    )
    energy = jax.ops.segment_sum(phi, b["pair_config"], C)
    forces, virial = forces_and_virials(D_hat[:, :, None] * dphi[:, None, :], b)
    return Rows(energy, forces, virial, local * b["atom_mask"][:, None])


@partial(jax.jit, static_argnums=0)
def pair_mean(
    spec: PairSpec,
    kernel: SEKernel,
    Z_r: jax.Array,
    Z_t: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> Mean:
    """Local energies, energies, forces and virials of the 2-body term (a sum over
    the pairs: the per-atom ``tables`` of the SOAP mean are not needed)."""
    b = _covered(spec, b)
    r, D_hat, types = _geometry(b, len(spec.species))
    weight = b["canonical"] * b["pair_mask"]
    u, du = jax.jvp(
        lambda r: _features(spec, kernel, Z_r, Z_t, r, types) @ weights,
        (r,),
        (jnp.ones_like(r),),
    )
    u, du = u * weight, du * weight  # (P,) eV, eV/Å
    A, C = b["species"].shape[0], b["config_mask"].shape[0]
    local = 0.5 * (
        jax.ops.segment_sum(u, b["centre"], A)
        + jax.ops.segment_sum(u, b["neighbour"], A)
    )
    forces, virial = forces_and_virials(D_hat * du[:, None], b)
    return Mean(
        local * b["atom_mask"],
        jax.ops.segment_sum(u, b["pair_config"], C),
        forces,
        virial,
    )


TILE = 256  # pairs per side of a tile of the energy and virial prior double sums


@partial(jax.jit, static_argnums=0)
def pair_priors(
    spec: PairSpec, kernel: SEKernel, b: dict, incoming: jax.Array
) -> tuple[jax.Array, ...]:
    """Prior variances of local energies ``(A,)``, energies ``(C,)``, forces ``(A, 3)``
    and virials ``(C, 6)`` of the 2-body term (eV^2, eV^2/Å^2)."""
    b = _covered(spec, b)
    r, D_hat, types = _geometry(b, len(spec.species))
    C = b["config_mask"].shape[0]
    fc = _cutoff_and_slope(spec, r)  # per pair: (f, f')
    # forces: F_a = -sum_{q into a} u'(r_q) D_hat_q over the pairs pointing into a
    rq, Dq, tq = r[incoming], D_hat[incoming], types[incoming]  # (A, K), (A, K, 3)
    fq = tuple(x[incoming] for x in fc)
    mq = b["pair_mask"][incoming]
    same = (tq[:, :, None] == tq[:, None, :]) * mq[:, :, None] * mq[:, None, :]
    cov, H = _covariances(
        spec,
        kernel,
        rq[:, :, None],
        rq[:, None, :],
        tuple(x[:, :, None] for x in fq),
        tuple(x[:, None, :] for x in fq),
        tq[:, :, None],
    )
    H = H * same  # (A, K, K)
    forces = jnp.einsum("akx,akl,alx->ax", Dq, H, Dq) * b["atom_mask"][:, None]
    # local energy of a: half of each pair energy into a
    local = 0.25 * jnp.sum(cov * same, axis=(1, 2)) * b["atom_mask"]
    # energies and virials: double sums over the canonical pairs of each configuration,
    # symmetric in the two pairs: tiles (t, u >= t) of TILE x TILE pairs, off-diagonal
    # tiles counted twice, each tile's sums booked to the configuration of its rows
    idx = b["canonical_index"]
    r, D_hat, types, f, df = r[idx], D_hat[idx], types[idx], fc[0][idx], fc[1][idx]
    w = b["canonical"][idx] * b["pair_mask"][idx]
    a_v = jnp.stack([D_hat[:, i] * D_hat[:, j] * r for i, j in VOIGT], axis=1)  # (Q, 6)
    pairs = {
        "r": r,
        "f": f,
        "df": df,
        "type": types,
        "w": w,
        "config": b["pair_config"][idx],
        "a": a_v * w[:, None],
    }
    tiles = blocked(pairs, TILE)  # padding: weight 0
    rows, cols = np.triu_indices(len(tiles["r"]))

    def tile(tu):
        x, y = ({k: v[t] for k, v in tiles.items()} for t in tu)
        mask = (x["type"][:, None] == y["type"][None, :]) * (
            x["config"][:, None] == y["config"][None, :]
        )
        mask = mask * x["w"][:, None] * y["w"][None, :]
        cov, d2 = _covariances(
            spec,
            kernel,
            x["r"][:, None],
            y["r"][None, :],
            (x["f"][:, None], x["df"][:, None]),
            (y["f"][None, :], y["df"][None, :]),
            x["type"][:, None],
        )
        twice = jnp.where(tu[0] == tu[1], 1.0, 2.0)
        e = twice * jnp.sum(cov * mask, axis=1)  # (TILE,)
        v = twice * x["a"] * ((d2 * mask) @ y["a"])  # (TILE, 6)
        return e, v

    e, v = jax.lax.map(tile, (jnp.asarray(rows), jnp.asarray(cols)))
    rows_config = tiles["config"][rows].reshape(-1)
    energy = jax.ops.segment_sum(e.reshape(-1), rows_config, C)
    virial = jax.ops.segment_sum(v.reshape(-1, 6), rows_config, C)
    return local, energy, forces, virial


@partial(jax.jit, static_argnums=0)
def pair_mean_and_energy_rows(
    spec: PairSpec,
    kernel: SEKernel,
    Z_r: jax.Array,
    Z_t: jax.Array,
    weights: jax.Array,
    b: dict,
    tables: PairTables,
) -> tuple[Mean, Rows, Std]:
    """``pair_mean``, and the kernel rows and prior variances (eV^2) of local
    energies and energies only (forces and virials None): ``pair_rows`` and
    ``pair_priors`` in one program, whose force and virial parts XLA drops."""
    mean = pair_mean(spec, kernel, Z_r, Z_t, weights, b, tables)
    rows = pair_rows(spec, kernel, Z_r, Z_t, b)
    local, energy, _, _ = pair_priors(spec, kernel, b, tables.incoming)
    return mean, rows._replace(forces=None, virial=None), Std(local, energy, None, None)


PAIR_SPARSE_METHODS = ("uniform", "random")
THETA_MIN = 1e-8  # Å: a theta_fac length below this is 1 (gap_fit's rule)


@dataclass(frozen=True)
class PairSummary:
    """What choosing a 2-body term's sparse points and ``theta_fac`` lengths needs of
    its distances: ``ranges`` (``pair_ranges``) and, for ``sparse_method=random``,
    ``candidates`` (``pair_candidates``; None for ``uniform``). A distributed fit
    moves these, not the distances."""

    ranges: np.ndarray
    candidates: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(
        cls, spec: PairSpec, r: np.ndarray, types: np.ndarray, method: str
    ) -> PairSummary:
        """The summary of distances ``r`` (Å) of pair types ``types``."""
        random = method == "random"
        return cls(
            pair_ranges(spec, r, types),
            pair_candidates(spec, r, types) if random else None,
        )

    @classmethod
    def merged(cls, spec: PairSpec, parts: Sequence[PairSummary]) -> PairSummary:
        """The summary of the union of the parts' distances."""
        stacked = np.stack([p.ranges for p in parts])  # (parts, n_types, 2)
        ranges = np.stack([stacked[:, :, 0].min(0), stacked[:, :, 1].max(0)], 1)
        if parts[0].candidates is None:
            return cls(ranges)
        r, t = (
            np.concatenate(x) for x in zip(*(p.candidates for p in parts), strict=True)
        )
        return cls(ranges, pair_candidates(spec, r, t))

    def sparse_points(
        self, spec: PairSpec, n_sparse: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sparse distances ``(M,)`` Å and pair types ``(M,)``: ``random``
        (``pair_random_points``) with candidates, else ``uniform``
        (``pair_points_in_ranges``)."""
        if self.candidates is not None:
            return pair_random_points(spec, *self.candidates, n_sparse, seed)
        return pair_points_in_ranges(spec, self.ranges, n_sparse)


def _inside(spec: PairSpec, r: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Which distances lie inside the cutoff (and are of the term's ``pair``)."""
    inside = r < spec.cutoff
    if spec.covered_type is not None:
        inside &= types == spec.covered_type
    return inside


def pair_ranges(spec: PairSpec, r: np.ndarray, types: np.ndarray) -> np.ndarray:
    """``(n_types, 2)`` smallest and largest distance (Å) of each pair type inside the
    cutoff (of the term's ``pair`` alone if it has one), ``(inf, -inf)`` for none."""
    inside = _inside(spec, r, types)
    lo, hi = np.full(spec.n_types, np.inf), np.full(spec.n_types, -np.inf)
    np.minimum.at(lo, types[inside], r[inside])
    np.maximum.at(hi, types[inside], r[inside])
    return np.stack([lo, hi], axis=1)


def pair_candidates(
    spec: PairSpec, r: np.ndarray, types: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct distances (Å, rounded to 1e-10) inside the cutoff (of the term's
    ``pair`` alone) and their pair types, sorted by type, then distance: what
    ``sparse_method=random`` draws from."""
    inside = _inside(spec, r, types)
    keys = np.unique(
        np.stack([types[inside].astype(float), np.round(r[inside], 10)], axis=1), axis=0
    )
    return keys[:, 1], keys[:, 0].astype(np.int64)


def pair_random_points(
    spec: PairSpec, r: np.ndarray, types: np.ndarray, n_sparse: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """gap_fit's ``sparse_method=random`` among ``pair_candidates`` ``r``, ``types``:
    ``n_sparse`` distinct distances per pair type (all when fewer), the shortest and
    the longest first, so that the points span the data, then random ones (seeded
    per type); sorted."""
    if not len(r):
        raise no_pairs(spec)
    Z_r, Z_t = [], []
    for t in np.unique(types):
        x = r[types == t]  # sorted
        rng = np.random.default_rng([seed, int(t)])
        rest = 1 + rng.permutation(max(len(x) - 2, 0))
        order = np.concatenate([[0, len(x) - 1], rest])
        Z_r.append(np.sort(x[np.unique(order[: min(n_sparse, len(x))])]))
        Z_t.append(np.full(len(Z_r[-1]), t, np.int64))
    return np.concatenate(Z_r), np.concatenate(Z_t)


def pair_points_in_ranges(
    spec: PairSpec, ranges: np.ndarray, n_sparse: int
) -> tuple[np.ndarray, np.ndarray]:
    """gap_fit's ``sparse_method=uniform``: ``n_sparse`` distances per pair type
    evenly spaced over its ``pair_ranges`` (one where the range is one distance);
    types with no pair inside the cutoff get none."""
    Z_r, Z_t = [], []
    for t, (lo, hi) in enumerate(ranges):
        if lo > hi:  # no pair of this type inside the cutoff
            continue
        Z_r.append(np.linspace(lo, hi, n_sparse) if hi > lo else np.array([lo]))
        Z_t.append(np.full(len(Z_r[-1]), t))
    if not Z_r:
        raise no_pairs(spec)
    return np.concatenate(Z_r), np.concatenate(Z_t).astype(np.int64)


def theta_from_ranges(ranges: np.ndarray, factor: float) -> float | tuple[float, ...]:
    """gap_fit's ``theta_fac``: each pair type's length scale (Å) is ``factor`` times
    its ``pair_ranges`` span (1 where that is below ``THETA_MIN`` or the type has
    no pair); one number when every type's is the same."""
    span = np.where(ranges[:, 1] >= ranges[:, 0], ranges[:, 1] - ranges[:, 0], 0.0)
    theta = tuple(float(x) if x >= THETA_MIN else 1.0 for x in span * factor)
    return theta if len(set(theta)) > 1 else theta[0]


def no_pairs(spec: PairSpec, name: str = "distance_2b") -> GapfitError:
    """The error for a 2-body term ``name`` with no pair (of its species pair, if it
    has one) inside its cutoff in the training data."""
    which = "-".join(chemical_symbols[z] for z in spec.pair) or "of atoms"
    return GapfitError(
        f"{name}: no pair {which} closer than cutoff={spec.cutoff} Å in the training "
        "data; raise the cutoff or drop the 2-body term."
    )


@partial(jax.jit, static_argnums=0)
def pair_kernel_block(
    spec: PairSpec,
    kernel: SEKernel,
    r: jax.Array,
    t: jax.Array,
    r2: jax.Array,
    t2: jax.Array,
) -> jax.Array:
    """``K (n, m) = n_t delta^2 exp(-(r - r2)^2 / 2 theta_t^2) [t == t2]`` (eV^2; no
    cutoff) of distances ``r``, ``r2`` (Å) of pair types ``t``, ``t2``."""
    theta = jnp.asarray(kernel.lengths(spec.n_types))[t][:, None]
    k = kernel.delta**2 * jnp.exp(-((r[:, None] - r2[None, :]) ** 2) / (2 * theta**2))
    n_t = jnp.asarray(spec.type_variance())[t]
    return n_t[:, None] * k * (t[:, None] == t2[None, :])
