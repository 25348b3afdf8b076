"""Reusable physics assertions for potentials (dscribe-style shared test helpers).

Every ``assert_*`` takes ``calc_fn(atoms) -> dict`` with ASE-calculator-like results
(``energy`` eV, ``energies`` (n,) eV, ``forces`` (n, 3) eV/Å, ``stress`` (6,) eV/Å³
Voigt xx yy zz yz xz xy, and optionally ``energy_std``, ``energies_std``,
``forces_std``, ``stress_std``), e.g. ``lambda a: model.predict([a], std=True)[0]``.
On failure the message names the worst deviation (where, got, expected, tolerance);
on success the worst deviations are returned so that tests can report them.

Reference values are independent of the code under test: central finite differences
of the energy for forces and stress, and exact symmetry operations (rotation,
translation, permutation, supercell, choice of periodic cell) for invariances.

Conventions (ASE): ``F = -dE/dr``; ``stress_ij = (1/V) dE/d eps_ij`` for the
homogeneous deformation ``r -> (I + eps) r`` of positions and cell (eps symmetric).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms

CalcFn = Callable[[Atoms], Mapping[str, Any]]
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


# --------------------------------------------------------------------------- basics
def assert_close(
    name: str,
    got: Any,
    want: Any,
    rtol: float = 1e-8,
    atol: float = 0.0,
    scale: float | None = None,
) -> float:
    """``|got - want| <= atol + rtol * scale`` element-wise, with ``scale = max|want|``.

    Returns:
        The worst absolute deviation.
    """
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != expected {want.shape}")
    if not np.isfinite(got).all():
        bad = np.argwhere(~np.isfinite(got))[0]
        raise AssertionError(f"{name}: non-finite value at index {tuple(bad)}")
    scale = float(np.abs(want).max(initial=0.0)) if scale is None else float(scale)
    tol = atol + rtol * scale
    dev = np.abs(got - want)
    worst = float(dev.max(initial=0.0))
    if worst > tol:
        at = np.unravel_index(int(np.argmax(dev)), dev.shape) if dev.ndim else ()
        raise AssertionError(
            f"{name}: worst |deviation| {worst:.3e} "
            f"(relative {worst / (scale or 1):.3e}) at index "
            f"{tuple(int(i) for i in at)}: got {float(got[at]):.12g}, "
            f"expected {float(want[at]):.12g}; tolerance {tol:.3e} = atol {atol:.1e} + "
            f"rtol {rtol:.1e} x scale {scale:.3e}"
        )
    return worst


def compare_results(
    label: str,
    got: Mapping[str, Any],
    want: Mapping[str, Any],
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float | None = None,
) -> dict[str, float]:
    """Compare every key present in ``want`` (a ``None`` value means "absent in got").

    Keys containing ``_std`` use ``rtol_std`` (default ``rtol``). All failing keys are
    reported together.

    Returns:
        ``{key: worst absolute deviation}``.
    """
    worst: dict[str, float] = {}
    errors: list[str] = []
    for key, w in want.items():
        if w is None:
            if got.get(key) is not None:
                errors.append(f"{key}: expected absent, got {got[key]!r}")
            continue
        if got.get(key) is None:
            errors.append(f"{key}: missing from the results")
            continue
        tol = rtol_std if ("_std" in key and rtol_std is not None) else rtol
        try:
            worst[key] = assert_close(f"{label} {key}", got[key], w, tol, atol)
        except AssertionError as err:
            errors.append(str(err))
    if errors:
        raise AssertionError("\n".join(errors))
    return worst


# ------------------------------------------------------------- finite differences
def displaced(atoms: Atoms, index: int, axis: int, h: float) -> Atoms:
    """A copy of ``atoms`` with atom ``index`` moved by ``h`` Å along ``axis``."""
    out = atoms.copy()
    out.positions[index, axis] += h
    return out


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    """A copy deformed by ``r -> (I + eps) r``: cell rows and positions (Å)."""
    out = atoms.copy()
    F = np.eye(3) + np.asarray(eps, dtype=float)
    out.set_cell(atoms.cell.array @ F.T, scale_atoms=False)
    out.positions = atoms.positions @ F.T
    return out


def _derivative(f: Callable[[float], float], h: float, order: int) -> float:
    """df/dx at 0 by central differences of ``order`` 2 (3-point) or 4 (5-point)."""
    if order == 2:
        return (f(h) - f(-h)) / (2 * h)
    if order == 4:
        return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)
    raise ValueError(f"order={order}: use 2 or 4")


def fd_forces(
    energy_fn: Callable[[Atoms], float],
    atoms: Atoms,
    h: float = 1e-4,
    indices: Iterable[int] | None = None,
    order: int = 2,
) -> np.ndarray:
    """``-dE/dr`` (n, 3) eV/Å by central differences (rows not in ``indices`` are 0).

    The error is ~h^order E^(order+1) (truncation) + ~noise(E)/h (rounding): choose
    ``h`` where both are small; a potential with an energy noise floor of 1e-10 eV
    needs h >~ 1e-3 Å for 1e-7 eV/Å."""
    fd = np.zeros((len(atoms), 3))
    for a in range(len(atoms)) if indices is None else indices:
        for k in range(3):
            fd[a, k] = -_derivative(
                lambda x, a=a, k=k: energy_fn(displaced(atoms, a, k, x)), h, order
            )
    return fd


def fd_stress(
    energy_fn: Callable[[Atoms], float], atoms: Atoms, h: float = 1e-5, order: int = 2
) -> np.ndarray:
    """``(1/V) dE/d eps`` (6,) eV/Å³ Voigt, by central differences of a symmetric
    strain (off-diagonal: eps_ij = eps_ji = x/2, so d/dx is dE/d eps_ij)."""
    volume = abs(np.linalg.det(atoms.cell.array))
    out = np.zeros(6)
    for v, (i, j) in enumerate(VOIGT):
        unit = np.zeros((3, 3))
        unit[i, j] += 0.5
        unit[j, i] += 0.5
        out[v] = (
            _derivative(lambda x, u=unit: energy_fn(strained(atoms, x * u)), h, order)
            / volume
        )
    return out


def assert_forces_match_fd(
    calc_fn: CalcFn,
    atoms: Atoms,
    h: float = 1e-4,
    rtol: float = 1e-6,
    atol: float = 0.0,
    indices: Sequence[int] | None = None,
    order: int = 2,
) -> float:
    """Forces equal ``-dE/dr`` by central differences of the energy.

    Tolerance ``atol + rtol * max|F|``. ``indices`` limits the (costly) finite
    differences to some atoms; ``order`` 2 or 4 picks the stencil (see ``fd_forces``).

    Returns:
        The worst absolute deviation (eV/Å).
    """
    forces = np.asarray(calc_fn(atoms)["forces"], dtype=float)
    idx = np.arange(len(atoms)) if indices is None else np.asarray(indices)
    fd = fd_forces(lambda a: float(calc_fn(a)["energy"]), atoms, h, idx, order)
    return assert_close(
        f"forces vs central FD (h={h:g} Å, order {order})",
        forces[idx],
        fd[idx],
        rtol,
        atol,
        scale=float(np.abs(forces).max()),
    )


def assert_stress_matches_strain_fd(
    calc_fn: CalcFn,
    atoms: Atoms,
    h: float = 1e-5,
    rtol: float = 1e-6,
    atol: float = 0.0,
    order: int = 2,
) -> float:
    """Stress equals ``(1/V) dE/d eps`` by central differences of a symmetric strain.

    Tolerance ``atol + rtol * max|stress|``; ``order`` 2 or 4 picks the stencil.

    Returns:
        The worst absolute deviation (eV/Å³).
    """
    stress = np.asarray(calc_fn(atoms)["stress"], dtype=float)
    fd = fd_stress(lambda a: float(calc_fn(a)["energy"]), atoms, h, order)
    return assert_close(
        f"stress vs strain FD (h={h:g}, order {order})", stress, fd, rtol, atol
    )


# -------------------------------------------------------------------- invariances
def random_rotation(rng: np.random.Generator, proper: bool = True) -> np.ndarray:
    """A Haar-random orthogonal 3x3 matrix (det +1 if ``proper``)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if proper and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _full(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])


