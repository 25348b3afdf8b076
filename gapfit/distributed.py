"""A fit on a dask-distributed cluster, equal to the serial fit.

``GAP(...).fit(path, client=client)`` (``gapfit fit --dask-workers N`` or
``--dask-scheduler tcp://host:8786``) works on shares of the file (``gapfit.cluster``):
consecutive configurations made of the serial fit's chunks. A worker reads its share
itself and keeps its frames. Every later task is a pure function of those
frames, the settings and small arrays from the client, so dask reruns it elsewhere if a
worker dies (lost frames are read again). A task builds one chunk at a time
(``assembly.padded_batches`` padded to the fit's global shape: one compilation per
kernel, as in the serial fit). Passes, and what comes back to the client:

1. survey: species, per-config e0 sums (``data.e0_from_counts``), a data-summary
   part; then each chunk's padded shape (neighbour lists only).
2. keys: a 128-bit key and the species of every SOAP environment
   (``sparsify.row_keys``, 17 bytes per atom), 2-body distance ranges (and, for
   random sparse points, the distinct distances), and the distinct 3-body triplets
   (32 bytes each; the serial fit holds every triplet too).
3. cur_points only: per share and species the R factor (F+1, F+1) of the candidate
   rows ``[x̂ | 0]``, reduced over shares by TSQR (``tsqr``); ``cur_basis`` on the
   client; then the leverage score of every candidate (8 bytes each).
4. the seeded choice on the client (``sparsify.choose_sparse``); the M chosen rows.
5. per share the R factor (M+1, M+1) of ``[Lambda^-1/2 K_nm | Lambda^-1/2 y]``
   (``assembly.scaled_chunks`` whitened and folded by ``sparse_gp.fold_whitened``),
   reduced by TSQR; ``sparse_gp.finish`` adds the prior rows and solves.
6. training errors: per share ``report.error_sums``.

The workers' descriptors equal the serial ones to the bit (same padded shapes, SOAP
constants computed by the client: ``cluster.host_constants``), and the selection runs
``sparsify``'s own steps, so the sparse set is the serial one: identical candidates
and seeded draws; the leverage scores differ only by the rounding of the R factor
(~1e-8 relative on cu_emt, where directions down to s_j / s_0 ~ 5e-12 count), so a
draw could differ only if a uniform variate fell that close to a boundary of the
cumulative scores. Predictions then equal the serial ones to rounding, and so do the
weights up to the condition number of R. fps needs all candidate rows in one process
and is refused. A worker holds one chunk's descriptors and kernel rows, the (M+1)^2
and per-species (F+1)^2 factors, compiled kernels, and its shares' frames (about
0.1 kB per atom).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from dask.distributed import Client

from gapfit.angle_3b import TripletSpec, distinct_triplets
from gapfit.assembly import (
    fitted_predictions,
    padded_batches,
    scaled_chunks,
)
from gapfit.baseline import Baseline
from gapfit.cluster import (
    RETRIES,
    SHARES_PER_WORKER,
    Share,
    host_constants,
    n_workers,
    plan_shares,
)
from gapfit.data import (
    Frame,
    LabelKeys,
    config_sizes,
    e0_from_counts,
    read_frames,
    species_counts,
)
from gapfit.distance_2b import PairSummary
from gapfit.dscribe_backend import check_backend
from gapfit.errors import GapfitError
from gapfit.fit import (
    GAP,
    data_part,
    merge_data_parts,
    pair_term,
    term_specs,
    triplet_cutoff,
    triplet_term,
)
from gapfit.kernels import normalise
from gapfit.memory import peak_rss_gib
from gapfit.model import Model
from gapfit.neighbours import NO_SHAPE, SHAPE_FIELDS, Batch, batch_shape
from gapfit.report import error_sums, merge_error_sums, table_from_sums
from gapfit.soap import SoapSpec
from gapfit.sparse_gp import empty_factor, finish, fold_whitened, prior_factor
from gapfit.sparsify import (
    check_selection,
    choose_sparse,
    cur_basis,
    distinct_rows,
    leverage_scores,
    normalise_rows,
    row_keys,
)
from gapfit.terms import SoapTerm, Term, block_K_mm, table_widths
from gapfit.tsqr import RowFactor, stack_qr, tree_reduce


@dataclass(frozen=True, eq=False)
class _Job:
    """What every task of a fit needs besides its share's frames."""

    gap: GAP  # the settings (progress off)
    species: tuple[int, ...]
    specs: dict  # {term: (descriptor spec, kernel)}, constants computed by the client
    shape: tuple[int, ...]  # padded batch shape of every chunk (neighbours)
    widths: tuple[int, ...] = ()  # each term's pair-table width (terms.table_widths)

    def chunks(
        self, frames: Sequence[Frame], share: Share
    ) -> Iterator[tuple[int, int, tuple[int, ...]]]:
        """``(first environment, environments, chunk)`` of the share's chunks."""
        offset = 0
        for c in share.chunks:
            n = sum(len(frames[k].numbers) for k in c)
            yield offset, n, c
            offset += n

    def batch(self, frames: Sequence[Frame], chunk: Sequence[int]) -> Batch:
        cutoff = max(s.neighbour_cutoff for s, _ in self.specs.values())
        return padded_batches(
            frames,
            [chunk],
            self.species,
            cutoff,
            self.shape,
            triplet_cutoff=triplet_cutoff(self.specs),
        )[0]

    def descriptors(
        self, frames: Sequence[Frame], chunk: Sequence[int], name: str | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each term's descriptors of one chunk (``GAP._descriptors``; only the term
        ``name``'s if given): SOAP X and species Z, pair distances r and types t,
        triplet descriptors d and types t."""
        specs = self.specs if name is None else {name: self.specs[name]}
        return self.gap._descriptors(
            specs, frames, [chunk], [self.batch(frames, chunk)]
        )


# ---- worker tasks: pure functions of (frames, settings, small arrays) --------------
def _read(path: str, share: Share, keys: LabelKeys) -> list[Frame]:
    index = f"{share.start}:{share.stop}"
    return read_frames(path, keys, require=("energy", "forces"), index=index)


def _survey(frames: list[Frame], baseline: Baseline | None) -> dict:
    """Species, their counts and the energies e0 is fitted to (less the baseline's)
    of a share, and its data summary."""
    species = tuple(sorted({int(z) for f in frames for z in f.numbers}))
    learnt = frames if baseline is None else baseline.residual(frames)
    return {
        "species": species,
        "counts": species_counts(frames, species),
        "energies": [f.energy for f in learnt],
        "config_types": [f.config_type for f in frames],
        "data": data_part(frames),
    }


def _shape(job: _Job, frames: list[Frame], share: Share) -> tuple[int, ...]:
    """The largest padded batch shape of the share's chunks, then each term's
    largest pair-table width (``terms.table_widths``)."""
    specs = [spec for spec, _ in job.specs.values()]
    sizes = []
    for _, _, c in job.chunks(frames, share):
        batch = job.batch(frames, c)
        sizes.append((*batch_shape(batch), *table_widths(specs, batch)))
    return tuple(int(max(n)) for n in zip(*sizes, strict=True))


def _keys(job: _Job, frames: list[Frame], share: Share) -> dict[str, dict]:
    """Per term: a SOAP term's environment keys and species ``{"keys", "Z"}``, a
    2-body term's ``PairSummary`` ``{"pairs"}``, a 3-body term's distinct triplets
    (``angle_3b.distinct_triplets``) ``{"d", "t"}``."""
    parts: dict[str, list] = {name: [] for name in job.specs}
    named = job.gap._term_settings()
    for _, _, c in job.chunks(frames, share):
        for name, (values, types) in job.descriptors(frames, c).items():
            spec = job.specs[name][0]
            if isinstance(spec, SoapSpec):
                parts[name].append((row_keys(normalise_rows(values)), types))
            elif isinstance(spec, TripletSpec):
                parts[name].append(distinct_triplets(values, types))
            else:
                method = named[name][1]["sparse_method"]
                parts[name].append(PairSummary.of(spec, values, types, method))
    out: dict[str, dict] = {}
    for name, got in parts.items():
        spec = job.specs[name][0]
        if isinstance(spec, SoapSpec):
            out[name] = {
                "keys": np.concatenate([k for k, _ in got]),
                "Z": np.concatenate([z for _, z in got]),
            }
        elif isinstance(spec, TripletSpec):
            d, t = (np.concatenate(x) for x in zip(*got, strict=True))
            out[name] = dict(zip(("d", "t"), distinct_triplets(d, t), strict=True))
        else:
            out[name] = {"pairs": PairSummary.merged(spec, got)}
    return out


def _factor(
    job: _Job,
    frames: list[Frame],
    share: Share,
    candidates: dict[int, np.ndarray],
    name: str,
) -> dict[int, np.ndarray]:
    """Per species, the R factor of ``[x̂ | 0]`` over the share's ``candidates`` (of
    the SOAP term ``name``)."""
    d = job.specs[name][0].n_features
    folders = {z: RowFactor(d, 2 * (d + 1)) for z in candidates}
    for offset, n, c in job.chunks(frames, share):
        local = {z: share.within(rows, offset, n) for z, rows in candidates.items()}
        if any(v.size for v in local.values()):
            X_hat = normalise_rows(job.descriptors(frames, c, name)[name][0])
            for z, rows in local.items():
                folders[z].add(X_hat[rows])
    return {z: f.factor() for z, f in folders.items()}


def _scores(
    job: _Job,
    frames: list[Frame],
    share: Share,
    candidates: dict[int, np.ndarray],
    bases: dict[int, np.ndarray],
    name: str,
) -> dict[int, np.ndarray]:
    """Per species, the leverage score of each of the share's ``candidates`` (of
    the SOAP term ``name``)."""
    out: dict[int, list[np.ndarray]] = {z: [np.zeros(0)] for z in candidates}
    for offset, n, c in job.chunks(frames, share):
        local = {z: share.within(rows, offset, n) for z, rows in candidates.items()}
        if any(v.size for v in local.values()):
            X_hat = normalise_rows(job.descriptors(frames, c, name)[name][0])
            for z, rows in local.items():
                out[z].append(leverage_scores(X_hat[rows], bases[z]))
    return {z: np.concatenate(v) for z, v in out.items()}


def _rows(
    job: _Job, frames: list[Frame], share: Share, wanted: np.ndarray, name: str
) -> np.ndarray:
    """Rows of the SOAP term ``name`` of the share's atoms among the sorted global
    ``wanted`` ones."""
    out = [np.zeros((0, job.specs[name][0].n_features))]
    for offset, n, c in job.chunks(frames, share):
        local = share.within(wanted, offset, n)
        if local.size:
            out.append(job.descriptors(frames, c, name)[name][0][local])
    return np.concatenate(out)


def _solve(job: _Job, frames: list[Frame], share: Share, model: Model) -> np.ndarray:
    """R factor ``(M+1, M+1)`` of the share's whitened scaled kernel rows
    ``[A L_mm^-T | b]`` (each worker factors ``K_mm`` itself: O(M^3), no transfer)."""
    sigmas = job.gap._sigmas()
    K_mm = block_K_mm(model.terms)
    L = prior_factor(K_mm, job.gap.sparse_jitter)
    R = empty_factor(len(K_mm))
    for _, _, c in job.chunks(frames, share):
        batch = job.batch(frames, c)
        for A, b in scaled_chunks(
            model, frames, [c], [batch], sigmas, widths=job.widths
        ):
            R = fold_whitened(R, A, b, L)
    return np.asarray(R)


def _errors(job: _Job, frames: list[Frame], share: Share, model: Model) -> dict:
    """Error sums of the share's frames, predicted from their kernel rows (the row
    programs ``_solve`` compiled on this worker; ``GAP.fit`` does the same)."""
    chunks = [c for _, _, c in job.chunks(frames, share)]
    batches = [job.batch(frames, c) for c in chunks]
    return error_sums(frames, fitted_predictions(model, frames, chunks, batches))


# ---- the client's side -------------------------------------------------------------
def fit_on_cluster(gap: GAP, path: str | os.PathLike, client: Client) -> GAP:
    """``gap.fit(path)`` on the workers of ``client`` (see the module docstring);
    also sets ``gap.worker_memory_gib_``: each worker process's peak RSS, GiB."""
    if not isinstance(path, str | os.PathLike):
        raise GapfitError(
            "a fit on a dask cluster reads the training data on the workers: pass "
            "the path of an extxyz file (readable at that path on every worker), "
            "not frames."
        )
    if gap.optimise_hyperparameters:
        raise GapfitError(
            "optimise_hyperparameters is not offered on a dask cluster yet; fit "
            "without --dask-scheduler/--dask-workers, or without the optimisation."
        )
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}
    t0 = time.perf_counter()
    named = gap._term_settings()
    gap._sigmas()  # validate before any work
    baseline = Baseline.of(gap.baseline, gap.baseline_kwargs)
    for soap in (s for kind, s in named.values() if kind == "soap"):
        check_backend(gap.descriptor_backend, soap["weighting"])
        method, _, _ = check_selection(
            soap["n_sparse"], soap["sparse_method"], gap.rnd_seed
        )
        if method == "fps":
            raise GapfitError(
                "sparse_method=fps needs every candidate descriptor in one process, "
                "so it is not offered on a dask cluster; use cur_points, uniform or "
                "random, or fit without --dask-scheduler/--dask-workers."
            )
        if soap["config_type_n_sparse"] is not None:
            raise GapfitError(
                "config_type_n_sparse is not offered on a dask cluster yet; give "
                "n_sparse instead, or fit without --dask-scheduler/--dask-workers."
            )
    path = os.path.abspath(path)
    n_procs = n_workers(client)
    shares = plan_shares(
        config_sizes(path), gap.chunk_atoms, SHARES_PER_WORKER * n_procs
    )
    submit = functools.partial(client.submit, pure=False, retries=RETRIES)
    frames = [submit(_read, path, s, gap.keys) for s in shares]
    surveys = client.gather([submit(_survey, f, baseline) for f in frames])
    species = tuple(sorted({z for s in surveys for z in s["species"]}))
    counts = np.concatenate(
        [_columns(s["counts"], s["species"], species) for s in surveys]
    )
    energies = [e for s in surveys for e in s["energies"]]
    config_types = [c for s in surveys for c in s["config_types"]]
    e0 = e0_from_counts(counts, energies, config_types, gap.e0_method, species, gap.e0)
    timings["read"] = time.perf_counter() - t0
    memory["read"] = peak_rss_gib()

    t0 = time.perf_counter()
    settings = copy.copy(gap)
    settings.progress = False
    specs = term_specs(named, species)
    host_constants(spec for spec, _ in specs.values())
    job = _Job(settings, species, specs, NO_SHAPE)

    def per_share(task, *args) -> list:
        """Futures of ``task(job, frames, share, *args)`` for every share."""
        return [
            submit(task, job, f, s, *args) for f, s in zip(frames, shares, strict=True)
        ]

    sizes = [int(n) for n in np.max(client.gather(per_share(_shape)), 0)]
    job = dataclasses.replace(
        job, shape=tuple(sizes[:SHAPE_FIELDS]), widths=tuple(sizes[SHAPE_FIELDS:])
    )
    keys = client.gather(per_share(_keys))
    timings["descriptors"] = time.perf_counter() - t0
    memory["descriptors"] = peak_rss_gib()

    t0 = time.perf_counter()
    terms: list[Term] = []
    for name, (kind, term_settings) in named.items():
        spec, kernel = job.specs[name]
        parts = [k[name] for k in keys]
        seed = job.gap.rnd_seed
        if kind == "distance_2b":
            summary = PairSummary.merged(spec, [p["pairs"] for p in parts])
            terms.append(pair_term(spec, kernel, term_settings, summary, seed, name))
            continue
        if kind == "angle_3b":
            d, t = (np.concatenate([p[k] for p in parts]) for k in ("d", "t"))
            terms.append(triplet_term(spec, kernel, term_settings, d, t, seed))
            continue
        Z = np.concatenate([p["Z"] for p in parts])
        keyed = np.concatenate([p["keys"] for p in parts])
        idx = _select(client, job, frames, shares, Z, keyed, name, term_settings)
        rows = per_share(_rows, idx, name)
        X_hat, _ = normalise(jnp.asarray(np.concatenate(client.gather(rows))))
        terms.append(SoapTerm(spec, kernel, np.asarray(X_hat), Z[idx], name))
    K_mm = block_K_mm(terms)
    timings["sparsify"] = time.perf_counter() - t0
    memory["sparsify"] = peak_rss_gib()

    t0 = time.perf_counter()
    model = Model(tuple(terms), species, None, e0, baseline=baseline)
    L = prior_factor(K_mm, gap.sparse_jitter)  # a bad sparse set fails before the pass
    shared = client.scatter(model, broadcast=True, hash=False)
    parts = per_share(_solve, shared)
    R_data = tree_reduce(parts, functools.partial(submit, stack_qr)).result()
    model.posterior = finish(jnp.asarray(R_data), L)
    timings["solve"] = time.perf_counter() - t0
    memory["solve"] = peak_rss_gib()

    t0 = time.perf_counter()
    shared = client.scatter(model, broadcast=True, hash=False)
    sums = client.gather(
        [
            submit(_errors, job, f, s, shared)
            for f, s in zip(frames, shares, strict=True)
        ]
    )
    errors = table_from_sums(merge_error_sums(sums))
    timings["training_errors"] = time.perf_counter() - t0
    memory["training_errors"] = peak_rss_gib()
    workers = {k: round(v, 4) for k, v in client.run(peak_rss_gib).items()}

    model.info = {
        **gap._info(named),
        "data": merge_data_parts([s["data"] for s in surveys]),
        "n_sparse": {term.name: term.sparse_counts() for term in terms},
        "distributed": {
            "n_workers": n_procs,
            "n_shares": len(shares),
            "worker_peak_rss_gib": workers,
        },
        "timings_s": timings,
        "peak_rss_gib": memory,
        "training_errors": errors,
    }
    gap.model_ = model
    gap.training_errors_ = errors
    gap.timings_ = timings
    gap.memory_gib_ = memory
    gap.worker_memory_gib_ = workers
    return gap


