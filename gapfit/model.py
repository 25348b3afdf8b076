"""A fitted GAP: arrays plus a JSON description, saved as one ``.npz`` (no pickle).

File members: ``meta`` (JSON text: format, version, package versions, the terms'
descriptor and kernel settings, sigmas, e0, species, units, training-data hash and
summary, and the optional ``calibration`` of the stds), each term's sparse points
as ``<term>.<array>`` (``soap.sparse_X (M, F)``, ``soap.sparse_species``,
``distance_2b.sparse_r``, ``distance_2b.sparse_type``), and the posterior:
``weights (M,)``, ``L_mm (M, M)``, ``R (M, M)`` over all terms' sparse points in
term order. Loading validates keys, shapes, dtypes, finiteness and the
format version. Format 2 stores the whitened factor ``R`` of ``sparse_gp.py``; a
format 1 file held the unwhitened ``R_1`` (``R_1^T R_1 = R^T R`` in weight space),
read as ``R = R_1 L_mm^-T`` (upper triangular: the same posterior). Format 3 is
format 2 with a ``baseline`` in ``meta`` (``gapfit.baseline``), format 4 a model with
a 3-body term (``angle_3b.sparse_d``, ``angle_3b.sparse_type``), format 5 a model with
several terms of one kind (``soap``, ``soap_2``, ...; each term's ``kind`` in
``meta``), format 6 a model with a term of one central species or species pair
(gap_fit's ``add_species=F`` with ``Z=`` or ``Z1``/``Z2``: the descriptor's
``centre`` or ``pair`` in ``meta``), format 7 a model with a 2-body term (each pair
counted in both orders, ``visits``) or distance_Nb's 3-body form, format 8 one with
lengths per 2-body pair type or 3-body triplet type (``theta_fac``: a list, a list
of lists); each model is written in the oldest format that holds it, so a gapfit
that predates baselines, the 3-body term, repeated terms, per-species terms or these
refuses such a file instead of predicting without them.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache, cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import ThreadpoolController

from gapfit.baseline import Baseline, Values
from gapfit.blocks import Mean, Rows, voigt_of
from gapfit.calibration import Calibration, apply, calibrate, config_type_of
from gapfit.errors import GapfitError
from gapfit.memory import release_freed
from gapfit.neighbours import (
    NO_SHAPE,
    Batch,
    PairTables,
    Structure,
    make_batch,
    padded_stream,
    pair_tables,
)
from gapfit.sparse_gp import Posterior, whiten_rows
from gapfit.terms import (
    TERM_TYPES,
    Term,
    centre_species,
    per_term,
    table_widths,
    term_pairs,
)
from gapfit.variance import Std, combine_std

FORMAT = "gapfit-model"
FORMAT_VERSION = 8  # the newest this gapfit reads and writes
PAIR_VISITS_FORMAT = 7  # 2-body terms count i-j and j-i (once before)
SPECIES_TERM_FORMAT = 6  # terms of one element or species pair
MULTI_TERM_FORMAT = 5  # several terms of one kind, each over every species
PLAIN_FORMAT = 2  # written for models without a baseline or a 3-body term
BASELINE_FORMAT = 3  # with a baseline (no 3-body term)
TRIPLET_FORMAT = 4  # with a 3-body term (one term of each kind)
POSTERIOR = ("weights", "L_mm", "R")


@dataclass
class Model:
    """A fitted sparse GAP (a sum of terms); ``predict`` gives E, F, stress and stds."""

    terms: tuple[Term, ...]
    species: tuple[int, ...]  # sorted atomic numbers
    posterior: Posterior
    e0: dict[int, float]  # eV per species
    info: dict = field(default_factory=dict)  # sigmas, settings, data summary
    baseline: Baseline | None = None  # a potential the GP is added to

    @cached_property
    def calibration(self) -> Calibration | None:
        """Calibration of the stds (``gapfit.calibration``), None if uncalibrated."""
        meta = self.info.get("calibration")
        return None if meta is None else Calibration.from_meta(meta, "model")

    def calibrate(
        self, frames: str | os.PathLike | Sequence[Any], per_config_type: bool = False
    ) -> Model:
        """A copy whose stds are calibrated on labelled held-out ``frames`` (a path,
        ASE Atoms or Frames; ``gapfit.calibration.calibrate``)."""
        return calibrate(self, frames, per_config_type).model

    @property
    def neighbour_cutoff(self) -> float:
        """Å: the longest pair any term needs."""
        return max(t.neighbour_cutoff for t in self.terms)

    @property
    def triplet_cutoff(self) -> float:
        """Å: pairs forming the 3-body term's triplets; 0 without one."""
        return max(t.triplet_cutoff for t in self.terms)

    def term(self, name: str) -> Term | None:
        """The term called ``name`` ("soap", "distance_2b"), or None."""
        return next((t for t in self.terms if t.name == name), None)

    @cached_property
    def _weights(self) -> tuple[jax.Array, ...]:
        """The posterior weights split per term."""
        bounds = np.cumsum([0] + [t.n_sparse for t in self.terms])
        w = np.asarray(self.posterior.weights)  # split on the host: no slice programs
        return tuple(jnp.asarray(x) for x in np.split(w, bounds[1:-1]))

    def rows(self, b: dict, pairs: Sequence[Any] = ()) -> Rows:
        """Kernel rows of all terms, concatenated along the sparse axis; each term's
        over its ``pairs`` (``terms.row_pairs``) if given, else over every pair."""
        pairs = pairs or (None,) * len(self.terms)
        parts = tuple(t.rows(b, p) for t, p in zip(self.terms, pairs, strict=True))
        return _joined(parts)

    def _term_args(self) -> tuple[tuple, tuple, tuple]:
        """Each term's (type, spec) (static), kernel and sparse points, for the
        jitted programs over all terms."""
        statics = tuple((type(t), t.spec) for t in self.terms)
        return (
            statics,
            tuple(t.kernel for t in self.terms),
            tuple(t._z for t in self.terms),
        )

    def table_widths(self, batch: Batch) -> tuple[int, ...]:
        """Sizes of ``tables``' tables of ``batch``, two per term (``terms.
        table_widths``; the elementwise largest over batches gives them one jit
        shape)."""
        return table_widths([t.spec for t in self.terms], batch)

    def tables(self, batch: Batch, widths: Sequence[int]) -> tuple[PairTables, ...]:
        """Each term's per-atom tables of its own pairs of ``batch`` (``term_pairs``)
        and centres (``terms.centre_species``), at least ``widths`` (``table_widths``)
        wide; terms with the same pairs and centres share one."""
        made: dict[tuple, PairTables] = {}
        out = []
        for term, (k_in, k_out, slots) in zip(
            self.terms, per_term(widths), strict=True
        ):
            keep = term_pairs(term.spec, batch)
            species = centre_species(term.spec)
            pairs = None if keep is None else np.packbits(keep).tobytes()
            key = (pairs, k_in, k_out, species, slots)
            if key not in made:
                made[key] = pair_tables(batch, (k_in, k_out), keep, species, slots)
            out.append(made[key])
        return tuple(out)

    def mean(self, b: dict, tables: Sequence[PairTables]) -> Mean:
        """Sum of the terms' predicted means (without e0) of a batch with each term's
        per-atom pair ``tables`` (``Model.tables``), one jitted call."""
        return _summed_mean(*self._term_args(), self._weights, b, tuple(tables))

    def mean_and_std(self, b: dict, tables: Sequence[PairTables]) -> tuple[Mean, Std]:
        """Means and DTC standard deviations (all terms) of a one-configuration
        batch with its per-atom pair ``tables``. The means are ``mean``'s, not the
        kernel rows times the weights: a stiff 2-body term (delta 100 on cu_emt)
        has weights ~3e4 against summed energy rows ~4e6, and that product, which
        cancels to tens of eV, was 1.4e-4 eV off ``mean``'s energy (per-pair sums,
        whose terms are ~300 times smaller) on a 32-atom cell, 3.6e-4 eV off its
        virial: asking for stds changed the means. It costs the mean's 3 ms."""
        parts = tuple(
            t.rows_and_priors(b, tab) for t, tab in zip(self.terms, tables, strict=True)
        )
        return self.mean(b, tables), _stds(parts, self.posterior)

    def mean_and_energy_std(
        self, b: dict, tables: Sequence[PairTables]
    ) -> tuple[Mean, Std]:
        """Means and the DTC stds of the local and total energies only (forces and
        virial None) of a one-configuration batch: the mean's fast path plus the
        energy rows, without the pair derivatives the force and virial stds need;
        one jitted call."""
        args = self._term_args()
        return _summed_mean_and_energy_std(
            *args, self._weights, self.posterior, b, tuple(tables)
        )

    def _batches(
        self,
        structures: Sequence[Structure],
        which: str | None,
        wheres: Sequence[str] | None,
        batch_atoms: int,
        shape: Sequence[int] = NO_SHAPE,
        width: Sequence[int] = (),
    ) -> tuple[list, list[int], tuple[int, ...], Iterator[Batch]]:
        """``predict``'s groups of structure indices (about ``batch_atoms`` atoms
        each, or one configuration each with stds: they need per-configuration Gram
        matrices), their padded shape (``neighbours.batch_shape``) and pair-table
        widths (``table_widths``; at least ``shape`` and ``width``), and their
        padded batches, built as
        they are walked (``neighbours.padded_stream``: held up to ``HELD_ATOMS``
        atoms, beyond built again one batch at a time).
        ``wheres`` name the structures in errors (default ``config k``)."""
        wheres = wheres or [f"config {k}" for k in range(len(structures))]
        sizes = [len(s.numbers) for s in structures]
        groups = chunk_indices(sizes, 1 if which else batch_atoms)

        def build(g: Sequence[int]) -> Batch:
            return make_batch(
                [structures[k] for k in g],
                self.species,
                self.neighbour_cutoff,
                [wheres[k] for k in g],
                triplet_cutoff=self.triplet_cutoff,
            )

        return groups, *padded_stream(
            build, groups, sum(sizes), shape, width, self.table_widths
        )

    def padded_shape(
        self,
        structures: Sequence[Structure],
        std: bool | str = False,
        batch_atoms: int = 2048,
    ) -> tuple[list[int], tuple[int, ...]]:
        """The padded shape (``neighbours.batch_shape``) and the pair-table widths
        of ``predict``'s batches of ``structures``: passed as ``shape`` and
        ``width`` to ``predict`` calls on parts of them (cross-validation folds), one
        compilation serves them all."""
        _, largest, width, _ = self._batches(
            structures, std_mode(std), None, batch_atoms
        )
        return largest, width

    def predict(
        self,
        structures: Sequence[Structure],
        std: bool | str = False,
        wheres: Sequence[str] | None = None,
        batch_atoms: int = 2048,
        shape: Sequence[int] = NO_SHAPE,
        width: Sequence[int] = (),
    ) -> list[dict]:
        """Predict every structure, in batches of about ``batch_atoms`` atoms padded
        to one shape, at least ``shape`` (``neighbours.batch_shape``) with each
        term's pair tables at least ``width`` wide: calls with the same shape and
        widths share one compilation (``padded_shape`` gives those of a whole set).

        Returns one dict per structure with ``energy`` (eV), ``energies`` (n,) eV local
        energies incl. e0, ``forces`` (n, 3) eV/Å, ``virial`` (3, 3) eV (= -stress V),
        and, for 3D-periodic cells, ``stress`` (6,) eV/Å^3 Voigt (xx yy zz yz xz xy).
        With ``std`` (True or "all"): ``energy_std``, ``energies_std``,
        ``forces_std``, ``virial_std``, ``stress_std``: posterior standard deviations
        (DTC; latent function, no noise), or, for a calibrated model
        (``gapfit.calibration``), the calibrated ones, with the DTC ones as
        ``energy_std_raw``, ``forces_std_raw``, ... . With ``std="energy"`` only
        ``energy_std`` and ``energies_std`` (the local energies', as gap_fit's
        ``local_gap_variance``), at about twice the mean's cost.
        """
        which = std_mode(std)
        out: list[dict] = []
        # one padded shape and pair-table width for all batches: one compilation
        groups, _, k, batches = self._batches(
            structures, which, wheres, batch_atoms, shape, width
        )
        run = {
            None: lambda b, t: (self.mean(b, t), None),
            "all": self.mean_and_std,
            "energy": self.mean_and_energy_std,
        }[which]
        # the stds' triangular solves are LAPACK calls, whose OpenBLAS threads would
        # contend with XLA's (108 atoms on 2 cores: 250 ms instead of 210 ms)
        with _blas().limit(limits=1, user_api="blas") if which else nullcontext():
            for g, batch in zip(groups, batches, strict=True):
                # host arrays: the jitted call copies them in its own (C++) path,
                # 0.5 ms faster per 108-atom call than jax.device_put beforehand
                mean, sd = run(batch._asdict(), self.tables(batch, k))
                sel = [structures[k] for k in g]
                out.extend(self.unpack(sel, batch, mean, sd))  # waits for the device
                if len(groups) > 1:
                    release_freed()  # the batch's XLA buffers (see gapfit.memory)
        return out

    def unpack(
        self, sel: Sequence[Structure], batch: Batch, mean: Mean, sd: Std | None
    ) -> list[dict]:
        """Per-structure results (as ``predict``'s) of the structures ``sel`` of a
        batch from its means and stds (or None), the baseline's values added."""
        mean, sd = jax.device_get((mean, sd))  # numpy: no dispatch per slice
        e0 = np.array([self.e0[z] for z in self.species])
        res, a0 = [], 0
        for c, s in enumerate(sel):
            n = len(s.numbers)
            at = slice(a0, a0 + n)
            local = np.asarray(mean.local_energy[at]) + e0[batch.species[at]]
            r = {
                "energy": float(local.sum()),
                "energies": local,
                "forces": np.asarray(mean.forces[at]),
                "virial": full_tensor(np.asarray(mean.virial[c])),
            }
            if self.baseline is not None:
                _add_baseline(r, self.baseline.values(s, getattr(s, "where", "")))
            volume = _volume(s)
            if volume and "virial" in r:
                r["stress"] = -voigt_of(r["virial"]) / volume
            r["free_energy"] = r["energy"]
            if sd is not None:
                r["energy_std"] = float(sd.energy[c])
                r["energies_std"] = np.asarray(sd.local_energy[at])
                if sd.forces is not None:
                    r["forces_std"] = np.asarray(sd.forces[at])
                    if "virial" in r:
                        r["virial_std"] = full_tensor(np.asarray(sd.virial[c]))
                        if volume:
                            r["stress_std"] = np.asarray(sd.virial[c]) / volume
                if self.calibration is not None:
                    r = apply(self.calibration, r, n, config_type_of(s), volume)
            res.append(r)
            a0 += n
        return res

    # ---- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (temp file in the target directory + rename)."""
        meta = {
            "format": FORMAT,
            "format_version": self._format_version(),
            "species": list(self.species),
            "terms": [{"name": t.name, "kind": t.kind, **t.meta()} for t in self.terms],
            "e0": {str(z): v for z, v in self.e0.items()},
            "units": {
                "energy": "eV",
                "length": "Å",
                "forces": "eV/Å",
                "virial": "eV",
                "stress": "eV/Å^3",
            },
            **self.info,
        }
        if self.baseline is not None:
            meta["baseline"] = self.baseline.meta()
        arrays = {f"{t.name}.{k}": v for t in self.terms for k, v in t.arrays().items()}
        arrays.update({k: np.asarray(getattr(self.posterior, k)) for k in POSTERIOR})
        buf = io.BytesIO()
        # compressed: the zero triangles of L_mm and R take no space
        np.savez_compressed(buf, meta=np.array(json.dumps(meta, indent=1)), **arrays)
        atomic_write(path, buf.getvalue())

    def _format_version(self) -> int:
        """The oldest format that holds this model (older gapfits refuse newer
        formats instead of misreading them)."""
        if any(t.kernel.per_type for t in self.terms):
            return FORMAT_VERSION  # lengths per pair or triplet type (theta_fac)
        if any(t.kind == "distance_2b" for t in self.terms):
            return PAIR_VISITS_FORMAT  # its pairs' visits (2 since, 1 before)
        if any("form" in t.spec.to_dict() for t in self.terms):
            return PAIR_VISITS_FORMAT  # distance_Nb's 3-body form
        if any(t.spec.to_dict().keys() & {"centre", "pair"} for t in self.terms):
            return SPECIES_TERM_FORMAT
        if any(t.name != t.kind for t in self.terms):
            return MULTI_TERM_FORMAT
        if any(t.kind == "angle_3b" for t in self.terms):
            return TRIPLET_FORMAT
        return PLAIN_FORMAT if self.baseline is None else BASELINE_FORMAT

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read and validate a model written by ``save`` (no pickle)."""
        path = Path(path)
        if not path.is_file():
            raise GapfitError(
                f"model file {path} does not exist; fit one with `gapfit fit`."
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                members = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as err:
            raise GapfitError(
                f"{path} is not a readable gapfit model (not a complete .npz "
                "archive of plain arrays); it may be truncated or another program's "
                "file: refit or copy it again."
            ) from err
        if "meta" not in members:
            raise GapfitError(f"{path} has no 'meta' member: not a gapfit model.")
        try:
            meta = json.loads(str(members["meta"]))
        except json.JSONDecodeError as err:
            raise GapfitError(
                f"{path}: corrupt metadata ({err}); refit the model."
            ) from err
        if meta.get("format") != FORMAT:
            raise GapfitError(
                f"{path} is not a gapfit model (format={meta.get('format')!r})."
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise GapfitError(
                f"{path} has model format version {version}, newer than this gapfit "
                f"reads ({FORMAT_VERSION}); upgrade gapfit (pip install -U gapfit)."
            )
        for name, arr in members.items():
            if name != "meta" and (
                arr.dtype.kind not in "if"
                or (arr.dtype.kind == "f" and not np.isfinite(arr).all())
            ):
                raise GapfitError(f"{path}: {name} is not finite numeric data; refit.")
        try:
            terms = []
            for tm in meta["terms"]:
                prefix = tm["name"] + "."
                arrays = {
                    k[len(prefix) :]: v
                    for k, v in members.items()
                    if k.startswith(prefix)
                }
                kind = tm.get("kind", tm["name"])  # formats 1-4: one term per kind
                if kind == "distance_2b" and version < PAIR_VISITS_FORMAT:
                    # formats before 7 counted each pair once
                    tm = {**tm, "descriptor": {"visits": 1, **tm["descriptor"]}}
                if kind not in TERM_TYPES or tm["name"] in [t.name for t in terms]:
                    raise GapfitError(
                        f"{path}: term {tm['name']!r} of kind {kind!r} is unknown or "
                        "given twice; corrupt or from a newer gapfit: refit or upgrade."
                    )
                try:
                    terms.append(TERM_TYPES[kind].load(tm, arrays))
                except GapfitError as err:
                    why = "" if "refit" in str(err) else " The file is corrupt: refit."
                    raise GapfitError(
                        f"{path}: term {tm['name']!r}: {err}{why}"
                    ) from err
            species = tuple(int(z) for z in meta["species"])
            e0 = {int(z): float(v) for z, v in meta["e0"].items()}
            w, L, R = (members[k] for k in POSTERIOR)
        except (KeyError, TypeError) as err:
            raise GapfitError(
                f"{path}: lacks {err}; corrupt or not a gapfit model, refit."
            ) from err
        M = sum(t.n_sparse for t in terms)
        for name, arr, want in (
            ("weights", w, (M,)),
            ("L_mm", L, (M, M)),
            ("R", R, (M, M)),
        ):
            if arr.shape != want:
                raise GapfitError(
                    f"{path}: {name} has shape {arr.shape}, expected {want}; refit."
                )
        if set(e0) != set(species):
            raise GapfitError(f"{path}: e0 species {sorted(e0)} differ from {species}.")
        skip = ("format", "format_version", "species", "terms", "e0", "units")
        skip += ("baseline",)
        info = {k: v for k, v in meta.items() if k not in skip}
        baseline = meta.get("baseline")
        baseline = baseline and Baseline.from_meta(baseline, str(path))
        if "calibration" in info:
            Calibration.from_meta(info["calibration"], str(path))
        L = jnp.asarray(L)
        R = jnp.asarray(R) if version >= 2 else whiten_rows(jnp.asarray(R), L)
        posterior = Posterior(jnp.asarray(w), L, R)
        return cls(tuple(terms), species, posterior, e0, info, baseline)


@jax.jit
def _stds(parts: tuple[tuple[Rows, Std], ...], post: Posterior) -> Std:
    """DTC stds from each term's (kernel rows, prior variances)."""
    rows, priors = zip(*parts, strict=True)
    return combine_std(rows, priors, post)


@cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries of this process, found once (``threadpool_limits`` scans
    the loaded libraries on every call: about 2.5 ms per 108-atom prediction)."""
    return ThreadpoolController()


def std_mode(std: bool | str) -> str | None:
    """The ``std`` argument of ``Model.predict`` as None (no stds), "all" or
    "energy" (local and total energy stds only)."""
    if isinstance(std, (bool, np.bool_)):
        return "all" if std else None
    if isinstance(std, str) and std in ("all", "energy"):
        return std
    raise GapfitError(
        f"std={std!r} is not a std mode; use False, True or 'all' (every std), or "
        "'energy' (the local and total energy stds only)."
    )


@jax.jit
def _joined(parts: tuple[Rows, ...]) -> Rows:
    """The terms' kernel rows side by side (one program, not one per field)."""
    return Rows(*(jnp.concatenate(x, axis=-1) for x in zip(*parts, strict=True)))


@partial(jax.jit, static_argnums=0)
def _summed_mean(
    statics: tuple,
    kernels: tuple,
    sparse: tuple,
    weights: tuple,
    b: dict,
    tables: tuple[PairTables, ...],
) -> Mean:
    parts = [
        cls.mean_fn(spec, kernel, *z, w, b, tab)
        for (cls, spec), kernel, z, w, tab in zip(
            statics, kernels, sparse, weights, tables, strict=True
        )
    ]
    return Mean(*(sum(x[1:], x[0]) for x in zip(*parts, strict=True)))