def _voigt(t: np.ndarray) -> np.ndarray:
    return np.array([t[i, j] for i, j in VOIGT])


def _tensor_total_variance(std_voigt: np.ndarray) -> float:
    """``sum_ij Var(T_ij)`` of a symmetric tensor from Voigt stds (rotation
    invariant)."""
    s2 = np.square(np.asarray(std_voigt, dtype=float))
    return float(s2[:3].sum() + 2 * s2[3:].sum())


def _is_signed_permutation(R: np.ndarray) -> bool:
    return bool(
        np.allclose(np.abs(R) @ np.abs(R).T, np.eye(3))
        and np.allclose(np.abs(R), np.round(np.abs(R)))
    )


def assert_rotation_invariant(
    calc_fn: CalcFn,
    atoms: Atoms,
    R: np.ndarray,
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float = 1e-6,
) -> dict[str, float]:
    """Rotating positions and cell by ``R`` leaves energies unchanged and rotates
    forces (``F R^T``) and stress (``R s R^T``).

    Stds: energy and per-atom energy stds are invariant. Per-component force/stress
    stds are only invariant for a signed permutation ``R`` (e.g. a 90° turn), where
    they are permuted; for a general ``R`` the rotation-invariant totals are compared
    (``sum_k Var F_ak`` per atom and ``sum_ij Var s_ij``).
    """
    R = np.asarray(R, dtype=float)
    ref = calc_fn(atoms)
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    rot.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    got = dict(calc_fn(rot))
    want: dict[str, Any] = {
        k: ref[k]
        for k in ("energy", "energies", "energy_std", "energies_std")
        if k in ref
    }
    want["forces"] = np.asarray(ref["forces"]) @ R.T
    if "stress" in ref:
        want["stress"] = _voigt(R @ _full(ref["stress"]) @ R.T)
    perm = np.abs(R)
    if "forces_std" in ref:
        if _is_signed_permutation(R):
            want["forces_std"] = np.asarray(ref["forces_std"]) @ perm.T
        else:
            got["forces_std_sumsq"] = np.square(got["forces_std"]).sum(axis=1)
            want["forces_std_sumsq"] = np.square(ref["forces_std"]).sum(axis=1)
    if "stress_std" in ref:
        if _is_signed_permutation(R):
            want["stress_std"] = _voigt(perm @ _full(ref["stress_std"]) @ perm.T)
        else:
            got["stress_std_sumsq"] = _tensor_total_variance(got["stress_std"])
            want["stress_std_sumsq"] = _tensor_total_variance(ref["stress_std"])
    return compare_results("rotation", got, want, rtol, atol, rtol_std)


