"""Streamed assembly: kernel rows of energies, forces and virials, chunk by chunk.

Every consumer of the training rows (the fit's QR, incremental updates, the evidence
statistics, distributed workers) walks the data through ``scaled_chunks``: one padded
neighbour-list batch per chunk of configurations, the model's kernel rows on it, scaled
by the inverse noise ``Lambda^-1/2`` (missing labels become zero rows). Memory is one
chunk's rows, (E + 3 n_atoms + 6 C) x M, at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gapfit.baseline import Baseline
from gapfit.blocks import Rows, batch_arrays, voigt_of
from gapfit.data import Frame, Sigmas
from gapfit.memory import release_freed
from gapfit.model import Model
from gapfit.neighbours import (
    NO_SHAPE,
    Batch,
    batch_shape,
    make_batch,
    pad_batch,
)
from gapfit.terms import TABLE_SIZES, row_pairs, table_widths


def padded_batches(
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    species: tuple[int, ...],
    cutoff: float,
    shape: Sequence[int] = NO_SHAPE,
    triplet_cutoff: float = 0.0,
) -> list[Batch]:
    """Neighbour lists of every chunk, padded to one shape: one compilation of each
    kernel instead of one per shape (compiled code dominates the fit's memory).

    The shape is the largest of the chunks', and at least ``shape`` (atoms, pairs,
    configurations): a distributed fit passes its global one, so that each worker
    builds one chunk at a time and still compiles once.
    """
    batches = [chunk_batch(frames, c, species, cutoff, triplet_cutoff) for c in chunks]
    largest = [max(n) for n in zip(shape, *map(batch_shape, batches), strict=True)]
    return [pad_batch(b, *largest) for b in batches]


def model_batches(
    model: Model,
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    shape: list[int] | None = None,
) -> list[Batch]:
    """``padded_batches`` with the model's species and cutoffs, padded to at least
    ``shape`` (``neighbours.NO_SHAPE`` fields), which is raised in place to theirs."""
    batches = padded_batches(
        frames,
        chunks,
        model.species,
        model.neighbour_cutoff,
        shape or NO_SHAPE,
        model.triplet_cutoff,
    )
    if shape is not None:
        shape[:] = batch_shape(batches[0])  # all batches have this shape
    return batches


def chunk_batch(
    frames: Sequence[Frame],
    chunk: Sequence[int],
    species: tuple[int, ...],
    cutoff: float,
    triplet_cutoff: float = 0.0,
) -> Batch:
    """The unpadded neighbour-list batch of one chunk of ``frames`` (with triplets
    within ``triplet_cutoff`` Å for a 3-body term)."""
    return make_batch(
        [frames[k] for k in chunk],
        species,
        cutoff,
        [frames[k].where for k in chunk],
        triplet_cutoff=triplet_cutoff,
    )


def scaled_rows(
    rows,
    batch,
    frames: Sequence[Frame],
    sigmas: Sigmas,
    e0: Mapping[int, float],
    species: Sequence[int],
    baseline: Baseline | None = None,
):
    """Rows ``Lambda^-1/2 K`` and targets ``Lambda^-1/2 y`` of one chunk (padded,
    missing labels as zero rows); ``y``: the labels less e0 and the ``baseline``'s
    values (the one place where labels meet the baseline)."""
    if baseline is not None:
        frames = baseline.residual(frames)
    C, A = batch.config_mask.shape[0], batch.atom_mask.shape[0]
    e0_arr = np.array([e0[z] for z in species])
    yE, wE = np.zeros(C), np.zeros(C)
    yF, wF = np.zeros((A, 3)), np.zeros((A, 3))
    yW, wW = np.zeros((C, 6)), np.zeros((C, 6))
    a0 = 0
    for c, f in enumerate(frames):
        n = len(f.numbers)
        s_e, s_f, s_w = sigmas.for_frame(f)
        if f.energy is not None:
            yE[c] = f.energy - e0_arr[batch.species[a0 : a0 + n]].sum()
            wE[c] = 1.0 / s_e
        if f.forces is not None:
            yF[a0 : a0 + n], wF[a0 + f.fitted_atoms()] = f.forces, 1.0 / s_f
        if f.virial is not None:
            yW[c] = voigt_of(f.virial)
            wW[c] = 1.0 / s_w
        a0 += n
    b = np.concatenate([yE * wE, (yF * wF).ravel(), (yW * wW).ravel()])
    return _weighted(rows, wE, wF, wW), jnp.asarray(b)


@jax.jit
def _weighted(rows: Rows, wE: jax.Array, wF: jax.Array, wW: jax.Array) -> jax.Array:
    """The energy, force and virial rows scaled by their inverse sigmas, stacked."""
    A, C = wF.shape[0], wE.shape[0]
    return jnp.concatenate(
        [
            rows.energy * wE[:, None],
            (rows.forces * wF[:, :, None]).reshape(3 * A, -1),
            (rows.virial * wW[:, :, None]).reshape(6 * C, -1),
        ]
    )


def scaled_chunks(
    model: Model,
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    batches: Sequence[Batch],
    sigmas: Sigmas,
    progress: bool = False,
    widths: Sequence[int] | None = None,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """``(Lambda^-1/2 K_nm, Lambda^-1/2 y)`` of each chunk, in order; each term's
    rows over its own pairs (``terms.row_pairs``, ``widths`` of ``table_widths``: by
    default the largest of ``batches``', one jit shape for all)."""
    specs = [t.spec for t in model.terms]
    if widths is None:
        sizes = [table_widths(specs, b) for b in batches] or [
            (0,) * TABLE_SIZES * len(specs)
        ]
        widths = np.max(sizes, axis=0).tolist()
    for chunk, batch in tqdm(
        list(zip(chunks, batches, strict=True)),
        desc="kernel rows + QR",
        unit="chunk",
        disable=not progress,
    ):
        rows = model.rows(batch_arrays(batch), row_pairs(specs, batch, widths))
        sel = [frames[k] for k in chunk]
        yield scaled_rows(
            rows, batch, sel, sigmas, model.e0, model.species, model.baseline
        )
        del rows
        release_freed()  # the chunk's XLA buffers, or RSS grows chunk by chunk


def fitted_predictions(
    model: Model,
    frames: Sequence[Frame],
    chunks: Sequence[Sequence[int]],
    batches: Sequence[Batch],
) -> list[dict]:
    """``Model.predict``'s results (without stds) for the frames covered by
    ``chunks`` (indices into ``frames``, with their ``batches``), in frame order, by
    the mean's program (one set of pair-table widths for all batches: one
    compilation)."""
    out: list[dict] = [{} for _ in frames]
    widths = np.max([model.table_widths(batch) for batch in batches], axis=0)
    for chunk, batch in zip(chunks, batches, strict=True):
        mean = model.mean(batch._asdict(), model.tables(batch, widths.tolist()))
        results = model.unpack([frames[k] for k in chunk], batch, mean, None)
        for k, result in zip(chunk, results, strict=True):
            out[k] = result
        del mean
        release_freed()
    return out
