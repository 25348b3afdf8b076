"""Generate examples/cu_emt_small.xyz: fcc Cu labelled by ASE's EMT (seeded).

    python examples/make_cu_emt_small.py

40 configurations: strained + rattled 2x2x2 and 3x3x3 cubic cells, vacancies, a
(111) slab, short Langevin MD snapshots, and one isolated atom for e0. Keys:
energy (eV), forces (eV/Å), virial (eV, = -stress * volume), config_type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.io import write
from ase.md.langevin import Langevin


def labelled(atoms: Atoms, config_type: str) -> Atoms:
    atoms.calc = EMT()
    out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info["energy"] = atoms.get_potential_energy()
    out.arrays["forces"] = atoms.get_forces()
    if atoms.pbc.all():
        s = atoms.get_stress(voigt=False)
        out.info["virial"] = -s * atoms.get_volume()
    out.info["config_type"] = config_type
    return out


def main(path: Path = Path(__file__).with_name("cu_emt_small.xyz")) -> None:
    rng = np.random.default_rng(0)
    frames = [
        labelled(
            Atoms("Cu", [[10, 10, 10]], cell=[20, 20, 20], pbc=True), "isolated_atom"
        )
    ]
    for k in range(16):
        at = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2 if k % 2 else 3)
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        at.set_cell(at.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        at.positions += rng.normal(0, rng.uniform(0.02, 0.1), at.positions.shape)
        frames.append(labelled(at, "bulk_rattle"))
    for _ in range(8):
        at = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
        del at[rng.choice(len(at), size=rng.integers(1, 3), replace=False)]
        at.positions += rng.normal(0, 0.05, at.positions.shape)
        frames.append(labelled(at, "vacancy"))
    for _ in range(5):
        at = fcc111("Cu", (2, 2, 4), a=3.59, vacuum=6.0, periodic=True)
        at.positions += rng.normal(0, 0.05, at.positions.shape)
        frames.append(labelled(at, "surface"))
    at = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    at.calc = EMT()
    md = Langevin(
        at,
        2 * units.fs,
        temperature_K=1000,
        friction=0.02,
        fixcm=False,
        rng=np.random.default_rng(1),
    )
    for _ in range(10):
        md.run(20)
        frames.append(labelled(at.copy(), "md_1000K"))
    write(path, frames, format="extxyz")
    print(f"wrote {len(frames)} configs to {path}")


if __name__ == "__main__":
    main()