def assert_translation_invariant(
    calc_fn: CalcFn,
    atoms: Atoms,
    shift: Sequence[float],
    wrap: bool = True,
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float = 1e-6,
) -> dict[str, float]:
    """Translating all atoms by ``shift`` Å (then wrapping into a periodic cell if
    ``wrap``) changes no result."""
    moved = atoms.copy()
    moved.positions = atoms.positions + np.asarray(shift, dtype=float)
    if wrap and atoms.pbc.any():
        moved.wrap()
    return compare_results(
        "translation", calc_fn(moved), _same(calc_fn(atoms)), rtol, atol, rtol_std
    )


def assert_permutation_invariant(
    calc_fn: CalcFn,
    atoms: Atoms,
    perm: Sequence[int],
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float = 1e-6,
) -> dict[str, float]:
    """Reordering atoms (``new[k] = old[perm[k]]``) reorders per-atom results and
    leaves the rest unchanged."""
    perm = np.asarray(perm)
    ref = _same(calc_fn(atoms))
    want = {k: (np.asarray(v)[perm] if k in PER_ATOM else v) for k, v in ref.items()}
    return compare_results(
        "permutation", calc_fn(atoms[perm]), want, rtol, atol, rtol_std
    )


def assert_supercell_invariant(
    calc_fn: CalcFn,
    atoms: Atoms,
    reps: Sequence[int] = (2, 1, 1),
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float = 1e-6,
) -> dict[str, float]:
    """A ``reps`` supercell has n x the energy (and energy std: the local energies
    are the same random variables repeated), the same per-atom results tiled, and the
    same stress and stress std."""
    n = int(np.prod(reps))
    ref = _same(calc_fn(atoms))
    want: dict[str, Any] = {}
    for k, v in ref.items():
        if k in ("energy", "energy_std"):
            want[k] = n * float(v)
        elif k in PER_ATOM:
            v = np.asarray(v)
            want[k] = np.tile(v, (n,) + (1,) * (v.ndim - 1))
        else:
            want[k] = v
    return compare_results(
        f"supercell {tuple(reps)}",
        calc_fn(atoms.repeat(reps)),
        want,
        rtol,
        atol,
        rtol_std,
    )


