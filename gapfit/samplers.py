"""Structure samplers for active learning: dynamics driven by the GAP, and rattling.

- ``MDSampler``: Langevin molecular dynamics (ASE's ``Langevin``, BAOAB-like
  Vanden-Eijnden & Ciccotti integrator) at ``temperature`` K with a ``timestep`` in fs
  and a ``friction`` in 1/fs, velocities from a Maxwell-Boltzmann distribution; the
  random numbers come from one seeded ``numpy.random.Generator``, whose state is part
  of the checkpoint, so a resumed run repeats the same trajectory.
- ``RelaxSampler``: FIRE relaxation (Bitzek et al., PRL 97, 170201 (2006)) of the
  positions until the largest force is below ``fmax`` eV/Å (its velocities restart on
  resume).
- ``rattled``: copies of structures with Gaussian displacements and strains, a pool
  for pool-mode active learning.

A sampler's ``step`` moves ``atoms`` by one step with the forces of the calculator
attached to them (the GAP), which computes its mean and std in the same call.
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.optimize import FIRE

try:  # ASE >= 3.29 (MaxwellBoltzmannDistribution is deprecated there)
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )


class MDSampler:
    """Langevin MD of ``atoms`` (see the module docstring)."""

    def __init__(
        self,
        atoms: ase.Atoms,
        temperature: float,
        timestep: float,
        friction: float,
        rng: np.random.Generator,
        fresh: bool,
    ) -> None:
        self.atoms = atoms
        if fresh:
            thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
            Stationary(atoms)
        self.dyn = Langevin(
            atoms,
            timestep * units.fs,
            temperature_K=temperature,
            friction=friction / units.fs,
            fixcm=False,
            rng=rng,
        )

    def step(self) -> None:
        self.dyn.step()

    def converged(self) -> bool:
        return False


class RelaxSampler:
    """FIRE relaxation of the positions of ``atoms`` down to ``fmax`` eV/Å."""

    def __init__(self, atoms: ase.Atoms, fmax: float) -> None:
        self.atoms = atoms
        self.fmax = fmax
        self.opt = FIRE(atoms, logfile=None)

    def step(self) -> None:
        self.opt.step()

    def converged(self) -> bool:
        forces = self.atoms.get_forces()
        return bool(np.sqrt((forces**2).sum(axis=1)).max() < self.fmax)


def sampler_arrays(atoms: ase.Atoms) -> dict[str, np.ndarray]:
    """What a checkpoint keeps of the sampled structure (exact float64)."""
    return {
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "momenta": atoms.get_momenta(),
        "cell": atoms.cell.array,
        "pbc": atoms.pbc,
    }


def atoms_from_arrays(arrays: dict[str, np.ndarray]) -> ase.Atoms:
    """The structure saved by ``sampler_arrays``."""
    atoms = ase.Atoms(
        numbers=arrays["numbers"],
        positions=arrays["positions"],
        cell=arrays["cell"],
        pbc=arrays["pbc"],
    )
    atoms.set_momenta(arrays["momenta"])
    return atoms


def rattled(
    structures: Sequence[ase.Atoms],
    n: int,
    stdev: float,
    strain: float = 0.0,
    seed: int = 1,
) -> list[ase.Atoms]:
    """``n`` copies of the structures (in turn), each atom displaced by a Gaussian of
    ``stdev`` Å per component and, for periodic cells, the cell strained by a
    symmetric Gaussian strain of ``strain`` per component; ``config_type`` rattled."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = structures[k % len(structures)].copy()
        atoms.calc = None
        if strain > 0 and atoms.pbc.all():
            eps = rng.normal(0.0, strain, (3, 3))
            atoms.set_cell(
                atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
            )
        atoms.positions += rng.normal(0.0, stdev, atoms.positions.shape)
        atoms.info["config_type"] = "rattled"
        out.append(atoms)
    return out
