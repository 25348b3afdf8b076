"""Training data: extxyz -> validated frames with labels, noise levels and e0.

A frame holds a total energy E (eV), forces F = -∂E/∂r (eV/Å) and the virial
W = -σ V (eV), σ the stress in eV/Å³ (ASE's sign), V the cell volume (Å³): gap_fit's
convention (Bartók et al., PRL 104, 136403 (2010); Bartók & Csányi, IJQC 115, 1051
(2015)). The GP fits E - Σ_i e0(Z_i); `fit_e0` picks the isolated-atom energies e0.
Noise follows gap_fit: with sigma_per_atom, σ_E = sigma_E sqrt(N), σ_W = sigma_W
sqrt(N); per-config info ``energy_sigma``/``force_sigma``/``virial_sigma`` are absolute.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ase
import ase.data
import ase.io
import numpy as np
import vesin
from ase.io.formats import string2index
from ase.stress import voigt_6_to_full_3x3_stress

from gapfit.errors import GapfitError

MIN_DISTANCE = 0.5  # Å; closer pairs (periodic images included) mean broken data
_OPTION = {
    "energy": "--energy-parameter-name",
    "forces": "--force-parameter-name",
    "virial": "--virial-parameter-name",
}
_E0_METHODS = ("isolated", "average", "least_squares", "explicit")
_SYMBOLS = {s: z for z, s in enumerate(ase.data.chemical_symbols) if z > 0}


@dataclass(frozen=True)
class Frame:
    """One configuration with optional labels (arrays are read-only)."""

    numbers: np.ndarray  # (n_atoms,) int atomic numbers
    positions: np.ndarray  # (n_atoms, 3) Å
    cell: np.ndarray  # (3, 3) Å, rows are cell vectors
    pbc: np.ndarray  # (3,) bool
    energy: float | None  # total energy, eV
    forces: np.ndarray | None  # (n_atoms, 3) eV/Å
    virial: np.ndarray | None  # (3, 3) eV, virial = -stress * volume, symmetrised
    config_type: str  # "default" when absent
    sigma_energy: float | None  # per-config info energy_sigma, total eV
    sigma_force: float | None  # per-config info force_sigma, eV/Å
    sigma_virial: float | None  # per-config info virial_sigma, total eV
    where: str  # e.g. "train.xyz, config 12 (line 345)" or "frames[3]"
    force_mask: np.ndarray | None = None  # (n_atoms,) bool, True: force not a label

    def fitted_atoms(self) -> np.ndarray:
        """Indices of the atoms whose forces are labels (gap_fit's force mask
        excluded; empty without forces)."""
        if self.forces is None:
            return np.zeros(0, dtype=int)
        if self.force_mask is None:
            return np.arange(len(self.numbers))
        return np.flatnonzero(~self.force_mask)

    def to_atoms(self) -> ase.Atoms:
        """Geometry as ``ase.Atoms`` with ``info["config_type"]``; no labels."""
        atoms = ase.Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )
        atoms.info["config_type"] = self.config_type
        return atoms


@dataclass(frozen=True)
class LabelKeys:
    """Label names in ``atoms.info`` / ``atoms.arrays`` / calculator results."""

    energy: str = "energy"
    forces: str = "forces"
    virial: str = "virial"
    stress: str = "stress"
    config_type: str = "config_type"
    force_mask: str = "force_mask"  # per-atom logical: True excludes the force


def _check_sigma(name: str, value: Any, where: str) -> float:
    """``value`` as a float if it is a usable noise level (> 0, finite)."""
    try:
        sigma = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        sigma = float("nan")
    if not (np.isfinite(sigma) and sigma > 0):
        raise GapfitError(
            f"{where}: {name} must be > 0 and finite, found {value!r}. "
            "Sigmas are noise standard deviations; give a positive one."
        )
    return sigma


@dataclass(frozen=True)
class Sigmas:
    """gap_fit's default_sigma and config_type_sigma (validated on construction).

    energy/virial sigmas are per atom when ``per_atom`` (gap_fit's sigma_per_atom=T,
    the default): total-energy sigma = energy * sqrt(n_atoms), likewise the virial.
    Units: energy eV/atom, force eV/Å, virial eV/atom (eV when not per_atom).
    ``per_config_type`` maps config_type -> (energy, force, virial) in those units.
    """

    energy: float = 0.001
    force: float = 0.05
    virial: float = 0.05
    per_config_type: Mapping[str, tuple[float, float, float]] = field(
        default_factory=dict
    )
    per_atom: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise GapfitError naming the first sigma that is not > 0 and finite."""
        named = {
            "default energy sigma": self.energy,
            "default force sigma": self.force,
            "default virial sigma": self.virial,
        }
        for ct, values in self.per_config_type.items():
            if len(tuple(values)) != 3:
                raise GapfitError(
                    f"Sigmas: config_type {ct!r} has sigmas {values!r}; "
                    "give 3: (energy, force, virial)."
                )
            for label, v in zip(("energy", "force", "virial"), values, strict=True):
                named[f"config_type {ct!r} {label} sigma"] = v
        for name, value in named.items():
            _check_sigma(name, value, "Sigmas")

    def for_frame(self, frame: Frame) -> tuple[float, float, float]:
        """(sigma_E total eV, sigma_F eV/Å, sigma_W total eV) for one frame.

        Per-config info values (absolute, used as given) > config_type > default;
        the latter two are scaled by sqrt(n_atoms) for energy and virial if per_atom.
        """
        e, f, w = self.per_config_type.get(
            frame.config_type, (self.energy, self.force, self.virial)
        )
        scale = float(np.sqrt(len(frame.numbers))) if self.per_atom else 1.0
        own = (frame.sigma_energy, frame.sigma_force, frame.sigma_virial)
        s_e, s_f, s_w = (
            float(o if o is not None else d)
            for o, d in zip(own, (e * scale, f, w * scale), strict=True)
        )
        return s_e, s_f, s_w


