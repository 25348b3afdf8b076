"""Dry run of ``GAP.fit``: sizes, peak memory and wall time, predicted without fitting.

``plan_fit(frames, gap)`` validates the settings and the data, reads the frames and
builds their neighbour lists (vesin), but computes no descriptor or kernel and compiles
nothing. Sizes follow ``GAP.fit``: chunks of configurations (``chunk_indices``), each
padded (``neighbours.bucket``) to ``A`` atoms, ``P`` pairs and ``C`` configurations;
``F`` SOAP features, ``N = n_max``, ``LM = (l_max + 1)^2``, ``S`` species, ``M`` sparse
points of all terms (``M_2b`` of the 2-body term, ``M_3b`` of the 3-body term, whose
``T`` triplets per chunk are padded to one count), ``B = soap.PAIR_BLOCK`` pairs per
block of the per-pair work, ``rows = 3A + 7C`` observations per chunk, ``n`` distinct
padded chunk shapes (jit compiles every kernel once per shape).

Peak resident set size (ru_maxrss; bytes, float64 = 8 B): the largest over the stages
of ``base + runtime + code + data + transient``, where

    base       Python, numpy, ASE, gapfit imported, frames read              (measured)
    runtime    JAX/XLA CPU runtime after the first op                          (fitted)
    code       compiled kernels: per kernel k, kappa_k c_k(LM) (1 + r (n - 1)),
               c_k the retained RSS of its first compile in a fresh process
               (measured), kappa_k and r fitted to whole fits (a later compile
               reuses pages an earlier one freed), + fixed allowances for the small
               eager ops of sparsify (K_mm, Cholesky) and solve (QR fold, scaling)
    data       frames + SOAP matrix X (n_env, F) + 2-body distances + O(M^2) factors
    transient  of the largest padded chunk (XLA temp + outputs: the coefficients are
               the fits of ``compiled.memory_analysis()`` over a grid of shapes, i.e.
               how many copies of each array XLA keeps alive):
      descriptors      1.38 (B, N, LM) pair expansions summed into the coefficients,
                       + X once more (chunk list and concatenated matrix)
      sparsify         k_s (n_species_env, F): select_sparse's normalised, rounded,
                       sorted copies and the SVD of X_hat (k_s fitted)
      solve            design_rows 3.77 (B, 3, M) pair rows dk/dD + 0.96 (A, 3, M)
                       force accumulator + 0.19 (B, 3, S, N, LM) Jacobians + 0.65
                       (B, 3, S^2, L+1, N^2) power-spectrum tangents + 5.9 (A, S, N,
                       LM) coefficients + outputs (4A + 7C, M); pair_rows 8.04 (P, M_2b)
                       + 2.1 (A, 3, M_2b) + 6 (C, 9, M_2b); triplet_rows
                       (TRIPLET_ROW_TEMP B3 + 5 A + 8 C) M_3b + TRIPLET_DATA T
                       (B3 = angle_3b.TRIPLET_BLOCK); scaled rows (rows, M) x2;
                       QR input 1.63 (M + 1 + rows, M + 1)
      training_errors  the mean's program (``assembly.fitted_predictions``):
                       160 float64 per padded pair of the chunk
                       (``memory_analysis``: 147 at LM 81)

Several SOAP terms: each has its own ``N``, ``LM``, ``F`` and ``M``; their
descriptor matrices, outputs, flops and compile times add, the kernel temporaries
are the largest term's (the terms' programs run one after the other), and so is
the retained RSS of a kernel compiled once per term (a compile reuses the heap the
previous one freed; the mean, one program of all terms, at their summed ``LM``).

Wall time: the plan's own read time, its neighbour-list time once per stage that
builds batches (descriptors, solve, training errors), a compile allowance per kernel
and padded shape (``COMPILE_S``), fixed allowances (eager ops, per chunk), SOAP pair
work ``P N LM`` (expansions, coefficients) at ``PAIR_WORK_S`` (the training errors'
mean at ``MEAN_WORK_S``), and flops at one calibrated rate: per chunk
``2 (3 P F M)`` for ``Z_hat . dP``, ``18 P C M`` for the virial contraction,
``12 P S^2 N^2 LM`` for the power-spectrum tangents, ``2 rows (M+1)^2`` for the QR
fold and ``30 P M_2b`` for the 2-body rows; ``4 n_env F^2 + 2 M^2 F`` for sparsify
(SVD, K_mm). A SOAP term that runs over its own pairs (``terms.row_pairs``: of one
central species, or a cutoff shorter than the longest) counts its padded tables'
pairs in place of ``P``: its centre slots times the most pairs out of one centre.

All constants come from CPU JAX on a 2-core x86 reference machine (``benchmarks``):
another machine scales the time, and the compile terms of the memory somewhat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ase
import numpy as np

from gapfit.angle_3b import TRIPLET_BLOCK, batch_descriptors
from gapfit.baseline import Baseline
from gapfit.data import Frame, fit_e0
from gapfit.distance_2b import PairSpec, no_pairs, pair_type
from gapfit.errors import GapfitError
from gapfit.fit import term_specs
from gapfit.model import chunk_indices
from gapfit.neighbours import _canonical, bucket, make_batch, pairs
from gapfit.soap import PAIR_BLOCK, SoapSpec
from gapfit.sparsify import check_config_types, select_sparse
from gapfit.terms import own_pairs

if TYPE_CHECKING:
    from gapfit.fit import GAP

GIB = 1024**3
MIB = 1024**2

# Memory (see the module docstring). Retained RSS of a kernel's first compile in a
# fresh process, MiB = a + b LM (S = 1; S = 2 adds < 10 %), and the fraction kappa of
# it that a whole fit keeps.
BASE_BYTES = 0.20 * GIB
RUNTIME_BYTES = 0.056 * GIB
CODE_MIB = {
    "descriptors": (1.0, 2.2),
    "design_rows": (34.0, 6.0),
    "mean": (162.0, 2.7),
}
# design_rows: 0.70 from cu_emt and si_xtb, all data and 30/60 configurations (-8 % to
# +13 %); mean (the training errors' program, which sets a whole fit's peak): 0.63
# from cu_emt and si_xtb (gap_fit's recipe, chunks of 512 atoms: -2 %, +2 %)
CODE_KAPPA = {"descriptors": 0.42, "design_rows": 0.70, "mean": 0.63}
MEAN_TEMP = 160.0  # float64 per padded pair of the training errors' mean program
CODE_PER_SHAPE = 0.44  # r: each further padded shape adds this fraction
MISC_MIB = {"sparsify": 36.0, "solve": 124.0}  # small eager ops (K_mm, QR fold, ...)
SPARSIFY_COPIES = 4.4  # k_s

# Time (see the module docstring): effective flop rate of the dense kernels, seconds
# per unit of SOAP pair work (P N LM), compile seconds per padded shape (b LM for the
# SOAP kernels, a for the 2-body ones), fixed seconds of the small eager ops and per
# chunk (batching, Python).
FLOP_RATE = 67e9  # cu_emt and si_xtb solves (gap_fit recipe, 512-atom chunks)
PAIR_WORK_S = 5.8e-9
MEAN_WORK_S = 2.4e-9
COMPILE_S = {
    "descriptors": 0.0238,
    "design_rows": 0.0968,
    "mean": 0.041,
    "pair": 0.88,
}
FIXED_S = {"sparsify": 1.16, "solve": 1.32, "chunk": 0.048}
STAGES = ("read", "descriptors", "sparsify", "solve", "training_errors")
# The 3-body term (from the arrays its programs hold, the held and code allowances
# and the times fitted to cu_emt fits with and without it, 2-body + SOAP M 20 + 500
# + angle_3b cutoff 3.5 Å, M 200: see benchmarks/RESULTS.md): float64 per triplet of
# a block per sparse point in the kernel rows and in the mean, and per padded triplet
# of a chunk; bytes per triplet held from the descriptors on (the batches' triplet
# lists, the descriptors) and while its sparse points are chosen; seconds per
# (padded triplet x sparse point) of the rows and of the mean, compile seconds of
# the rows per padded shape (the mean's: half).
TRIPLET_ROW_TEMP = 20.0
TRIPLET_MEAN_TEMP = 6.0
TRIPLET_DATA = 70.0
TRIPLET_HELD = 178.0
TRIPLET_SPARSIFY = 120.0
TRIPLET_ROW_S = 6.0e-9
TRIPLET_MEAN_S = 0.6e-9
COMPILE_S["triplet"] = 2.0
CODE_MIB["triplet_rows"] = (10.0, 0.0)
CODE_MIB["triplet_mean"] = (40.0, 0.0)


@dataclass(frozen=True)
class FitPlan:
    """What ``GAP.fit`` will do with these frames and settings (nothing allocated).

    Attributes:
        n_configs, n_atoms: configurations and atoms.
        n_pairs: full-list (both directions) pairs within the largest term cutoff.
        n_sparse: sparse points per term, e.g. ``{"soap": 500, "distance_2b": 20}``
            (SOAP: ``min(n_sparse, atoms)`` per species, an upper bound).
        M: all sparse points.
        n_features: SOAP vector length F (0 without SOAP).
        chunk_atoms: the chunk budget.
        n_chunks: chunks of configurations.
        chunk_shapes: distinct padded ``(A, P, C)`` of the chunks (one jit compile
            of each kernel per shape).
        largest_chunk: padded ``(A, P, C)`` of the chunk with the most pairs.
        peak_bytes: predicted peak resident set size of the fit, bytes.
        peak_stage: the stage where it is reached.
        breakdown: the terms of ``peak_bytes``, bytes (they add up to it).
        stage_bytes: predicted peak RSS at the end of each stage (like
            ``GAP.memory_gib_``), bytes.
        seconds: predicted wall time of the fit, s.
        stage_seconds: per stage, s.
        baseline: the baseline calculator's name, or None; its evaluation on every
            frame is not in ``seconds``.
        n_triplets: triplets of the 3-body term (0 without one).
        own_pairs: pairs each SOAP term that runs over its own pairs (of one
            central species, or a shorter cutoff: ``terms.row_pairs``) has, e.g.
            ``{"soap_2": 1200}``; its per-pair work is counted over its padded
            tables of them.
    """

    n_configs: int
    n_atoms: int
    n_pairs: int
    n_sparse: dict[str, int]
    M: int
    n_features: int
    chunk_atoms: int
    n_chunks: int
    chunk_shapes: tuple[tuple[int, int, int], ...]
    largest_chunk: tuple[int, int, int]
    peak_bytes: int
    peak_stage: str
    breakdown: dict[str, int] = field(default_factory=dict)
    stage_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    n_triplets: int = 0
    own_pairs: dict[str, int] = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def table(self) -> str:
        """The plan as a small text table (``gapfit fit --dry-run``)."""
        A, P, C = self.largest_chunk
        rows = [
            ("configs", f"{self.n_configs}"),
            ("atoms", f"{self.n_atoms}"),
            ("pairs (full list)", f"{self.n_pairs}"),
            *((f"pairs of {name}", f"{n}") for name, n in self.own_pairs.items()),
            *(
                (("triplets (3-body)", f"{self.n_triplets}"),)
                if self.n_triplets
                else ()
            ),
            *((f"sparse points {name}", f"{n}") for name, n in self.n_sparse.items()),
            ("sparse points M", f"{self.M}"),
            (
                "chunks",
                f"{self.n_chunks} of <= {self.chunk_atoms} atoms, "
                f"{len(self.chunk_shapes)} padded shapes, largest A={A} P={P} C={C}",
            ),
            ("predicted peak RSS", f"{self.peak_gib:.2f} GiB ({self.peak_stage})"),
            *(
                (f"  {name}", f"{value / GIB:.3f} GiB")
                for name, value in self.breakdown.items()
            ),
            ("predicted wall time", f"{self.seconds:.0f} s"),
            *(
                (f"  {name}", f"{value:.1f} s")
                for name, value in self.stage_seconds.items()
            ),
        ]
        if self.baseline:
            rows.append(
                ("baseline", f"{self.baseline} on every config: not in the time above")
            )
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass
class _Chunk:
    atoms: int
    pairs: int
    configs: int
    triplets: int = 0  # of the 3-body term
    pad_to: tuple[int, int, int] | None = None  # the fit's one shape for all chunks
    padded_triplets: int = 0  # the fit's one triplet count for all chunks

    @property
    def padded(self) -> tuple[int, int, int]:
        """``(A, P, C)`` as ``make_batch`` pads them, or the common shape."""
        if self.pad_to is not None:
            return self.pad_to
        return (
            bucket(self.atoms + 1),
            bucket(self.pairs + 1),
            bucket(self.configs + 1, 2),
        )


def plan_fit(
    frames: str | os.PathLike | Sequence[ase.Atoms | Frame], gap: GAP
) -> FitPlan:
    """Predict sizes, peak memory and wall time of ``gap.fit(frames)`` (see module doc).

    Raises:
        GapfitError: the settings or the data are invalid (as ``fit`` would).
    """
    t0 = time.perf_counter()
    named = gap._term_settings()
    triplet = named.get("angle_3b", (None, None))[1]
    frames = gap._frames(frames)
    t_read = time.perf_counter() - t0
    gap._sigmas()
    baseline = Baseline.of(gap.baseline, gap.baseline_kwargs)  # built, not evaluated
    species = tuple(sorted({int(z) for f in frames for z in f.numbers}))
    fit_e0(
        frames, gap.e0_method, species, gap.e0
    )  # its checks (values: after the baseline)
    specs = term_specs(named, species)
    for name, (kind, settings) in named.items():
        if kind == "soap":  # n_sparse, sparse_method and seed, as the fit checks them
            select_sparse(
                np.zeros((0, specs[name][0].n_features)),
                np.zeros(0, np.int64),
                settings["n_sparse"],
                settings["sparse_method"],
                gap.rnd_seed,
            )
    cutoff = max(s.neighbour_cutoff for s, _ in specs.values())

    t0 = time.perf_counter()
    counts, soap_counts, r_ranges = _neighbour_counts(
        frames, specs, cutoff, len(species)
    )
    t_nl = time.perf_counter() - t0
    t0 = time.perf_counter()
    triplets, types = _triplet_counts(frames, specs)
    t_triplets = time.perf_counter() - t0
    sizes = [len(f.numbers) for f in frames]
    indices = chunk_indices(sizes, gap.chunk_atoms)
    chunks = [
        _Chunk(
            sum(sizes[k] for k in c),
            sum(counts[k] for k in c),
            len(c),
            sum(triplets[k] for k in c),
        )
        for c in indices
    ]
    common = _largest(c.padded for c in chunks)  # GAP.fit pads every chunk to it
    own = _own_pairs(soap_counts, indices)
    T = bucket(max(c.triplets for c in chunks) + 1) if triplet else 0
    for c in chunks:
        c.pad_to = common
        c.padded_triplets = T
    n_sparse = _n_sparse(frames, named, specs, r_ranges)
    if triplet is not None:  # as angle_3b.triplet_sparse_points (an upper bound)
        if not sum(triplets):
            raise GapfitError(
                "angle_3b: no atom has two neighbours inside the 3-body cutoff in the "
                "training data; raise its cutoff or drop the 3-body term."
            )
        n_sparse["angle_3b"] = int(np.minimum(types, triplet["n_sparse"]).sum())
    shape = _Shape.of(specs, n_sparse, species)
    numbers = np.concatenate([f.numbers for f in frames])
    memory = _memory(shape, chunks, len(frames), int(np.bincount(numbers).max()))
    padded_own = {name: width for name, (_, width) in own.items()}
    stage_seconds = _seconds(shape, chunks, t_read, t_nl, padded_own)
    if triplet is not None:  # the fit lists them once, as here
        stage_seconds["descriptors"] += t_triplets
    shapes = sorted({c.padded for c in chunks})
    stage = max(memory, key=lambda s: memory[s][0])
    running = np.maximum.accumulate([memory[s][0] for s in STAGES])  # as ru_maxrss
    return FitPlan(
        n_configs=len(frames),
        n_atoms=int(sum(sizes)),
        n_pairs=int(sum(counts)),
        n_sparse=n_sparse,
        M=shape.M,
        n_features=shape.F,
        chunk_atoms=gap.chunk_atoms,
        n_chunks=len(chunks),
        chunk_shapes=tuple(shapes),
        largest_chunk=max(shapes, key=lambda s: (s[1], s[0], s[2])),
        peak_bytes=int(memory[stage][0]),
        peak_stage=stage,
        breakdown={k: int(v) for k, v in memory[stage][1].items()},
        stage_bytes={s: int(b) for s, b in zip(STAGES, running, strict=True)},
        seconds=float(sum(stage_seconds.values())),
        stage_seconds=stage_seconds,
        baseline=baseline and baseline.calculator,
        n_triplets=int(sum(triplets)),
        own_pairs={name: n for name, (n, _) in own.items()},
    )


# ------------------------------------------------------------------------------------
def _triplet_counts(frames: Sequence[Frame], specs: dict) -> tuple[list[int], Any]:
    """Triplets of the 3-body term in every frame, and in all frames per triplet
    type (zeros without the term)."""
    if "angle_3b" not in specs:  # the one 3-body term
        return [0] * len(frames), np.zeros(0, np.int64)
    spec = specs["angle_3b"][0]
    counts, types = [], np.zeros(spec.n_types, np.int64)
    for f in frames:
        b = make_batch([f], spec.species, spec.cutoff, [f.where], False, spec.cutoff)
        t = batch_descriptors(spec, b)[1]
        counts.append(len(t))
        types += np.bincount(t, minlength=spec.n_types)
    return counts, types


def _own_pairs(
    soap_counts: dict[str, list[tuple[int, int, int]]],
    chunks: Sequence[Sequence[int]],
) -> dict[str, tuple[int, int]]:
    """Per SOAP term that runs over its own pairs: those pairs, and the padded
    count its kernels run over in every chunk, its centre slots times the widest
    table of pairs out of one centre (``neighbours.centre_slots``,
    ``pair_table_widths``; the largest over chunks, as ``GAP.fit`` pads them)."""
    out = {}
    for name, per_frame in soap_counts.items():
        slots = max(bucket(sum(per_frame[k][1] for k in c), 1) for c in chunks)
        width = max(bucket(max(per_frame[k][2] for k in c), 4) for c in chunks)
        out[name] = (sum(n for n, _, _ in per_frame), slots * width)
    return out


def _neighbour_counts(
    frames: Sequence[Frame], specs: dict, cutoff: float, n_species: int
) -> tuple[list[int], dict[str, list], dict[str, dict[int, tuple[float, float]]]]:
    """Full-list pairs of every frame; per SOAP term that runs over its own pairs
    (``terms.row_pairs``: within its neighbour cutoff, out of its central species'
    atoms), those pairs, its centres and the most pairs out of one centre, per
    frame; and for each 2-body term the (min, max) distance of each pair type within
    its cutoff (``GAP.fit`` places its sparse points there), ``{term name: {type:
    (min, max)}}``."""
    counts: list[int] = []
    soap_specs = {
        n: s
        for n, (s, _) in specs.items()
        if isinstance(s, SoapSpec) and own_pairs(s, cutoff)
    }
    soap_counts: dict[str, list[tuple[int, int, int]]] = {n: [] for n in soap_specs}
    pair_specs = {n: s for n, (s, _) in specs.items() if isinstance(s, PairSpec)}
    r_ranges: dict[str, dict[int, tuple[float, float]]] = {n: {} for n in pair_specs}
    species = next(iter(specs.values()))[0].species  # every term's
    for f in frames:
        i, j, D = pairs(f, cutoff, f.where)
        counts.append(len(i))
        r = np.linalg.norm(D, axis=1)
        for name, spec in soap_specs.items():
            own = r < spec.neighbour_cutoff
            centres = len(f.numbers)
            if spec.centre:
                own &= f.numbers[i] == spec.centre
                centres = int(np.sum(f.numbers == spec.centre))
            widest = np.bincount(i[own], minlength=len(f.numbers)).max(initial=0)
            soap_counts[name].append((int(own.sum()), centres, int(widest)))
        if not pair_specs or not len(i):
            continue
        z = np.searchsorted(species, f.numbers)
        canonical = _canonical(i, j, D) > 0  # each pair once, for every 2-body term
        for name, spec in pair_specs.items():
            keep = canonical & (r < spec.cutoff)
            t = pair_type(z[i[keep]], z[j[keep]], n_species)
            if spec.covered_type is not None:  # a term of one species pair
                t = np.where(t == spec.covered_type, t, -1)
            for ty in np.unique(t[t >= 0]):
                rt = r[keep][t == ty]
                lo, hi = r_ranges[name].get(int(ty), (np.inf, -np.inf))
                r_ranges[name][int(ty)] = (min(lo, rt.min()), max(hi, rt.max()))
    return counts, soap_counts, r_ranges


def _n_sparse(
    frames: Sequence[Frame],
    named: dict[str, tuple[str, dict]],
    specs: dict,
    r_ranges: dict[str, dict[int, tuple[float, float]]],
) -> dict[str, int]:
    """Sparse points of the SOAP and 2-body terms as ``GAP.fit`` chooses them (SOAP
    and random 2-body points: an upper bound, since duplicates are dropped first; with
    ``config_type_n_sparse`` the sum over its config_types; a term of one central
    species counts that species alone)."""
    out: dict[str, int] = {}
    for name, (kind, settings) in named.items():
        if kind == "distance_2b":
            r_range = r_ranges[name]
            if not r_range:  # as distance_2b's sparse points say
                raise no_pairs(specs[name][0], name)
            out[name] = sum(
                settings["n_sparse"] if hi > lo else 1 for lo, hi in r_range.values()
            )
        elif kind == "soap":
            counts = settings["config_type_n_sparse"]
            if counts is not None:
                check_config_types(counts, [f.config_type for f in frames])
            spec = specs[name][0]
            centres = (spec.centre,) if spec.centre else spec.species
            out[name] = 0
            for ctype, n in (counts or {None: settings["n_sparse"]}).items():
                numbers = [f.numbers for f in frames if ctype in (None, f.config_type)]
                atoms = np.bincount(np.concatenate(numbers), minlength=max(centres) + 1)
                out[name] += int(sum(min(n, atoms[z]) for z in centres))
    return out


@dataclass(frozen=True)
class _Soap:
    """Static sizes of one SOAP term ``name``: ``N = n_max``, ``L = l_max``, ``F``,
    ``M``."""

    N: int
    L: int
    F: int
    M: int
    name: str = "soap"

    @property
    def LM(self) -> int:
        return (self.L + 1) ** 2


@dataclass(frozen=True)
class _Shape:
    """Static sizes of the model: species ``S``, each SOAP term's sizes, ``M_2b``
    and ``M_3b`` (all 2-body terms' sparse points; the 3-body term's)."""

    S: int
    soaps: tuple[_Soap, ...]
    M_2b: int
    M_3b: int = 0
    n_2b: int = 0  # 2-body terms
    orders_3b: int = 1  # orders the 3-body kernel sums over (distance_Nb's form: 6)

    @property
    def F(self) -> int:
        """All SOAP terms' features (the descriptor matrices' widths)."""
        return sum(s.F for s in self.soaps)

    @property
    def M_soap(self) -> int:
        return sum(s.M for s in self.soaps)

    @property
    def M(self) -> int:
        return self.M_soap + self.M_2b + self.M_3b

    @classmethod
    def of(cls, specs: dict, n_sparse: dict[str, int], species: tuple) -> _Shape:
        soaps, M_2b, n_2b = [], 0, 0
        for name, (spec, _) in specs.items():
            if isinstance(spec, SoapSpec):
                F, M = spec.n_features, n_sparse[name]
                soaps.append(_Soap(spec.n_max, spec.l_max, F, M, name))
            elif isinstance(spec, PairSpec):
                M_2b, n_2b = M_2b + n_sparse[name], n_2b + 1
        M_3b = n_sparse.get("angle_3b", 0)
        orders = len(specs["angle_3b"][0].orders) if "angle_3b" in specs else 1
        return cls(len(species), tuple(soaps), M_2b, M_3b, n_2b, orders)


def _code_bytes(n_shapes: int, kernels: Sequence[tuple[str, int]]) -> float:
    """Retained RSS of compiling ``kernels`` (those of the fit's chunk loops, each
    with its SOAP term's ``LM``, 0 for the others) for ``n_shapes`` padded shapes.
    The retained RSS is mostly the compiler's freed heap, which the next compile
    reuses: a kernel compiled once per SOAP term (``descriptors``, ``design_rows``)
    counts at its largest term's ``LM``; the mean, one program of every term, at
    their summed ``LM`` (measured: a second SOAP term, LM 25 beside 49, added
    0.03-0.05 GiB to the peak of cu_emt's and si_xtb's fits)."""
    sizes: dict[str, int] = {}
    for k, LM in kernels:
        sizes[k] = LM + sizes.get(k, 0) if k == "mean" else max(LM, sizes.get(k, 0))
    total = 0.0
    for k, LM in sizes.items():
        a, b = CODE_MIB[k]
        shapes = 1 + CODE_PER_SHAPE * (n_shapes - 1)
        total += CODE_KAPPA.get(k, 1.0) * (a + b * LM) * MIB * shapes
    return total


def _transients(shape: _Shape, A: int, P: int, C: int, T: int = 0) -> dict[str, float]:
    """XLA temp + output bytes of one padded chunk (``T`` triplets), per stage (see
    module doc). Several SOAP terms run one after the other: the largest one's
    temporaries, every term's outputs."""
    S, F, M, Ms, M2 = shape.S, shape.F, shape.M, shape.M_soap, shape.M_2b
    B = min(PAIR_BLOCK, P)
    rows = 3 * A + 7 * C
    out = {
        "descriptors": max((1.38 * B * s.N * s.LM for s in shape.soaps), default=0.0)
        + A * F
    }
    soap_temp = (
        3.77 * B * 3 * s.M
        + 0.96 * A * 3 * s.M
        + 0.19 * B * 3 * S * s.N * s.LM
        + 0.65 * B * 3 * S * S * (s.L + 1) * s.N**2
        + 5.9 * A * S * s.N * s.LM
        for s in shape.soaps
    )
    # + outputs: energy, forces, virial, local rows
    soap_rows = max(soap_temp, default=0.0) + (A * 4 + C * 7) * Ms
    pair_rows = 8.04 * P * M2 + 2.1 * A * 3 * M2 + 6.0 * C * 9 * M2
    M3, B3 = shape.M_3b, min(TRIPLET_BLOCK, T)
    triplet_rows = (
        (TRIPLET_ROW_TEMP * B3 + 5 * A + 8 * C) * M3 + TRIPLET_DATA * T if T else 0.0
    )
    qr = 2 * rows * (M + 1) + 1.63 * (M + 1 + rows) * (M + 1)
    out["solve"] = soap_rows + pair_rows + triplet_rows + qr
    triplet_mean = (TRIPLET_MEAN_TEMP * B3 * M3 + TRIPLET_DATA * T) if T else 0.0
    out["training_errors"] = (MEAN_TEMP * P if F else 0.0) + triplet_mean
    return {k: 8.0 * v for k, v in out.items()}


def _largest(shapes: Iterable[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Elementwise largest ``(A, P, C)``."""
    A, P, C = zip(*shapes, strict=True)
    return max(A), max(P), max(C)


def _memory(
    shape: _Shape,
    chunks: Sequence[_Chunk],
    n_frames: int,
    largest_species: int,
) -> dict[str, tuple[float, dict[str, float]]]:
    """Predicted RSS ``(bytes, breakdown)`` of each stage at its own peak."""
    n_atoms = sum(c.atoms for c in chunks)
    n_pairs = sum(c.pairs for c in chunks)
    n_triplets = sum(c.triplets for c in chunks)
    padded = {c.padded for c in chunks}
    worst: dict[str, float] = {}
    T = max(c.padded_triplets for c in chunks)
    for A, P, C in padded:
        for stage, b in _transients(shape, A, P, C, T).items():
            worst[stage] = max(worst.get(stage, 0.0), b)
    three_body = shape.M_3b > 0
    X = 8.0 * n_atoms * shape.F  # (n_env, F) SOAP matrices
    max_F = max((s.F for s in shape.soaps), default=0)  # chosen one term at a time
    kernels = {  # (kernel, LM) compiled per stage: one SOAP kernel per SOAP term
        stage: [(k, s.LM) for s in shape.soaps] + [(k3, 0)] * (bool(k3) and three_body)
        for stage, k, k3 in (
            ("descriptors", "descriptors", ""),
            ("solve", "design_rows", "triplet_rows"),
            ("training_errors", "mean", "triplet_mean"),
        )
    }
    transient = {
        "read": 0.0,
        "descriptors": worst["descriptors"] + X,  # chunk list + concatenated X
        "sparsify": max(
            SPARSIFY_COPIES * 8.0 * largest_species * max_F,
            TRIPLET_SPARSIFY * n_triplets,
        ),
        "solve": worst["solve"],
        "training_errors": worst["training_errors"],
    }
    fixed = {"base": BASE_BYTES, "frames": 8.0 * 10 * n_atoms + 2048.0 * n_frames}
    out: dict[str, tuple[float, dict[str, float]]] = {}
    code: list[str] = []
    misc = 0.0
    for stage in STAGES:
        code += kernels.get(stage, [])
        misc += MISC_MIB.get(stage, 0.0) * MIB
        if stage == "descriptors":  # SOAP matrix, 2-body distances and types
            fixed["JAX runtime"] = RUNTIME_BYTES
            fixed["descriptors"] = (
                X
                + 16.0 * n_pairs / 2 * shape.n_2b  # each 2-body term's
                + TRIPLET_HELD * n_triplets
            )
        if stage == "sparsify":  # K_mm, its factor, R_aug, posterior, QR copies
            fixed["factors"] = 8.0 * 6 * (shape.M + 1) ** 2
        parts = {
            **fixed,
            "compiled code": _code_bytes(len(padded), code) + misc,
            f"{stage} transient": transient[stage],
        }
        out[stage] = (sum(parts.values()), parts)
    return out


def _seconds(
    shape: _Shape,
    chunks: Sequence[_Chunk],
    t_read: float,
    t_nl: float,
    own: dict[str, int],
) -> dict[str, float]:
    """Predicted wall time per stage (see module doc; SOAP terms add up; ``own``:
    the padded pairs of each SOAP term that runs over its own, ``_own_pairs``)."""
    S, M, M2 = shape.S, shape.M, shape.M_2b
    work = rows = qr = 0.0  # SOAP pair work, flops of the kernel rows and of the QR
    triplet_work = shape.orders_3b * sum(c.padded_triplets * shape.M_3b for c in chunks)
    triplet_compile = COMPILE_S["triplet"] if shape.M_3b else 0.0
    for c in chunks:
        A, P, C = c.padded
        for s in shape.soaps:
            P_s = own.get(s.name, P)  # a term of one element or shorter cutoff
            work += P_s * s.N * s.LM
            rows += 2 * 3 * P_s * s.F * s.M + 18 * P_s * C * s.M
            rows += 12 * P_s * S * S * s.N * s.N * s.LM
        rows += 30 * P * M2
        qr += 2 * (3 * A + 7 * C) * (M + 1) ** 2
    n_env = sum(c.atoms for c in chunks)
    n_shapes = len({c.padded for c in chunks})
    per_chunk = FIXED_S["chunk"] * len(chunks)
    pair_compile = COMPILE_S["pair"] * shape.n_2b
    LM = sum(s.LM for s in shape.soaps)  # compile time per shape: per SOAP kernel
    return {
        "read": t_read,
        "descriptors": t_nl
        + PAIR_WORK_S * work
        + n_shapes * COMPILE_S["descriptors"] * LM,
        "sparsify": FIXED_S["sparsify"]
        + sum(4 * n_env * s.F**2 + 2 * s.M**2 * s.F for s in shape.soaps) / FLOP_RATE,
        "solve": t_nl
        + FIXED_S["solve"]
        + (rows + qr) / FLOP_RATE
        + n_shapes * (COMPILE_S["design_rows"] * LM + pair_compile + triplet_compile)
        + TRIPLET_ROW_S * triplet_work
        + per_chunk,
        "training_errors": t_nl
        + MEAN_WORK_S * work
        + n_shapes * COMPILE_S["mean"] * LM
        + TRIPLET_MEAN_S * triplet_work
        + n_shapes * triplet_compile / 2
        + per_chunk,
    }
