"""Neighbour lists and padded batches of configurations for the jitted numerics.

A ``Batch`` concatenates the atoms and the full (i -> j, both directions) pair lists of
several configurations, padded to bucketed sizes so that jit compiles a handful of
shapes. Pair vectors are ``D_p = r_j - r_i + S_p . cell`` (Å); everything downstream is
a function of ``D``, so forces and virials come from ``dE/dD``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import vesin

from gapfit.errors import GapfitError

# One pass over more atoms than this (a pool's descriptors, a prediction) builds its
# neighbour lists when it gets to each batch, after a first pass for the common
# padded shape, instead of holding them all (about 3 kB per atom: 0.6 GB here)
HELD_ATOMS = 200_000


class Structure(Protocol):
    """Anything with ``numbers``, ``positions``, ``cell``, ``pbc`` (Atoms, Frame)."""

    numbers: np.ndarray
    positions: np.ndarray
    pbc: np.ndarray


class Batch(NamedTuple):
    """Padded atoms and pairs of ``n_configs`` configurations (numpy arrays)."""

    D: np.ndarray  # (P, 3) Å pair vectors
    centre: np.ndarray  # (P,) atom index i of each pair
    neighbour: np.ndarray  # (P,) atom index j of each pair
    neighbour_species: np.ndarray  # (P,) species index of j
    pair_mask: np.ndarray  # (P,) 1 real, 0 padding
    canonical: np.ndarray  # (P,) 1 for one direction of each i-j pair (pair terms)
    canonical_index: np.ndarray  # (Q,) indices of the canonical pairs, padded
    pair_config: np.ndarray  # (P,) configuration index
    species: np.ndarray  # (A,) species index of each atom
    atom_mask: np.ndarray  # (A,) 1 real, 0 padding
    atom_config: np.ndarray  # (A,) configuration index
    config_mask: np.ndarray  # (C,) 1 real, 0 padding
    n_atoms: np.ndarray  # (C,) atoms per configuration
    # 3-body terms (empty without one): the unordered neighbour pairs (p, q) of one
    # centre, both within the triplet cutoff (pad: a masked pair), and per atom the
    # triplets that move with it (pad: a padded triplet)
    triplet_pairs: np.ndarray  # (T, 2) pair indices
    triplet_touch: np.ndarray  # (A, W) triplet indices


SHAPE_FIELDS = 5  # a batch's padded shape: atoms, pairs, configs, triplets, width
NO_SHAPE = (0,) * SHAPE_FIELDS


def bucket(n: int, minimum: int = 8) -> int:
    """Smallest size >= n of the form 2^k x {1, 1.25, 1.5, 1.75}: at most 25 % padding
    and a handful of distinct jit shapes."""
    size = minimum
    while size < n:
        size *= 2
    for frac in (0.625, 0.75, 0.875):  # of the next power of two
        if size >= 16 and int(size * frac) >= n:
            return int(size * frac)
    return size


def _cell(structure: Structure) -> np.ndarray:
    return np.asarray(structure.cell, dtype=float).reshape(3, 3)


def pairs(
    structure: Structure, cutoff: float, where: str = ""
) -> tuple[np.ndarray, ...]:
    """Full neighbour list within ``cutoff`` Å: ``(i, j, D)`` with periodic images.

    Raises:
        GapfitError: a periodic direction without a usable cell vector.
    """
    pbc = np.asarray(structure.pbc, dtype=bool).reshape(3)
    cell = _cell(structure)
    positions = np.asarray(structure.positions, dtype=float)
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        if (lengths[pbc] < 1e-6).any() or abs(np.linalg.det(cell)) < 1e-6 and pbc.all():
            raise GapfitError(
                f"{where or 'structure'}: periodic along {pbc.tolist()} but the cell "
                f"{cell.tolist()} has a zero or degenerate vector; set the cell or "
                "pbc=False for that direction."
            )
        n_images = np.prod([2 * np.ceil(cutoff / h) + 1 for h in _heights(cell)[pbc]])
        if n_images * len(positions) > 5e6:
            raise GapfitError(
                f"{where or 'structure'}: the cell is so small for cutoff "
                f"{cutoff} Å that "
                f"{int(n_images)} periodic images are needed; use a supercell."
            )
    calc = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, D = calc.compute(
        positions,
        cell if pbc.any() else np.zeros((3, 3)),
        pbc.tolist(),
        quantities="ijD",
    )
    return i.astype(np.int64), j.astype(np.int64), np.asarray(D, dtype=float)


def _heights(cell: np.ndarray) -> np.ndarray:
    """Perpendicular heights of the cell (Å), inf for a zero volume."""
    volume = abs(np.linalg.det(cell))
    cross = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cross > 0, volume / np.where(cross > 0, cross, 1), np.inf)


def species_index(
    numbers: np.ndarray, species: Sequence[int], where: str = ""
) -> np.ndarray:
    """Map atomic numbers to indices into the sorted ``species``; unknown ones raise."""
    species = np.asarray(species)
    idx = np.searchsorted(species, numbers)
    bad = (idx >= len(species)) | (
        species[np.minimum(idx, len(species) - 1)] != numbers
    )
    if bad.any():
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in np.asarray(numbers)[bad]})
        known = [chemical_symbols[z] for z in species]
        raise GapfitError(
            f"{where or 'structure'} contains {unknown}, which the model was not "
            "fitted "
            f"on (it knows {known}); refit with these species in the training data."
        )
    return idx.astype(np.int64)


def make_batch(
    structures: Sequence[Structure],
    species: Sequence[int],
    cutoff: float,
    wheres: Sequence[str] | None = None,
    pad: bool = True,
    triplet_cutoff: float = 0.0,
) -> Batch:
    """Concatenate and pad the neighbour lists of ``structures`` into one ``Batch``,
    with the triplets of the pairs shorter than ``triplet_cutoff`` Å (none for 0)."""
    wheres = wheres or [f"config {k}" for k in range(len(structures))]
    parts = []
    offset = 0
    for c, (s, where) in enumerate(zip(structures, wheres, strict=True)):
        z = species_index(np.asarray(s.numbers), species, where)
        i, j, D = pairs(s, cutoff, where)
        parts.append((z, i + offset, j + offset, D, c))
        offset += len(z)
    n_atoms = np.array([len(p[0]) for p in parts], dtype=np.int64)
    n_pairs = sum(len(p[1]) for p in parts)
    A = bucket(offset + 1) if pad else offset
    P = bucket(n_pairs + 1) if pad else n_pairs
    C = bucket(len(parts) + 1, 2) if pad else len(parts)
    b = Batch(
        D=np.tile([1.0, 0.0, 0.0], (P, 1)),
        centre=np.full(P, A - 1),
        neighbour=np.full(P, A - 1),
        neighbour_species=np.zeros(P, np.int64),
        pair_mask=np.zeros(P),
        canonical=np.zeros(P),
        canonical_index=np.zeros(0, np.int64),
        pair_config=np.full(P, C - 1),
        species=np.zeros(A, np.int64),
        atom_mask=np.zeros(A),
        atom_config=np.full(A, C - 1),
        config_mask=np.zeros(C),
        n_atoms=np.zeros(C, np.int64),
        triplet_pairs=np.zeros((0, 2), np.int64),
        triplet_touch=np.zeros((A, 0), np.int64),
    )
    a0 = p0 = 0
    for z, i, j, D, c in parts:
        na, npair = len(z), len(i)
        b.species[a0 : a0 + na] = z
        b.atom_mask[a0 : a0 + na] = 1.0
        b.atom_config[a0 : a0 + na] = c
        sl = slice(p0, p0 + npair)
        b.D[sl], b.centre[sl], b.neighbour[sl] = D, i, j
        b.neighbour_species[sl] = b.species[j]
        b.pair_mask[sl] = 1.0
        b.canonical[sl] = _canonical(i, j, D)
        b.pair_config[sl] = c
        a0, p0 = a0 + na, p0 + npair
    b.config_mask[: len(parts)] = 1.0
    b.n_atoms[: len(parts)] = n_atoms
    index = np.flatnonzero(b.canonical).astype(np.int64)
    b = b._replace(canonical_index=index)
    if triplet_cutoff > 0:
        b = _with_triplets(b, triplet_cutoff, pad)
    return _pad_canonical(b) if pad else b


def _with_triplets(b: Batch, cutoff: float, pad: bool) -> Batch:
    """``b`` with its triplets: every unordered pair of distinct pairs out of one
    centre, both shorter than ``cutoff`` Å, and each atom's triplets (as centre or
    either neighbour, once each). Padding points at the last (masked) pair slot."""
    P, A = len(b.pair_mask), len(b.species)
    short = np.flatnonzero(
        (b.pair_mask > 0) & (np.einsum("pk,pk->p", b.D, b.D) < cutoff**2)
    )
    short = short[np.argsort(b.centre[short], kind="stable")]
    counts = np.bincount(b.centre[short], minlength=A)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(short)) - np.repeat(starts, counts)
    partners = np.repeat(counts, counts) - 1 - rank  # later pairs of the same centre
    first = np.repeat(np.arange(len(short)), partners)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(partners) - partners, partners)
    pq = np.stack([short[first], short[first + 1 + offset]], axis=1)
    T = bucket(len(pq) + 1) if pad else len(pq)
    triplets = np.full((T, 2), P - 1, np.int64)
    triplets[: len(pq)] = pq
    atoms = np.stack([b.centre[pq[:, 0]], b.neighbour[pq[:, 0]], b.neighbour[pq[:, 1]]])
    # (atom, triplet) once each: a periodic image may give one atom two roles
    once = np.stack(
        [
            np.ones(len(pq), bool),
            atoms[1] != atoms[0],
            (atoms[2] != atoms[0]) & (atoms[2] != atoms[1]),
        ]
    )
    atom = atoms[once]
    triplet = np.broadcast_to(np.arange(len(pq)), atoms.shape)[once]
    most = np.bincount(atom, minlength=A).max(initial=0)
    W = bucket(int(most), 4) if pad else int(most)
    table = _per_atom(atom, triplet, A, W, T - 1 if pad else 0)
    return b._replace(triplet_pairs=triplets, triplet_touch=table)


def _pad_canonical(batch: Batch) -> Batch:
    """``canonical_index`` padded with the last pair slot (masked) to at least
    ``P // 2 + 1`` entries: a function of the padded pair count P alone, so that
    batches padded to the same P have one shape (each i-j pair is listed both ways,
    one of them canonical, so at most ``(P - 1) / 2`` are real)."""
    P, index = len(batch.pair_mask), batch.canonical_index
    if batch.pair_mask[P - 1] != 0:  # no masked slot to point at: leave as is
        return batch
    padding = np.full(max(P // 2 + 1 - len(index), 0), P - 1, dtype=np.int64)
    return batch._replace(canonical_index=np.concatenate([index, padding]))


def _canonical(i: np.ndarray, j: np.ndarray, D: np.ndarray) -> np.ndarray:
    """1.0 for exactly one of the two directions (i->j, j->i) of every pair: i < j, or
    for periodic self-images the direction whose first non-zero component is > 0."""
    first = np.take_along_axis(D, np.argmax(np.abs(D) > 1e-12, axis=1)[:, None], 1)
    return ((i < j) | ((i == j) & (first[:, 0] > 0))).astype(float)


def batch_shape(batch: Batch) -> tuple[int, ...]:
    """``(atoms, pairs, configurations, triplets, triplets per atom)`` of a (padded)
    batch."""
    return (
        len(batch.atom_mask),
        len(batch.pair_mask),
        len(batch.config_mask),
        len(batch.triplet_pairs),
        batch.triplet_touch.shape[1],
    )


def pad_batch(batch: Batch, A: int, P: int, C: int, T: int = 0, W: int = 0) -> Batch:
    """``batch`` padded to at least ``A`` atoms, ``P`` pairs, ``C`` configurations,
    ``T`` triplets and ``W`` triplets per atom (one jit shape for many batches); the
    padding is masked like ``make_batch``'s."""
    A0, P0, C0 = len(batch.atom_mask), len(batch.pair_mask), len(batch.config_mask)
    T0, W0 = len(batch.triplet_pairs), batch.triplet_touch.shape[1]
    A, P, C, T, W = max(A, A0), max(P, P0), max(C, C0), max(T, T0), max(W, W0)

    def grow(x: np.ndarray, n: int, fill) -> np.ndarray:
        extra = np.empty((n - len(x), *x.shape[1:]), x.dtype)
        extra[...] = fill
        return np.concatenate([x, extra])

    atoms = {"species": 0, "atom_mask": 0.0, "atom_config": C - 1}
    pairs = {
        "D": [1.0, 0.0, 0.0],
        "centre": A - 1,
        "neighbour": A - 1,
        "neighbour_species": 0,
        "pair_mask": 0.0,
        "canonical": 0.0,
        "pair_config": C - 1,
    }
    configs = {"config_mask": 0.0, "n_atoms": 0}
    new = {k: grow(getattr(batch, k), A, v) for k, v in atoms.items()}
    new.update({k: grow(getattr(batch, k), P, v) for k, v in pairs.items()})
    new.update({k: grow(getattr(batch, k), C, v) for k, v in configs.items()})
    if T0:  # pad triplets: the last pair slot (masked); padded atoms touch none
        new["triplet_pairs"] = grow(batch.triplet_pairs, T, P - 1)
        touch = grow(batch.triplet_touch.T, W, T - 1).T
        new["triplet_touch"] = grow(touch, A, T - 1)
    else:
        new["triplet_touch"] = np.zeros((A, 0), np.int64)
    return _pad_canonical(batch._replace(**new))