def _lookup(atoms: ase.Atoms, key: str, table: dict) -> Any:
    """``table[key]``, else the calculator's ``results[key]`` (ase.io moves
    energy/forces/stress/free_energy there), else None."""
    if key in table:
        return table[key]
    return (getattr(atoms.calc, "results", None) or {}).get(key)


def _missing(atoms: ase.Atoms, label: str, key: str, where: str) -> GapfitError:
    info = sorted(atoms.info)
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    calc = sorted(getattr(atoms.calc, "results", None) or {})
    close = difflib.get_close_matches(key, info + arrays + calc, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return GapfitError(
        f"{where}: no {label} found under key {key!r}. Keys present: info {info}, "
        f"arrays {arrays}, calculator results {calc}.{hint} Name the right key with "
        f"{_OPTION[label]} (LabelKeys({label}=...)) or label this config."
    )


def _array(value: Any, name: str, where: str, per_atom: bool = False) -> np.ndarray:
    """``value`` as a finite float array; per_atom reports the first bad row."""
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise GapfitError(
            f"{where}: {name} is not numeric (found {value!r}); fix "
            "the value in the file."
        ) from None
    bad = ~np.isfinite(arr)
    if bad.any():
        if per_atom and arr.ndim == 2:
            i = int(np.nonzero(bad.any(axis=1))[0][0])
            what = f"{name} of atom {i} are not finite ({arr[i].tolist()})"
        else:
            what = f"{name} is not finite ({arr.tolist()})"
        raise GapfitError(f"{where}: {what}. Fix or remove this config.")
    return arr


def _matrix(value: Any, name: str, where: str, voigt: bool) -> np.ndarray:
    """(3, 3) from 9 numbers or 3x3 (or 6 Voigt xx yy zz yz xz xy when ``voigt``)."""
    arr = _array(value, name, where)
    if voigt and arr.size == 6:
        return voigt_6_to_full_3x3_stress(arr.reshape(6))
    if arr.size != 9:
        want = "6 (Voigt xx yy zz yz xz xy) or 9 numbers" if voigt else "9 numbers"
        raise GapfitError(
            f"{where}: {name} has shape {arr.shape}; expected {want} "
            "or a 3x3 matrix. Fix the value in the file."
        )
    return arr.reshape(3, 3)


def _check_geometry(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    where: str,
) -> None:
    """Atoms present, real elements, usable periodic cell, no pair < MIN_DISTANCE."""
    if len(numbers) == 0:
        raise GapfitError(f"{where}: config has zero atoms; remove it from the data.")
    if numbers.min() < 1 or numbers.max() >= len(ase.data.chemical_symbols):
        raise GapfitError(
            f"{where}: unknown atomic numbers {sorted(set(numbers))}; "
            "use real element symbols."
        )
    lengths = np.linalg.norm(cell, axis=1)  # (3,) Å
    flat = np.nonzero(pbc & (lengths < 1e-6))[0]
    if len(flat):
        axis = int(flat[0])
        raise GapfitError(
            f"{where}: pbc is True along axis {axis} but cell vector {axis} has length "
            f"{lengths[axis]:.3g} Å. Set the cell (Lattice=...) or pbc=False there."
        )
    vecs = cell[pbc]  # (n_periodic, 3) Å
    # normalised Gram determinant: 1 for orthogonal vectors, ~0 for a degenerate cell
    if len(vecs) and np.linalg.det(vecs @ vecs.T) / np.prod(lengths[pbc] ** 2) < 1e-12:
        raise GapfitError(
            f"{where}: periodic cell vectors {vecs.tolist()} are (nearly) linearly "
            "dependent (volume ~0). Set the cell (Lattice=...) or pbc=False."
        )
    box = cell if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=MIN_DISTANCE, full_list=False)
    i, j, d = nl.compute(positions, box, [bool(p) for p in pbc], "ijd")
    if len(d):
        k = int(np.argmin(d))
        a, b = int(i[k]), int(j[k])
        pair = f"atom {a} and its periodic image" if a == b else f"atoms {a} and {b}"
        raise GapfitError(
            f"{where}: {pair} are {d[k]:.3f} Å apart (< {MIN_DISTANCE} Å). Remove "
            "duplicated atoms, fix the positions, or enlarge the cell."
        )