@partial(jax.jit, static_argnums=0)
def _summed_mean_and_energy_std(
    statics: tuple,
    kernels: tuple,
    sparse: tuple,
    weights: tuple,
    post: Posterior,
    b: dict,
    tables: tuple[PairTables, ...],
) -> tuple[Mean, Std]:
    """The summed means and the DTC energy stds from the terms'
    ``mean_and_energy_fn`` in one program (the SOAP energy rows reuse the mean's
    descriptors)."""
    parts = [
        cls.mean_and_energy_fn(spec, kernel, *z, w, b, tab)
        for (cls, spec), kernel, z, w, tab in zip(
            statics, kernels, sparse, weights, tables, strict=True
        )
    ]
    means, rows, priors = zip(*parts, strict=True)
    mean = Mean(*(sum(x[1:], x[0]) for x in zip(*means, strict=True)))
    return mean, combine_std(rows, priors, post)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def chunk_indices(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so each group holds <= budget atoms (or one item)."""
    groups: list[list[int]] = [[]]
    total = 0
    for k, n in enumerate(sizes):
        if groups[-1] and total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += n
    return [g for g in groups if g]


def _add_baseline(r: dict, v: Values) -> None:
    """Add a baseline's values to one prediction ``r`` in place: ``energies`` is
    dropped for a calculator without per-atom energies, ``virial`` for a periodic
    cell when it gives no stress."""
    r["energy"] += v.energy
    r["forces"] = r["forces"] + v.forces
    if v.energies is None:
        del r["energies"]
    else:
        r["energies"] = r["energies"] + v.energies
    if v.virial is None:
        del r["virial"]
    else:
        r["virial"] = r["virial"] + v.virial


def _volume(s: Structure) -> float | None:
    pbc = np.asarray(s.pbc, dtype=bool)
    return (
        float(abs(np.linalg.det(np.asarray(s.cell, dtype=float))))
        if pbc.all()
        else None
    )


def full_tensor(v: np.ndarray) -> np.ndarray:
    """3x3 tensor from Voigt ``(6,)`` (xx yy zz yz xz xy)."""
    return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])