def _columns(
    counts: np.ndarray, local: Sequence[int], species: Sequence[int]
) -> np.ndarray:
    """Counts over the ``local`` species as columns of all ``species``."""
    out = np.zeros((len(counts), len(species)), np.int64)
    out[:, [species.index(z) for z in local]] = counts
    return out


def _select(
    client: Client,
    job: _Job,
    frames: list,
    shares: list[Share],
    Z: np.ndarray,
    keys: np.ndarray,
    name: str,
    soap: dict,
) -> np.ndarray:
    """``sparsify.select_sparse`` over the workers' environments: sorted global
    indices of the chosen environments of the SOAP term ``name`` (species ``Z``,
    row keys ``keys``)."""
    submit = functools.partial(client.submit, pure=False, retries=RETRIES)
    n_sparse, method, seed = soap["n_sparse"], soap["sparse_method"], job.gap.rnd_seed
    candidates = distinct_rows(Z, keys)
    centre = job.specs[name][0].centre_index  # a term of one central species
    if centre is not None:
        candidates = {z: rows for z, rows in candidates.items() if z == centre}
    scored = {z: rows for z, rows in candidates.items() if rows.size > n_sparse}
    scores = {}
    if check_selection(n_sparse, method, seed)[0] == "cur_points" and scored:
        local = [
            {z: s.within(r) + s.atom_start for z, r in scored.items()} for s in shares
        ]
        parts = [
            submit(_factor, job, f, s, c, name)
            for f, s, c in zip(frames, shares, local, strict=True)
        ]
        d = job.specs[name][0].n_features
        bases = {}
        for z, rows in scored.items():
            factors = [submit(operator.getitem, p, z) for p in parts]
            R = tree_reduce(factors, functools.partial(submit, stack_qr)).result()
            bases[z] = cur_basis(R[:d, :d], rows.size, n_sparse)
        [shared] = client.scatter([bases], broadcast=True, hash=False)
        got = client.gather(
            [
                submit(_scores, job, f, s, c, shared, name)
                for f, s, c in zip(frames, shares, local, strict=True)
            ]
        )
        scores = {z: np.concatenate([g[z] for g in got]) for z in scored}
    return choose_sparse(candidates, n_sparse, method, seed, scores)