def _virial(
    atoms: ase.Atoms, keys: LabelKeys, cell: np.ndarray, pbc: np.ndarray, where: str
) -> np.ndarray | None:
    """Virial (3, 3) eV from info virial and/or stress (eV/Å³) via W = -stress V."""
    raw_w, raw_s = (_lookup(atoms, k, atoms.info) for k in (keys.virial, keys.stress))
    if raw_w is None and raw_s is None:
        return None
    if not pbc.all():
        raise GapfitError(
            f"{where}: has a virial/stress but pbc={pbc.tolist()}, so the volume is "
            'undefined. Remove the virial/stress or set Lattice and pbc="T T T".'
        )
    volume = abs(float(np.linalg.det(cell)))  # Å³
    w = None if raw_w is None else _matrix(raw_w, keys.virial, where, voigt=False)
    s = None if raw_s is None else _matrix(raw_s, keys.stress, where, voigt=True)
    w_s = None if s is None else -s * volume  # W = -σ V, eV
    tol = max(1e-6 * max(np.abs(m).max() for m in (w, w_s) if m is not None), 1e-8)
    if w is not None and w_s is not None and np.abs(w - w_s).max() > tol:
        hint = ""
        if np.abs(w + w_s).max() <= tol:
            hint = " They look like opposite signs (virial = +stress * volume)."
        elif np.allclose(np.abs(w), np.abs(s), rtol=1e-6, atol=1e-12):
            hint = " The virial looks like the stress missing the volume factor."
        raise GapfitError(
            f"{where}: {keys.virial!r} and {keys.stress!r} disagree (max difference "
            f"{np.abs(w - w_s).max():.3g} eV, volume {volume:.6g} Å³).{hint} gapfit "
            "uses virial = -stress * volume (eV); stress in eV/Å³. Fix or drop one."
        )
    w = w if w is not None else w_s
    if np.abs(w - w.T).max() > tol:
        raise GapfitError(
            f"{where}: the virial {w.tolist()} is not symmetric; check "
            "the order of its 9 numbers."
        )
    return 0.5 * (w + w.T)


