"""Fit a GAP in Python, run MD with it as an ASE calculator, and watch its stds.

1. Fit a SOAP GAP to the shipped ``cu_emt_small.xyz`` (fcc Cu labelled by ASE's EMT)
   and calibrate its stds on 5-fold cross-validated predictions (as ``gapfit
   calibrate --cv 5``).
2. Langevin MD of a 108-atom cell at 600 K driven by ``GAPCalculator(model,
   std="energy")``: every step also gives the local energies' stds, at about twice
   the mean's cost.
3. Every ``check_every`` steps the frame is predicted with every std
   (``model.predict(..., std=True)``) and compared with EMT: force stds against
   force errors. Along the MD the RMS force std is close to the RMS error.
4. The last frame squeezed by 15 % in volume, far from the training data: the stds
   rise (about twice) but the errors far more (about ten times). Far outside its
   data a std flags the frame; it is no error bar there.

Run ``python examples/md_with_uncertainty.py`` (about 20 s on 2 cores, most of it
compiling); it prints one table. A reduced SOAP (n_max 6, l_max 4, 100 sparse points)
keeps it quick; the README's first screen has the full recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from gapfit import GAP, GAPCalculator, Model
from gapfit.crossval import calibrate_cv
from gapfit.data import read_frames
from gapfit.samplers import MDSampler  # ASE's Langevin, velocities at temperature

DATA = Path(__file__).with_name("cu_emt_small.xyz")
SOAP = "cutoff=5.0 cutoff_transition_width=1.0 n_max=6 l_max=4 n_sparse=100"
SQUEEZE = 0.85  # volume ratio of the squeezed cell


def check(model: Model, atoms: Atoms) -> dict[str, float]:
    """Largest local-energy std (meV), the largest and RMS force-component stds and
    the force errors against EMT (RMS and largest; meV/Å) of one frame."""
    (pred,) = model.predict([atoms], std=True)
    reference = atoms.copy()
    reference.calc = EMT()
    error = pred["forces"] - reference.get_forces()
    return {
        "energies_std": 1e3 * float(np.max(pred["energies_std"])),
        "forces_std": 1e3 * float(np.max(pred["forces_std"])),
        "f_rms_std": 1e3 * float(np.sqrt(np.mean(pred["forces_std"] ** 2))),
        "f_rmse": 1e3 * float(np.sqrt(np.mean(error**2))),
        "f_max": 1e3 * float(np.max(np.abs(error))),
    }


def main(steps: int = 60, check_every: int = 20, seed: int = 1) -> list[dict]:
    """Fit, run the MD, squeeze the cell; print and return the table's rows."""
    gap = GAP(soap=SOAP, e0_method="isolated", rnd_seed=seed, progress=False)
    frames = read_frames(DATA)
    # stds calibrated on 5-fold cross-validated predictions (gapfit calibrate --cv 5)
    model = calibrate_cv(gap.fit(frames).model_, frames, k=5).model

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)  # 108 atoms
    atoms.calc = GAPCalculator(model, std="energy")
    md = MDSampler(atoms, 600.0, 2.0, 0.01, np.random.default_rng(seed), fresh=True)
    rows = []
    for step in range(0, steps + 1, check_every):
        for _ in range(check_every if step else 0):
            md.step()  # 2 fs; the calculator's energy stds come with every step
        rows.append(
            {
                "frame": f"MD step {step}",
                "T_K": atoms.get_temperature(),
                **check(model, atoms),
            }
        )
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * SQUEEZE ** (1 / 3), scale_atoms=True)
    name = f"squeezed {100 * (1 - SQUEEZE):.0f} %"
    rows.append({"frame": name, "T_K": np.nan, **check(model, squeezed)})

    head = ("frame", "T", "max Ei std", "max F std", "RMS F std", "F RMSE", "max |err|")
    unit = ("", "K", "meV", "meV/Å", "meV/Å", "meV/Å", "meV/Å")
    for line in (head, unit):
        print(f"{line[0]:14s}" + "".join(f"{x:>12s}" for x in line[1:]))
    keys = ("energies_std", "forces_std", "f_rms_std", "f_rmse", "f_max")
    for r in rows:
        temperature = "-" if np.isnan(r["T_K"]) else f"{r['T_K']:.0f}"
        print(
            f"{r['frame']:14s}{temperature:>12s}"
            + "".join(f"{r[k]:12.2f}" for k in keys)
        )
    return rows


if __name__ == "__main__":
    main()
