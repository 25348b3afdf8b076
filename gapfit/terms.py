"""Terms of a GAP: each a descriptor, a kernel and its sparse points.

The model energy is the sum of the terms' local energies; the terms are independent
GPs, so their kernel rows are concatenated along the sparse axis, ``K_mm`` is block
diagonal and prior variances add. Every term offers the same small interface:
``K_mm``, ``rows`` (fit), ``mean_fn`` (predict; a jitted pure function of the
spec, kernel, sparse points ``_z``, weights and batch), ``mean_and_energy_fn`` (the
mean and what the energy stds alone need: local-energy and energy rows and priors, a
function of the same arguments), ``rows_and_priors`` (all stds), and ``meta`` /
``arrays`` / ``load`` for the model file. ``term_pairs`` gives the pairs of a batch
a term needs: a short or one-species term's programs run over its own pairs, not
every pair of the longest cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from gapfit.angle_3b import (
    ARDKernel,
    TripletSpec,
    triplet_kernel_block,
    triplet_mean,
    triplet_mean_and_energy_rows,
    triplet_priors,
    triplet_rows,
)
from gapfit.blocks import Rows, design_rows, predict_mean
from gapfit.distance_2b import (
    PairSpec,
    SEKernel,
    pair_kernel_block,
    pair_mean,
    pair_mean_and_energy_rows,
    pair_priors,
    pair_rows,
)
from gapfit.kernels import DotProductKernel, kernel_block
from gapfit.neighbours import (
    Batch,
    PairTables,
    centre_pairs,
    centre_slots,
    pair_table_widths,
)
from gapfit.soap import SoapSpec
from gapfit.variance import Std, soap_mean_and_energy_rows, soap_rows_and_priors


@dataclass(frozen=True, eq=False)
class SoapTerm:
    """SOAP + normalised dot-product kernel; sparse points are unit SOAP vectors."""

    spec: SoapSpec
    kernel: DotProductKernel
    sparse_X: np.ndarray  # (M, F) unit SOAP vectors
    sparse_species: np.ndarray  # (M,) species index
    name: str = "soap"  # unique in a model: soap, soap_2, ...

    kind = "soap"

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_species)

    @property
    def neighbour_cutoff(self) -> float:
        return self.spec.neighbour_cutoff

    triplet_cutoff = 0.0  # Å: no triplets

    mean_fn = staticmethod(predict_mean)
    mean_and_energy_fn = staticmethod(soap_mean_and_energy_rows)

    @cached_property
    def _z(self) -> tuple[jax.Array, jax.Array]:
        """Sparse points as device arrays (converted once)."""
        return jnp.asarray(self.sparse_X), jnp.asarray(self.sparse_species)

    def K_mm(self) -> jax.Array:
        X, s = self._z
        return kernel_block(self.kernel, X, s, X, s)

    def rows(self, b: dict, pairs: np.ndarray | None = None) -> Rows:
        """Kernel rows, over the term's own ``pairs`` if given (``Model.rows``)."""
        return design_rows(self.spec, self.kernel, *self._z, b, pairs)

    def rows_and_priors(self, b: dict, tables: PairTables) -> tuple[Rows, Std]:
        return soap_rows_and_priors(self.spec, self.kernel, *self._z, b, tables)

    def meta(self) -> dict:
        return {
            "descriptor": self.spec.to_dict(),
            "kernel": {
                "type": "dot_product",
                "delta": self.kernel.delta,
                "zeta": self.kernel.zeta,
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sparse_X": self.sparse_X, "sparse_species": self.sparse_species}

    def sparse_counts(self) -> dict[str, int]:
        """Sparse points per central element, e.g. ``{"Cu": 500}``."""
        counts = np.bincount(self.sparse_species, minlength=len(self.spec.species))
        return {
            chemical_symbols[z]: int(n)
            for z, n in zip(self.spec.species, counts, strict=True)
        }

    @classmethod
    def load(cls, meta: dict, arrays: dict[str, np.ndarray]) -> SoapTerm:
        spec = SoapSpec(**meta["descriptor"])
        kernel = DotProductKernel(meta["kernel"]["delta"], meta["kernel"]["zeta"])
        X, s = arrays["sparse_X"], arrays["sparse_species"]
        _check(X.shape == (len(s), spec.n_features), f"sparse_X shape {X.shape}")
        return cls(spec, kernel, X, s, meta["name"])


@dataclass(frozen=True, eq=False)
class PairTerm:
    """2-body distances + squared-exponential kernel; sparse points are distances."""

    spec: PairSpec
    kernel: SEKernel
    sparse_r: np.ndarray  # (M,) Å
    sparse_type: np.ndarray  # (M,) unordered species-pair index
    name: str = "distance_2b"  # unique in a model: distance_2b, distance_2b_2, ...

    kind = "distance_2b"

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_r)

    @property
    def neighbour_cutoff(self) -> float:
        return self.spec.neighbour_cutoff

    triplet_cutoff = 0.0  # Å: no triplets

    mean_fn = staticmethod(pair_mean)
    mean_and_energy_fn = staticmethod(pair_mean_and_energy_rows)

    @cached_property
    def _z(self) -> tuple[jax.Array, jax.Array]:
        """Sparse points as device arrays (converted once)."""
        return jnp.asarray(self.sparse_r), jnp.asarray(self.sparse_type)

    def K_mm(self) -> jax.Array:
        r, t = self._z
        return pair_kernel_block(self.spec, self.kernel, r, t, r, t)

    def rows(self, b: dict, pairs: None = None) -> Rows:
        """Kernel rows (a sum over every pair: no ``pairs``)."""
        return pair_rows(self.spec, self.kernel, *self._z, b)

    def rows_and_priors(self, b: dict, tables: PairTables) -> tuple[Rows, Std]:
        rows = self.rows(b)
        return rows, Std(*pair_priors(self.spec, self.kernel, b, tables.incoming))

    def meta(self) -> dict:
        return {
            "descriptor": self.spec.to_dict(),
            "kernel": {
                "type": "ard_se",
                "delta": self.kernel.delta,
                "theta": list(t) if isinstance(t := self.kernel.theta, tuple) else t,
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sparse_r": self.sparse_r, "sparse_type": self.sparse_type}

    def type_names(self) -> list[str]:
        """The pair types in index order, e.g. ``["Cu-Cu", "Cu-Au", "Au-Au"]``."""
        sp = [chemical_symbols[z] for z in self.spec.species]
        return [f"{a}-{b}" for i, a in enumerate(sp) for b in sp[i:]]

    def sparse_counts(self) -> dict[str, int]:
        """Sparse points per element pair, e.g. ``{"Cu-Au": 20}``."""
        return _type_counts(self.type_names(), self.sparse_type)

    @classmethod
    def load(cls, meta: dict, arrays: dict[str, np.ndarray]) -> PairTerm:
        _check("visits" in meta["descriptor"], "descriptor without visits")
        spec = PairSpec(**meta["descriptor"])
        theta = meta["kernel"]["theta"]
        _check(np.ndim(theta) == 0 or len(theta) == spec.n_types, f"theta {theta}")
        kernel = SEKernel(meta["kernel"]["delta"], theta)
        r, t = arrays["sparse_r"], arrays["sparse_type"]
        _check(r.shape == t.shape and r.ndim == 1, f"sparse_r shape {r.shape}")
        return cls(spec, kernel, r, t, meta["name"])


@dataclass(frozen=True, eq=False)
class TripletTerm:
    """3-body triplets + ARD squared-exponential kernel; sparse points are triplet
    descriptors (``angle_3b``)."""

    spec: TripletSpec
    kernel: ARDKernel
    sparse_d: np.ndarray  # (M, 3) Å, Å^2, Å
    sparse_type: np.ndarray  # (M,) triplet type index
    name: str = "angle_3b"  # unique in a model: angle_3b, angle_3b_2, ...

    kind = "angle_3b"

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_type)

    @property
    def neighbour_cutoff(self) -> float:
        return self.spec.neighbour_cutoff

    @property
    def triplet_cutoff(self) -> float:
        return self.spec.cutoff

    mean_fn = staticmethod(triplet_mean)
    mean_and_energy_fn = staticmethod(triplet_mean_and_energy_rows)

    @cached_property
    def _z(self) -> tuple[jax.Array, jax.Array]:
        """Sparse points as device arrays (converted once)."""
        return jnp.asarray(self.sparse_d), jnp.asarray(self.sparse_type)

    def K_mm(self) -> jax.Array:
        d, t = self._z
        return triplet_kernel_block(self.spec, self.kernel, d, t, d, t)

    def rows(self, b: dict, pairs: None = None) -> Rows:
        """Kernel rows (over the batch's triplets: no ``pairs``)."""
        return triplet_rows(self.spec, self.kernel, *self._z, b)

    def rows_and_priors(self, b: dict, tables: PairTables) -> tuple[Rows, Std]:
        priors = triplet_priors(self.spec, self.kernel, b, tables, True)
        return self.rows(b), priors

    def meta(self) -> dict:
        return {
            "descriptor": self.spec.to_dict(),
            "kernel": {
                "type": "ard_se",
                "delta": self.kernel.delta,
                "theta": np.asarray(self.kernel.theta).tolist(),
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sparse_d": self.sparse_d, "sparse_type": self.sparse_type}

    def type_names(self) -> list[str]:
        """The triplet types (centre first) in index order, e.g. ``["Cu-Cu-Cu"]``."""
        sp = [chemical_symbols[z] for z in self.spec.species]
        return [f"{c}-{a}-{b}" for c in sp for i, a in enumerate(sp) for b in sp[i:]]

    def sparse_counts(self) -> dict[str, int]:
        """Sparse points per triplet type (centre first), e.g. ``{"Cu-Cu-Cu": 200}``."""
        return _type_counts(self.type_names(), self.sparse_type)

    @classmethod
    def load(cls, meta: dict, arrays: dict[str, np.ndarray]) -> TripletTerm:
        spec = TripletSpec(**meta["descriptor"])
        theta = np.asarray(meta["kernel"]["theta"], dtype=float)
        _check(
            theta.shape in ((3,), (spec.n_types, 3)), f"theta of shape {theta.shape}"
        )
        kernel = ARDKernel(meta["kernel"]["delta"], theta)
        d, t = arrays["sparse_d"], arrays["sparse_type"]
        _check(d.shape == (len(t), 3) and t.ndim == 1, f"sparse_d shape {d.shape}")
        return cls(spec, kernel, d, t, meta["name"])


Term = SoapTerm | PairTerm | TripletTerm
TERM_TYPES: dict[str, type] = {
    "soap": SoapTerm,
    "distance_2b": PairTerm,
    "angle_3b": TripletTerm,
}


def within(batch: Batch, cutoff: float) -> np.ndarray:
    """``(P,)`` the batch's pairs shorter than ``cutoff`` Å."""
    return np.einsum("pk,pk->p", batch.D, batch.D) < cutoff**2


def term_pairs(spec: object, batch: Batch) -> np.ndarray | None:
    """``(P,)`` the pairs of ``batch`` a term (descriptor ``spec``) needs, those its
    per-atom tables hold: a SOAP term's inside its neighbour cutoff and out of the
    central species it covers, a 2-body term's inside its cutoff (a term of one
    species pair masks the others in its programs); None for the 3-body term (its
    triplets index every pair)."""
    if isinstance(spec, TripletSpec):
        return None
    keep = within(batch, spec.neighbour_cutoff)
    if isinstance(spec, SoapSpec) and spec.centre_index is not None:
        keep &= batch.species[batch.centre] == spec.centre_index
    return keep


def centre_species(spec: object) -> int | None:
    """The species index whose atoms are a term's only centres (a SOAP term of one
    element), None for a term over every atom."""
    return spec.centre_index if isinstance(spec, SoapSpec) else None


TABLE_SIZES = 3  # entries per term in table_widths


def table_widths(specs: Sequence[object], batch: Batch) -> tuple[int, ...]:
    """Per term (``specs`` in term order) ``TABLE_SIZES`` sizes of its tables of
    ``batch`` in one flat tuple ``(Kin_1, K_1, C_1, Kin_2, ...)``: the widths of its
    per-atom tables of the pairs into and out of each atom (``term_pairs``,
    ``neighbours.pair_table_widths``) and its centre slots C
    (``neighbours.centre_slots``). The elementwise largest over batches gives them
    one jit shape."""
    return tuple(
        size
        for spec in specs
        for size in (
            *pair_table_widths(batch, term_pairs(spec, batch)),
            centre_slots(batch, centre_species(spec)),
        )
    )


def per_term(widths: Sequence[int]) -> list[tuple[int, ...]]:
    """``table_widths``' flat tuple split into one ``(K_in, K, C)`` per term."""
    n = TABLE_SIZES
    return [tuple(widths[k : k + n]) for k in range(0, len(widths), n)]


def row_pairs(
    specs: Sequence[object], batch: Batch, widths: Sequence[int]
) -> tuple[np.ndarray | None, ...]:
    """Per term, the pairs its kernel rows run over (``blocks.design_rows``): its own
    (``term_pairs``) out of its centres (``centre_species``), ``(C K,)`` indices
    padded with a masked pair, K and C its sizes in ``widths`` (``table_widths``);
    None for every pair."""
    cutoff = max(spec.neighbour_cutoff for spec in specs)

    def pairs(spec: object, K: int, C: int) -> np.ndarray:
        keep = term_pairs(spec, batch)
        return centre_pairs(batch, K, keep, centre_species(spec), C)[0].ravel()

    return tuple(
        pairs(spec, K, C) if own_pairs(spec, cutoff) else None
        for spec, (_, K, C) in zip(specs, per_term(widths), strict=True)
    )


def own_pairs(spec: object, max_cutoff: float) -> bool:
    """Whether a term's kernel rows run over its own pairs (``term_pairs``), fewer
    than the batch's: a SOAP term shorter than the longest cutoff, or of one
    central species; the others run over every pair."""
    return isinstance(spec, SoapSpec) and (
        spec.neighbour_cutoff < max_cutoff or spec.centre_index is not None
    )


def term_name(kind: str, k: int) -> str:
    """Name of the ``k``-th term (from 1) of one kind: ``soap``, ``soap_2``, ..."""
    return kind if k == 1 else f"{kind}_{k}"


def block_K_mm(terms: tuple[Term, ...] | list[Term]) -> jax.Array:
    """``K_mm (M, M)`` eV^2 of all terms' sparse points: block diagonal, term order
    (the terms are independent GPs)."""
    return jax.scipy.linalg.block_diag(*(term.K_mm() for term in terms))


def _type_counts(names: list[str], types: np.ndarray) -> dict[str, int]:
    """Sparse points of each type that has any, by name."""
    counts = np.bincount(types, minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True) if c}


def _check(ok: bool, what: str) -> None:
    if not ok:
        from gapfit.errors import GapfitError

        raise GapfitError(
            f"model file: {what} is inconsistent; the file is corrupt, refit."
        )