def _force_mask(atoms: ase.Atoms, key: str, n: int, where: str) -> np.ndarray | None:
    """gap_fit's per-atom force mask (logical, True: that atom's force is not a
    label), or None when the file has none."""
    raw = atoms.arrays.get(key)
    if raw is None:
        return None
    mask = np.asarray(raw)
    if mask.dtype != bool or mask.shape != (n,):
        raise GapfitError(
            f"{where}: {key!r} is {mask.dtype} {mask.shape}, expected one logical "
            f"(T/F) per atom ({n},); it marks atoms whose forces are not fitted "
            "(gap_fit's force_mask_parameter_name)."
        )
    return mask


def _frame(
    atoms: ase.Atoms, keys: LabelKeys, require: Sequence[str], where: str
) -> Frame:
    """Validate one Atoms (geometry, labels, sigmas) and turn it into a Frame."""
    numbers = np.array(atoms.numbers, dtype=int)
    positions = _array(atoms.positions, "positions", where, per_atom=True)
    cell = _array(atoms.cell.array, "cell", where)
    pbc = np.array(atoms.pbc, dtype=bool)
    _check_geometry(numbers, positions, cell, pbc, where)
    energy = _lookup(atoms, keys.energy, atoms.info)
    if energy is not None:
        energy = _array(energy, keys.energy, where)
        if energy.size != 1:
            raise GapfitError(
                f"{where}: {keys.energy!r} has shape {energy.shape}, "
                "expected one number. Fix the value in the file."
            )
        energy = float(energy.reshape(()))
    forces = _lookup(atoms, keys.forces, atoms.arrays)
    if forces is not None:
        forces = _array(forces, keys.forces, where, per_atom=True)
        if forces.shape != positions.shape:
            raise GapfitError(
                f"{where}: {keys.forces!r} has shape {forces.shape}, expected "
                f"{positions.shape} (n_atoms, 3). Fix the Properties column spec."
            )
    virial = _virial(atoms, keys, cell, pbc, where)
    mask = _force_mask(atoms, keys.force_mask, len(numbers), where)
    found = {"energy": energy, "forces": forces, "virial": virial}
    for label in require:
        if label not in found:
            raise GapfitError(f"unknown required label {label!r}; use {list(found)}.")
        if found[label] is None:
            raise _missing(atoms, label, getattr(keys, label), where)
    sig = [
        None
        if atoms.info.get(f"{q}_sigma") is None
        else _check_sigma(f"info '{q}_sigma'", atoms.info[f"{q}_sigma"], where)
        for q in ("energy", "force", "virial")
    ]
    for arr in (numbers, positions, cell, pbc, forces, virial, mask):
        if arr is not None:
            arr.setflags(write=False)
    return Frame(
        numbers,
        positions,
        cell,
        pbc,
        energy,
        forces,
        virial,
        str(atoms.info.get(keys.config_type, "default")),
        *sig,
        where,
        mask,
    )


def frames_from_atoms(
    atoms_list: Sequence[ase.Atoms],
    keys: LabelKeys = LabelKeys(),
    require: tuple[str, ...] = ("energy",),
    source: str = "frames",
) -> list[Frame]:
    """Validate in-memory Atoms (labels in info/arrays/calc) into Frames.

    Frame i is reported as ``f"{source}[{i}]"``; ``require`` names labels that must
    exist ("energy", "forces", "virial"). Raises GapfitError on bad input.
    """
    return [
        _frame(atoms, keys, require, f"{source}[{i}]")
        for i, atoms in enumerate(atoms_list)
    ]


def as_frames(
    items: Sequence[ase.Atoms | Frame],
    keys: LabelKeys = LabelKeys(),
    require: tuple[str, ...] = ("energy",),
    source: str = "frames",
) -> list[Frame]:
    """``items`` as given when all are ``Frame`` objects, else validated from ASE Atoms
    (``frames_from_atoms``)."""
    items = list(items)
    if all(isinstance(f, Frame) for f in items):
        return items
    return frames_from_atoms(items, keys, require, source)