def assert_cell_choice_invariant(
    calc_fn: CalcFn,
    atoms: Atoms,
    M: np.ndarray,
    rtol: float = 1e-8,
    atol: float = 0.0,
    rtol_std: float = 1e-6,
) -> dict[str, float]:
    """The same crystal described by another cell (``cell' = M cell``, M integer with
    det ±1) with wrapped positions gives the same results, atom by atom."""
    M = np.asarray(M)
    if not (np.issubdtype(M.dtype, np.integer) and abs(round(np.linalg.det(M))) == 1):
        raise ValueError(f"M={M.tolist()} is not a unimodular integer matrix")
    other = atoms.copy()
    other.set_cell(M @ atoms.cell.array, scale_atoms=False)
    other.wrap()
    return compare_results(
        "cell choice", calc_fn(other), _same(calc_fn(atoms)), rtol, atol, rtol_std
    )


PER_ATOM = ("energies", "forces", "energies_std", "forces_std")
_COMPARED = (
    "energy",
    "energies",
    "forces",
    "stress",
    "energy_std",
    "energies_std",
    "forces_std",
    "stress_std",
)


def _same(ref: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable results of ``ref`` (absent stress stays absent)."""
    return {
        k: (ref[k] if k in ref else None)
        for k in _COMPARED
        if k in ref or k in ("stress", "stress_std")
    }


def assert_symmetries(
    calc_fn: CalcFn,
    atoms: Atoms,
    rng: np.random.Generator,
    improper: bool = False,
    atol: float = 1e-8,
    rtol_std: float = 1e-6,
) -> None:
    """Every invariance check above on ``atoms``: a random rotation (times -1, a
    reflection too, if ``improper``), a translation with wrapping, a random
    permutation, a (1, 2, 1) supercell and a sheared choice of the same cell."""
    R = random_rotation(rng)
    kw = {"rtol_std": rtol_std}
    assert_rotation_invariant(calc_fn, atoms, -R if improper else R, atol, **kw)
    assert_translation_invariant(calc_fn, atoms, [0.7, -1.9, 2.3], True, atol, **kw)
    perm = rng.permutation(len(atoms))
    assert_permutation_invariant(calc_fn, atoms, perm, atol, **kw)
    assert_supercell_invariant(calc_fn, atoms, (1, 2, 1), atol, **kw)
    M = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert_cell_choice_invariant(calc_fn, atoms, M, atol, **kw)