class PairTables(NamedTuple):
    """The pairs of a batch laid out per atom: per-centre sums of the mean's pair
    gradients, per-atom covariances of the std."""

    incoming: np.ndarray  # (A, K_in) pairs into each atom j (pad: a masked pair)
    outgoing: (
        np.ndarray
    )  # (A, K) their slots in incoming.ravel() by centre (pad: A K_in)
    by_centre: np.ndarray  # (C, K) pairs out of each of centres (pad: a masked pair)
    centres: np.ndarray  # (C,) the atoms whose environments the mean works over
    centre_mask: np.ndarray  # (C,) 1 for a real centre, 0 for padding (atom 0)


def _per_atom(atom: np.ndarray, values: np.ndarray, n_atoms: int, K: int, fill: int):
    """``(n_atoms, K)`` table of ``values`` grouped by ``atom`` (stable), ``fill``
    where an atom has fewer than K."""
    order = np.argsort(atom, kind="stable")
    counts = np.bincount(atom, minlength=n_atoms)
    out = np.full((n_atoms, K), fill, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    out[np.repeat(np.arange(n_atoms), counts), rank] = values[order]
    return out


def pair_table_widths(batch: Batch, keep: np.ndarray | None = None) -> tuple[int, int]:
    """Widths of ``pair_tables``: the most real pairs (of those ``keep`` marks, if
    given) into one atom and out of one atom, each bucketed (few jit shapes). They
    differ only for a term of one central species."""
    real = batch.pair_mask > 0 if keep is None else (batch.pair_mask > 0) & keep
    A = len(batch.species)
    into = np.bincount(batch.neighbour[real], minlength=A).max(initial=0)
    out = np.bincount(batch.centre[real], minlength=A).max(initial=0)
    return bucket(int(into), 4), bucket(int(out), 4)


def centre_slots(batch: Batch, species: int | None) -> int:
    """Number C of centre slots in ``pair_tables`` for a term whose centres are the
    real atoms of species index ``species`` (bucketed: few jit shapes); 0 for a term
    over every atom (C is then the batch's atom count)."""
    if species is None:
        return 0
    return bucket(int(np.sum((batch.species == species) & (batch.atom_mask > 0))), 1)


def pair_tables(
    batch: Batch,
    min_k: tuple[int, int] = (0, 0),
    keep: np.ndarray | None = None,
    species: int | None = None,
    min_c: int = 0,
) -> PairTables:
    """Per-atom tables of the real pairs (of those ``keep (P,)`` marks, if given: a
    term's own, e.g. those inside its cutoff), the pairs into each atom and out of
    each atom at least ``min_k`` wide (``pair_table_widths``); the mean's centres
    are every atom, or with ``species`` (an index) the real atoms of that species
    in ``max(centre_slots, min_c)`` slots."""
    real = np.flatnonzero(
        batch.pair_mask > 0 if keep is None else (batch.pair_mask > 0) & keep
    )
    pad_pair = int(np.flatnonzero(batch.pair_mask == 0)[0])
    A = len(batch.species)
    widths = zip(pair_table_widths(batch, keep), min_k, strict=True)
    K_in, K = (max(a, b) for a, b in widths)
    inc = _per_atom(batch.neighbour[real], real, A, K_in, pad_pair)
    position = np.full(len(batch.pair_mask), A * K_in, dtype=np.int64)
    slots = np.flatnonzero(batch.pair_mask[inc.ravel()] > 0)
    position[inc.ravel()[slots]] = slots
    out = _per_atom(batch.centre[real], position[real], A, K, A * K_in)
    return PairTables(inc, out, *centre_pairs(batch, K, keep, species, min_c))


def centre_pairs(
    batch: Batch,
    K: int,
    keep: np.ndarray | None = None,
    species: int | None = None,
    min_c: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real pairs (of those ``keep`` marks) out of each centre ``(C, K)``, padded
    with a masked pair, the centres ``(C,)`` and their mask ``(C,)``
    (``PairTables.by_centre``, ``centres``, ``centre_mask``): every atom, or with
    ``species`` (an index) the real atoms of that species in
    ``max(centre_slots, min_c)`` slots (padding: atom 0, masked, no pairs)."""
    real = np.flatnonzero(
        batch.pair_mask > 0 if keep is None else (batch.pair_mask > 0) & keep
    )
    pad_pair = int(np.flatnonzero(batch.pair_mask == 0)[0])
    A = len(batch.species)
    rows = _per_atom(batch.centre[real], real, A, K, pad_pair)
    if species is None:
        return rows, np.arange(A), np.ones(A)
    own = np.flatnonzero((batch.species == species) & (batch.atom_mask > 0))
    C = max(centre_slots(batch, species), min_c)
    centres, mask = np.zeros(C, np.int64), np.zeros(C)
    centres[: len(own)], mask[: len(own)] = own, 1.0
    out = np.full((C, K), pad_pair, np.int64)
    out[: len(own)] = rows[own]
    return out, centres, mask


def padded_stream(
    build: Callable[[Sequence[int]], Batch],
    groups: Sequence[Sequence[int]],
    n_atoms: int,
    shape: Sequence[int] = NO_SHAPE,
    width: Sequence[int] = (),
    widths_of: Callable[[Batch], tuple[int, ...]] = lambda b: (),
) -> tuple[list[int], tuple[int, ...], Iterator[Batch]]:
    """The common padded shape (``batch_shape``) of the batches
    ``build(group)`` of ``groups`` (at least ``shape``; one jit compilation for all),
    their widest pair tables, ``widths_of(batch)`` elementwise (at least ``width``),
    and the padded batches, built as they are walked. Up to ``HELD_ATOMS`` atoms
    (``n_atoms`` in all) the batches are built once and held; beyond, once to measure
    the shape and again one at a time, so that memory holds one batch's neighbour
    lists, not all."""
    held = [build(g) for g in groups] if n_atoms <= HELD_ATOMS else None
    measured = map(build, groups) if held is None else held
    sized = ((batch_shape(b), widths_of(b)) for b in measured)
    shapes, widths = zip(*sized, strict=True)
    largest = [max(n) for n in zip(shape, *shapes, strict=True)]
    widest = tuple(max(k) for k in zip(*widths, strict=True))
    if width:
        widest = tuple(max(a, b) for a, b in zip(width, widest, strict=True))
    walked = map(build, groups) if held is None else iter(held)
    return largest, widest, (pad_batch(b, *largest) for b in walked)