def scan_extxyz(name: str) -> tuple[list[int], list[int]]:
    """1-based header line and atom count of each config, checking the atom counts
    the way ASE's reader indexes the file, so that structural errors can be located."""
    with open(name) as fh:
        lines = fh.readlines()
    headers: list[int] = []
    sizes: list[int] = []
    k = 0
    while k < len(lines) and lines[k].strip():
        where = f"{name}, config {len(headers)} (line {k + 1})"
        try:
            natoms = int(lines[k])
        except ValueError:
            raise GapfitError(
                f"{where}: expected the atom count on the header line, "
                f"found {lines[k].strip()[:60]!r}. Check the previous "
                "config's atom count or remove stray lines."
            ) from None
        headers.append(k + 1)
        sizes.append(natoms)
        for j in range(k + 1, k + 2 + natoms):
            if j >= len(lines) or (j > k + 1 and len(lines[j].split()) < 4):
                at = "end of file" if j >= len(lines) else f"line {j + 1}"
                raise GapfitError(
                    f"{where}: the header says {natoms} atoms but only "
                    f"{max(j - k - 2, 0)} atom lines follow ({at}). The file looks "
                    "truncated or the count is wrong; fix it or remove this config."
                )
        k += 2 + natoms
        while k < len(lines) and lines[k].lstrip().startswith("VEC"):
            k += 1
    rest = [j for j in range(k, len(lines)) if lines[j].strip()]
    if rest:  # ASE stops at a blank line and would silently drop the rest
        raise GapfitError(
            f"{name}, line {k + 1}: blank line before more data (line "
            f"{rest[0] + 1}); the rest would be ignored. Delete it."
        )
    return headers, sizes


def _check_file(path: str | os.PathLike) -> str:
    """The path as a string if it is an existing, non-empty file."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise GapfitError(
            f"{name}: file not found (cwd {os.getcwd()}). Check the path."
        )
    if os.path.getsize(name) == 0:
        raise GapfitError(
            f"{name}: file is empty (0 bytes). Give a file with configurations."
        )
    return name


def config_sizes(path: str | os.PathLike) -> list[int]:
    """Atom count of every configuration of an extxyz file, from its header lines
    alone (the layout checked as ``read_frames`` checks it), so that work can be
    split by ``read_frames(path, index="a:b")`` before anything is parsed.

    Raises:
        GapfitError: missing or empty file, not extxyz, or a broken layout.
    """
    name = _check_file(path)
    if os.path.splitext(name)[1].lower() not in (".xyz", ".extxyz"):
        raise GapfitError(
            f"{name}: only extxyz files (.xyz, .extxyz) can be split by index for "
            "workers; convert it with ase.io.write(..., format='extxyz')."
        )
    return scan_extxyz(name)[1]


def read_frames(
    path: str | os.PathLike,
    keys: LabelKeys = LabelKeys(),
    require: tuple[str, ...] = ("energy",),
    index: str = ":",
) -> list[Frame]:
    """Read and validate configurations from an extended-XYZ (or ASE-readable) file.

    Args:
        path: ``.xyz``/``.extxyz`` are read as extxyz (messages give config index and
            header line); other formats are guessed by ``ase.io.read``.
        keys: label key names. require: labels that must exist.
        index: ASE index string selecting configs, e.g. ":" or "0:100:2".

    Raises:
        GapfitError: missing, empty or malformed file, or any invalid config.
    """
    name = _check_file(path)
    try:
        sel = string2index(index)
        if not isinstance(sel, (int, slice)):
            raise ValueError
    except ValueError:
        raise GapfitError(
            f"index {index!r} is not an ASE index such as ':', '-1' or '0:100:2'."
        ) from None
    sel = slice(sel, (sel + 1) or None) if isinstance(sel, int) else sel
    pairs: list[tuple[str, ase.Atoms]] = []
    if os.path.splitext(name)[1].lower() in (".xyz", ".extxyz"):
        headers, _ = scan_extxyz(name)
        reader = ase.io.iread(name, sel, "extxyz", do_not_split_by_at_sign=True)
        for k in range(len(headers))[sel]:
            where = f"{name}, config {k} (line {headers[k]})"
            try:
                pairs.append((where, next(reader)))
            except Exception as exc:  # the reader raises many types on bad text
                raise GapfitError(
                    f"{where}: could not be parsed ({type(exc).__name__}: {exc}). Fix "
                    "it: header = atom count, then the Lattice/Properties/labels line, "
                    "then one line per atom with the Properties columns."
                ) from exc
    else:
        try:
            images = ase.io.read(name, index=sel)
        except Exception as exc:  # format guessing and parsing raise many types
            raise GapfitError(
                f"{name}: ase.io.read failed ({type(exc).__name__}: "
                f"{exc}). Convert the file to extxyz."
            ) from exc
        images = [images] if isinstance(images, ase.Atoms) else images
        sub = "" if index == ":" else f" of selection {index!r}"
        pairs = [(f"{name}, config {i}{sub}", a) for i, a in enumerate(images)]
    if not pairs:
        raise GapfitError(
            f"{name}: no configurations found (index {index!r}). "
            "Check the file contents and the index."
        )
    return [_frame(a, keys, require, where) for where, a in pairs]


def parse_config_type_sigma(text: str) -> dict[str, tuple[float, float, float]]:
    """Parse gap_fit's "bulk:0.001:0.05:0.05:0.0:surface:..." (name, sigma_E eV/atom,
    sigma_F eV/Å, sigma_V eV/atom, sigma_H ignored) into name -> 3 sigmas."""
    tokens = [t for t in re.split(r"[\s:]+", text.strip()) if t]
    if len(tokens) % 5:
        raise GapfitError(
            f"--config-type-sigma {text!r}: {len(tokens)} items; expected"
            " groups of 5 'name:sigma_E:sigma_F:sigma_V:sigma_H', e.g. "
            "'bulk:0.001:0.05:0.05:0.0'."
        )
    out: dict[str, tuple[float, float, float]] = {}
    for g in range(0, len(tokens), 5):
        name, group = tokens[g], ":".join(tokens[g : g + 5])
        try:
            e, f, v, _ = (float(t) for t in tokens[g + 1 : g + 5])
        except ValueError:
            raise GapfitError(
                f"--config-type-sigma: group {group!r} has a non-number;"
                " write name:sigma_E:sigma_F:sigma_V:sigma_H."
            ) from None
        if name in out:
            raise GapfitError(
                f"--config-type-sigma: {name!r} appears twice; give it once."
            )
        out[name] = tuple(
            _check_sigma(f"{q} sigma of {name!r}", x, "--config-type-sigma")
            for q, x in (("energy", e), ("force", f), ("virial", v))
        )
    return out


def parse_e0(text: str) -> dict[int, float]:
    """Parse "Cu:-0.1 Au:-0.2" or gap_fit's "{Cu:-0.1:Au:-0.2}" into {Z: e0 eV}."""
    tokens = [t for t in re.split(r"[\s:,{}]+", text) if t]
    if len(tokens) % 2:
        raise GapfitError(
            f"--e0 {text!r}: expected symbol:value pairs such as "
            "'Cu:-0.1 Au:-0.2' (one value per element, eV)."
        )
    out: dict[int, float] = {}
    for sym, val in zip(tokens[::2], tokens[1::2], strict=True):
        if sym not in _SYMBOLS:
            close = [s for s in _SYMBOLS if s.lower() == sym.lower()]
            close = close or difflib.get_close_matches(sym, list(_SYMBOLS), n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise GapfitError(f"--e0 {text!r}: {sym!r} is not an element symbol.{hint}")
        try:
            value = float(val)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or _SYMBOLS[sym] in out:
            raise GapfitError(
                f"--e0 {text!r}: bad or repeated entry {sym}:{val}; "
                "give each element once with a finite value in eV."
            )
        out[_SYMBOLS[sym]] = value
    return out


def atomic_number(key: int | str) -> int:
    """Atomic number of an e0 key: a number (29, "29") or a symbol ("Cu")."""
    if str(key).isdigit():
        return int(key)
    if key in ase.data.atomic_numbers:
        return ase.data.atomic_numbers[key]
    raise GapfitError(f"e0 key {key!r} is neither an atomic number nor an element.")


def _names(zs: Sequence[int]) -> str:
    return ", ".join(ase.data.chemical_symbols[int(z)] for z in zs)


def check_species(frames: Sequence[Frame], species: Sequence[int]) -> None:
    """Raise GapfitError if a frame holds an element outside the model's species."""
    known = {int(z) for z in species}
    bad = [f for f in frames if not set(f.numbers.tolist()) <= known]
    if bad:
        unknown = sorted(set(bad[0].numbers.tolist()) - known)
        raise GapfitError(
            f"{bad[0].where}: contains {_names(unknown)}, unknown to the model "
            f"(species: {_names(sorted(known))}); {len(bad)} config(s) affected. "
            "Fit a model that includes these elements or remove those configs."
        )


def fit_e0(
    frames: Sequence[Frame],
    method: str,
    species: Sequence[int],
    explicit: Mapping[int, float] | None = None,
) -> dict[int, float]:
    """Isolated-atom reference energies {Z: e0 eV} for every Z in ``species``.

    Methods: "isolated" (energy of a 1-atom frame with config_type "isolated_atom"),
    "average" (gap_fit: one value for all species, mean of E/n_atoms), "least_squares"
    (min_e0 Σ_f (E_f - Σ_Z n_fZ e0_Z)², minimum-norm if rank deficient), "explicit".
    ``explicit`` overrides the method's value for its species. Only frames with an
    energy are used. Raises GapfitError for an unknown method, missing species, no
    energies, or frames with elements outside ``species``.
    """
    _check_e0_method(method)
    check_species(frames, species)
    return e0_from_counts(
        species_counts(frames, species),
        [f.energy for f in frames],
        [f.config_type for f in frames],
        method,
        species,
        explicit,
    )


def species_counts(frames: Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """``(n_frames, n_species)`` number of atoms of each species in each frame."""
    numbers = [np.asarray(f.numbers) for f in frames]
    return np.array(
        [[np.count_nonzero(n == z) for z in species] for n in numbers], dtype=np.int64
    ).reshape(len(frames), len(species))


def _check_e0_method(method: str) -> None:
    if method not in _E0_METHODS:
        raise GapfitError(
            f"--e0-method {method!r} is unknown; use one of {list(_E0_METHODS)}."
        )


def e0_from_counts(
    counts: np.ndarray,
    energies: Sequence[float | None],
    config_types: Sequence[str],
    method: str,
    species: Sequence[int],
    explicit: Mapping[int, float] | None = None,
) -> dict[int, float]:
    """``fit_e0`` from per-config sums alone (what a distributed fit gathers).

    Args:
        counts: (n_frames, n_species) atoms of each of ``species`` per frame.
        energies: total energy of each frame, eV (None: unlabelled).
        config_types: config_type of each frame.
        method, species, explicit: as ``fit_e0``.
    """
    _check_e0_method(method)
    species = [int(z) for z in species]
    counts = np.asarray(counts)
    labelled = [k for k, e in enumerate(energies) if e is not None]
    if method in ("average", "least_squares") and not labelled:
        raise GapfitError(
            f"--e0-method {method}: no config has an energy. Label "
            "energies or give --e0 explicitly."
        )
    e0: dict[int, float] = {}
    if method == "average":
        e0 = dict.fromkeys(
            species, np.mean([energies[k] / counts[k].sum() for k in labelled])
        )
    elif method == "least_squares":
        n_fz = counts[labelled].astype(float)  # n_fZ: (n_frames, n_Z)
        e_f = np.array([energies[k] for k in labelled])  # E_f: (n_frames,) eV
        e0_z = np.linalg.lstsq(n_fz, e_f, rcond=None)[0]  # argmin |n e0 - E|²
        e0 = dict(zip(species, e0_z, strict=True))
    elif method == "isolated":
        e0 = {
            species[int(np.argmax(counts[k]))]: energies[k]
            for k in reversed(labelled)
            if config_types[k] == "isolated_atom" and counts[k].sum() == 1
        }
    given = {atomic_number(z): v for z, v in (explicit or {}).items()}
    e0.update({z: v for z, v in given.items() if z in species})
    missing = [z for z in species if z not in e0]
    if missing and method == "isolated":
        raise GapfitError(
            f"--e0-method isolated: no 1-atom config with config_type=isolated_atom "
            f"and an energy for {_names(missing)}. Add them, use --e0-method average "
            "or least_squares, or give --e0 (e.g. 'Cu:-0.1')."
        )
    if missing:
        raise GapfitError(
            f"--e0-method explicit: no e0 given for {_names(missing)}. "
            "Add them to --e0 (e.g. 'Cu:-0.1')."
        )
    return {z: float(e0[z]) for z in species}
