"""On-the-fly MD active learning of EMT Cu from an empty model, with every step checked
against the truth (the floor of gapfit issue 6).

The run: ``gapfit.learn.learn_otf`` with ``sampler="md"`` (Langevin, 2 fs) on a 3x3x3
cubic fcc Cu cell (108 atoms, a = 3.61 Å) at ``--temperature`` K, labeller ASE's EMT,
from an empty model (only the frames ``learn_otf`` labels itself; the start structure
is the first), at most ``--budget`` labels. A frame is labelled when ``a max_i s_i``
exceeds ``--threshold`` (eV/Å), ``s_i`` the DTC std of force component ``i`` and
``a`` learn_otf's held-out std scale (``gapfit.otf_mode._std_scale``).

The check: learn_otf's callback receives, after every step, the structure of that
step and the prediction that drove it: the GAP forces ``f`` and raw DTC stds ``s``
(its ``forces`` and ``forces_std``, copied from the calculator results *before* a
label of that step updated the model), the scale ``a`` then in force and the step's
predicted stds ``u`` (``step_std``: ``u^2 = (a s)^2 + b^2 + (c f)^2``, with the floor
``b`` and relative term ``c`` of learn_otf's held-out calibration so far; ``a s``
before it exists). The callback computes the true EMT forces ``F`` of a copy of the
structure and records per step: the largest error component ``max_i |e_i|`` (``e = F
- f``), the largest ``z_i = |e_i| / u_i``, the number of components with ``z_i > 3``,
the largest ``|e_i| / s_i`` (unscaled), whether the step was labelled, and the MD
temperature.

A *miss* is a step that was not labelled although some force component had
``|e_i| > 3 u_i`` (the issue's "true force error above 3x its predicted std");
reported with the fraction of such components over all unlabelled steps. For
reference, with exactly calibrated Gaussian errors a 108-atom step (324 components)
has at least one component above 3 std with probability ``1 - 0.9973^324 = 0.58``.
Also reported: the coarser step-level test ``max_i |e_i| > 3 max_i u_i``, and the
per-atom one, some atom with ``|e_a| > 3 |u_a|`` (error and std vectors' lengths).

The independent test set: EMT Langevin MD (friction 0.01/fs, 2 fs) of a separate
108-atom cell at ``--temperature`` K, seeded with ``--test-seed``, 1 ps of
equilibration, then ``--n-test`` frames 50 steps apart; the final model's force RMSE
on them, and the coverage of their force components by the central 68 % and 95 %
intervals (and the RMS of error over std) of the loop's stds ``u`` (with the final
``a`` and map) and of the saved ``model.npz``'s calibrated stds (learn_otf's held-out
calibration, ``gapfit.heldout``).

What-if table: with the run's per-component errors and predicted stds of every step
(``components.npz``: ``error`` and ``std`` = ``u``, (steps, atoms, 3), float32), how a
std factor ``K`` (stds ``K u``, labels where ``K a max_i s_i`` exceeds ``T``) and a
threshold ``T`` would have fared *on the recorded trajectory*: the steps whose ``K a
max_i s_i`` exceeds ``T`` that the run did not label, and the misses ``|e_i| > 3 K
u_i`` among the steps labelled by neither (in
the first 400 steps and after). Labels change the model and the trajectory, so this
is an estimate without that feedback, not a rerun.

Outputs in ``--workdir``: ``otf/`` (learn_otf's work directory), ``steps.npz`` (the
per-step arrays) and ``components.npz``, both rewritten atomically every 100 steps
and at the end, ``--json`` (all figures). ``--resume`` continues a killed run from
its last checkpoint (learn_otf ``resume=True``; the steps since it are repeated and
recorded again; the test set is the run's copy); on a finished run it only reports
again. Wall times are those of the invocation.

    python benchmarks/bench_otf.py --steps 5000 --temperature 1200 --threshold 0.05 \\
        --budget 40 --n-test 20 --workdir otf_run --json otf.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

from gapfit import GAP
from gapfit.calibration import std_samples
from gapfit.curve import test_errors
from gapfit.data import frames_from_atoms
from gapfit.labeller import label
from gapfit.learn import learn_otf
from gapfit.model import Model
from gapfit.otf_mode import step_force_std
from gapfit.samplers import thermalize_momenta
from gapfit.uncertainty import metrics

SOAP = "cutoff=4.5 cutoff_transition_width=1.0 n_max=5 l_max=4 n_sparse=150"
FIELDS = {  # per-step arrays of steps.npz: name -> dtype
    "labelled": bool,
    "max_std": float,  # a max_i s_i, eV/Å (what learn_otf compares to the threshold)
    "max_u": float,  # max_i u_i, eV/Å (the step's largest predicted std)
    "std_scale": float,  # a
    "max_err": float,  # max_i |e_i|, eV/Å
    "rms_err": float,  # sqrt(mean_i e_i^2), eV/Å
    "rms_std": float,  # sqrt(mean_i u_i^2), eV/Å
    "max_z": float,  # max_i |e_i| / u_i
    "max_z_raw": float,  # max_i |e_i| / s_i
    "n_over_3": int,  # components with |e_i| > 3 u_i
    "temperature": float,  # K, from the momenta
}


def cu_cell() -> Atoms:
    """3x3x3 cubic fcc Cu, 108 atoms, a = 3.61 Å."""
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)


def md_test_set(n: int, temperature: float, seed: int) -> list[Atoms]:
    """``n`` EMT-labelled frames of EMT Langevin MD of ``cu_cell`` at ``temperature``
    K: 500 steps (1 ps) of equilibration, then one frame every 50 steps."""
    rng = np.random.default_rng(seed)
    atoms = cu_cell()
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        2.0 * units.fs,
        temperature_K=temperature,
        friction=0.01 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(500)
    out = []
    for _ in range(n):
        dyn.run(50)
        out.append(label(EMT(), atoms))
    return out


class StepChecker:
    """learn_otf callback: the true EMT forces of every step against the prediction
    that drove it (module docstring); ``rows`` maps step -> per-step values."""

    def __init__(
        self,
        path: Path,
        rows: dict[int, dict] | None = None,
        components: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.path = path
        self.rows = rows or {}
        self.components = components or {}  # step -> (error, step std u), float32
        self.emt = EMT()
        self.seconds = 0.0

    def __call__(self, event: dict) -> None:
        t0 = time.perf_counter()
        atoms = event["atoms"]
        copy = Atoms(
            numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell,
            pbc=atoms.pbc,
        )
        copy.calc = self.emt
        e = copy.get_forces() - event["forces"]  # (n_atoms, 3) eV/Å
        s = np.maximum(event["forces_std"], 1e-12)  # raw DTC std, eV/Å
        a = event["std_scale"]
        u = np.maximum(event["step_std"], 1e-12)  # the step's predicted std, eV/Å
        z = np.abs(e) / u
        self.components[event["step"]] = (e.astype(np.float32), u.astype(np.float32))
        self.rows[event["step"]] = {
            # step 0 is the start structure, labelled before the MD starts
            "labelled": event["labelled"] or event["step"] == 0,
            "max_std": event["max_std"],
            "max_u": float(u.max()),
            "std_scale": a,
            "max_err": float(np.abs(e).max()),
            "rms_err": float(np.sqrt(np.mean(e**2))),
            "rms_std": float(np.sqrt(np.mean(u**2))),
            "max_z": float(z.max()),
            "max_z_raw": float((np.abs(e) / s).max()),
            "n_over_3": int((z > 3.0).sum()),
            "temperature": float(atoms.get_temperature()),
        }
        self.seconds += time.perf_counter() - t0
        if event["step"] % 100 == 99:
            self.save()

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-step arrays (``step`` and ``FIELDS``), in step order."""
        steps = sorted(self.rows)
        out = {"step": np.array(steps, dtype=int)}
        for name, dtype in FIELDS.items():
            out[name] = np.array([self.rows[k][name] for k in steps], dtype=dtype)
        return out

    def component_arrays(self) -> dict[str, np.ndarray]:
        """``step``, ``error`` and ``std`` (steps, atoms, 3) in step order."""
        steps = sorted(self.components)
        return {
            "step": np.array(steps, dtype=int),
            "error": np.array([self.components[k][0] for k in steps]),
            "std": np.array([self.components[k][1] for k in steps]),
        }

    def save(self) -> None:
        """Write ``arrays()`` to ``path`` and ``component_arrays()`` beside it
        (``components.npz``), each atomically."""
        for path, arrays in (
            (self.path, self.arrays()),
            (self.path.with_name("components.npz"), self.component_arrays()),
        ):
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StepChecker:
        """A checker holding the rows saved at ``path`` and the components beside it
        (none if absent)."""
        if not path.is_file():
            return cls(path)
        # each f[name] reads the whole array again: read each once
        with np.load(path) as f:
            saved = {name: f[name] for name in ("step", *FIELDS)}
        rows = {
            int(k): {name: saved[name][i].item() for name in FIELDS}
            for i, k in enumerate(saved["step"])
        }
        components = {}
        if path.with_name("components.npz").is_file():
            with np.load(path.with_name("components.npz")) as f:
                step, error, std = f["step"], f["error"], f["std"]
            components = {
                int(k): (error[i].copy(), std[i].copy()) for i, k in enumerate(step)
            }
        return cls(path, rows, components)


def summary(arrays: dict[str, np.ndarray], n_components: int, threshold: float) -> dict:
    """Figures of the per-step arrays (see the module docstring); ``threshold`` the
    run's std threshold (eV/Å)."""
    free = ~arrays["labelled"]
    over = free & (arrays["max_std"] > threshold)
    misses = free & (arrays["max_z"] > 3.0)
    coarse = free & (arrays["max_err"] > 3.0 * arrays["max_u"])
    n_free = int(free.sum())
    p3 = math.erfc(3.0 / math.sqrt(2.0))  # P(|z| > 3), z ~ N(0, 1)
    return {
        "steps_checked": int(len(free)),
        "labelled_steps": int((~free).sum()),
        "last_labelled_step": int(arrays["step"][~free][-1]),
        # held back by the budget, --min-interval or a std floor (otf_mode._over)
        "unlabelled_over_threshold": int(over.sum()),
        "misses": int(misses.sum()),
        "miss_fraction_of_unlabelled_steps": float(misses.sum() / max(n_free, 1)),
        "miss_components_fraction": float(
            arrays["n_over_3"][free].sum() / max(n_free * n_components, 1)
        ),
        "calibrated_gaussian_miss_fraction": 1.0 - (1.0 - p3) ** n_components,
        "calibrated_gaussian_components_fraction": p3,
        "first_miss_step": int(arrays["step"][misses][0]) if misses.any() else None,
        "step_level_misses": int(coarse.sum()),
        "max_err_unlabelled": float(arrays["max_err"][free].max()) if n_free else None,
        "max_z_unlabelled": float(arrays["max_z"][free].max()) if n_free else None,
        "std_factor_for_no_miss": float(arrays["max_z"][free].max() / 3.0)
        if n_free
        else None,
        "median_max_z_unlabelled": float(np.median(arrays["max_z"][free]))
        if n_free
        else None,
        "mean_rms_err_unlabelled": float(arrays["rms_err"][free].mean())
        if n_free
        else None,
        "mean_rms_std_unlabelled": float(arrays["rms_std"][free].mean())
        if n_free
        else None,
        "mean_temperature": float(arrays["temperature"].mean()),
        "final_std_scale": float(arrays["std_scale"][-1]),
    }


def atom_misses(
    arrays: dict[str, np.ndarray], components: dict[str, np.ndarray]
) -> dict:
    """The per-atom reading of a miss: an unlabelled step with some atom whose error
    vector is longer than 3 times its std vector, ``|e_a| > 3 |u_a|`` (``|u_a|`` the
    root of the sum of its components' variances); counts before step 400 and after,
    and the largest ``|e_a| / |u_a|`` of the unlabelled steps."""
    n = len(components["step"])
    e = np.linalg.norm(components["error"].astype(float), axis=2)  # (n, atoms)
    u = np.linalg.norm(components["std"].astype(float), axis=2)
    z = (e / np.maximum(u, 1e-12)).max(axis=1)
    free = ~arrays["labelled"][:n]
    miss = free & (z > 3.0)
    early = components["step"] < 400
    return {
        "atom_misses": int(miss.sum()),
        "atom_misses_before_400": int((miss & early).sum()),
        "atom_misses_after_400": int((miss & ~early).sum()),
        "atom_max_z_unlabelled": float(z[free].max()) if free.any() else None,
    }


def what_if(
    arrays: dict[str, np.ndarray],
    components: dict[str, np.ndarray],
    factors: tuple[float, ...] = (1.0, 1.5, 2.0),
    thresholds: tuple[float, ...] = (0.05, 0.08, 0.1),
) -> list[dict]:
    """Std factor ``K`` and threshold ``T`` on the recorded trajectory (module
    docstring): per (K, T), the steps the run did not label whose ``K a max s``
    exceeds ``T`` (``extra_labels``) and the misses of the steps labelled by neither,
    in steps < 400 and >= 400."""
    n = len(components["step"])
    e = np.abs(components["error"].reshape(n, -1)).astype(float)
    u = np.maximum(components["std"].reshape(n, -1).astype(float), 1e-12)
    z_max = (e / u).max(axis=1)  # max_i |e_i| / u_i
    s_max = arrays["max_std"][:n]  # a max_i s_i
    free = ~arrays["labelled"][:n]
    early = components["step"] < 400
    out = []
    for K in factors:
        for T in thresholds:
            would = K * s_max > T
            miss = free & ~would & (z_max > 3.0 * K)
            out.append(
                {
                    "factor": K,
                    "threshold": T,
                    "extra_labels": int((free & would).sum()),
                    "misses_before_400": int((miss & early).sum()),
                    "misses_after_400": int((miss & ~early).sum()),
                }
            )
    return out


def test_set_stds(model_path: Path, frames: list, scale: float) -> dict:
    """Force-component coverage of the saved model's stds on the test set: the
    loop's (``u``: DTC stds times the final scale ``a``, with the floor and relative
    term of the final map) and, when ``model.npz`` carries learn_otf's held-out
    calibration, the calibrated ones (with the map)."""
    model = Model.load(model_path)
    samples = std_samples(model, frames, model.predict(frames, std=True))
    raw = samples["DTC"]["forces"]
    pred = {"forces": raw.reference + raw.error, "forces_std": raw.std}
    u = step_force_std(pred, scale, model.calibration, "default")
    kinds = {"loop": (raw.error, u)}
    if "calibrated" in samples:
        cal = samples["calibrated"]["forces"]
        kinds["calibrated"] = (cal.error, cal.std)
    out = {
        k: metrics("forces", e, sd) | {"rms_z": float(np.sqrt(np.mean((e / sd) ** 2)))}
        for k, (e, sd) in kinds.items()
    }
    if model.calibration is not None:
        out["map"] = dataclasses.asdict(model.calibration.quantities["forces"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--temperature", type=float, default=1200.0, help="K")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="scaled std, eV/Å (learn_otf's 0.1 labelled 7 frames in 400 steps while "
        "force errors reached 1 eV/Å)",
    )
    p.add_argument("--budget", type=int, default=40)
    p.add_argument(
        "--min-interval", type=int, default=1, help="steps from one label to the next"
    )
    p.add_argument(
        "--optimise-hyperparameters",
        action="store_true",
        help="re-choose delta and the sigmas by the evidence at each scheduled refit",
    )
    p.add_argument(
        "--refit-every", type=int, default=20, help="labels between full refits"
    )
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--soap", default=SOAP)
    p.add_argument(
        "--distance-2b",
        default=None,
        metavar="SETTINGS",
        help='a 2-body term as well, e.g. "cutoff=4.5 delta=1.0 theta_uniform=1.0 '
        'n_sparse=20"',
    )
    p.add_argument("--sparse-per-label", type=int, default=20)
    p.add_argument("--seed", type=int, default=1, help="seed of the learning MD")
    p.add_argument("--test-seed", type=int, default=2, help="seed of the test MD")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_otf_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.resume:  # the run's own copy
        test = ase.io.read(root / "otf" / "test.xyz", index=":")
    else:
        test = md_test_set(args.n_test, args.temperature, args.test_seed)
    t_test = time.perf_counter() - t0
    path = root / "steps.npz"
    checker = StepChecker.load(path) if args.resume else StepChecker(path)
    t0 = time.perf_counter()
    if args.resume:
        learner = learn_otf(
            root / "otf",
            "emt",
            resume=True,
            progress=not args.quiet,
            callback=checker,
        )
    else:
        learner = learn_otf(
            root / "otf",
            "emt",
            cu_cell(),
            GAP(
                soap=args.soap,
                distance_2b=args.distance_2b,
                e0_method="average",
                optimise_hyperparameters=args.optimise_hyperparameters,
            ),
            test,
            sampler="md",
            steps=args.steps,
            temperature=args.temperature,
            timestep=2.0,
            std_threshold=args.threshold,
            budget=args.budget,
            min_interval=args.min_interval,
            sparse_per_label=args.sparse_per_label,
            refit_every=args.refit_every,
            seed=args.seed,
            progress=not args.quiet,
            callback=checker,
        )
    wall = time.perf_counter() - t0
    checker.save()

    frames = frames_from_atoms(test, require=("energy", "forces"), source="test")
    errors = test_errors(learner.model, frames)  # meV/atom, meV/Å
    f_rmse = errors["f_rmse"] / 1e3  # eV/Å
    arrays = checker.arrays()
    cfg = learner.settings  # the run's own (on resume too)
    n_labels = len(learner.labelled)
    fit_seconds = sum(
        e.get("seconds", 0.0)
        for e in learner.log
        if e["event"] in ("refit", "update", "reoptimised")
    )
    figures = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "run_settings": cfg,
        "labels": n_labels,
        "labelled_sources": [a.info.get("source") for a in learner.labelled],
        "n_sparse": learner.n_sparse,
        "stop": learner.state.get("done"),
        "test_f_rmse": f_rmse,
        "test_e_rmse_mev_per_atom": errors["e_rmse"],
        "test_mean_f_std_raw": errors["f_std"] / 1e3,
        "test_set_seconds": round(t_test, 1),
        "learn_otf_seconds": round(wall, 1),
        "fit_seconds": round(fit_seconds, 1),
        "check_seconds": round(checker.seconds, 1),
        **summary(arrays, 3 * len(cu_cell()), cfg["std_threshold"]),
    }
    figures["test_stds"] = test_set_stds(
        root / "otf" / "model.npz", frames, figures["final_std_scale"]
    )
    components = checker.component_arrays()
    figures.update(atom_misses(arrays, components))
    figures["what_if"] = what_if(arrays, components)
    figures["floor"] = {
        "labels_le_40": n_labels <= 40,
        "test_f_rmse_le_0.05": f_rmse <= 0.05,
        "no_misses": figures["misses"] == 0,
        "all_steps_run": figures["steps_checked"] == cfg["steps"],
    }
    rows = [
        ("labels used (incl. start)", f"{n_labels}"),
        ("  last labelled step", f"{figures['last_labelled_step']}"),
        (
            "  unlabelled steps with a max std over the threshold",
            f"{figures['unlabelled_over_threshold']}",
        ),
        ("SOAP sparse points", f"{learner.n_sparse}"),
        ("steps checked", f"{figures['steps_checked']} of {cfg['steps']}"),
        ("misses: unlabelled steps, some |e| > 3 u", f"{figures['misses']}"),
        (
            "  fraction of unlabelled steps",
            f"{figures['miss_fraction_of_unlabelled_steps']:.4f}",
        ),
        (
            "  fraction of their components",
            f"{figures['miss_components_fraction']:.2e}",
        ),
        (
            "  (calibrated Gaussian stds: steps, components)",
            f"{figures['calibrated_gaussian_miss_fraction']:.4f}, "
            f"{figures['calibrated_gaussian_components_fraction']:.2e}",
        ),
        ("  first miss at step", f"{figures['first_miss_step']}"),
        ("step-level misses: max|e| > 3 max u", f"{figures['step_level_misses']}"),
        (
            "atom-level misses: some |e_a| > 3 |u_a| (<400, >=400)",
            f"{figures['atom_misses']} ({figures['atom_misses_before_400']}, "
            f"{figures['atom_misses_after_400']})",
        ),
        (
            "  max |e_a| / |u_a| of unlabelled steps",
            f"{figures['atom_max_z_unlabelled']:.2f}",
        ),
        ("max |e| of unlabelled steps (eV/Å)", f"{figures['max_err_unlabelled']:.4f}"),
        ("max |e| / u of unlabelled steps", f"{figures['max_z_unlabelled']:.2f}"),
        (
            "  std factor that would leave no miss",
            f"{figures['std_factor_for_no_miss']:.2f}",
        ),
        (
            "median per step of max |e| / u",
            f"{figures['median_max_z_unlabelled']:.2f}",
        ),
        (
            "mean per-step RMS error, unlabelled (eV/Å)",
            f"{figures['mean_rms_err_unlabelled']:.4f}",
        ),
        (
            "  mean per-step RMS u, unlabelled (eV/Å)",
            f"{figures['mean_rms_std_unlabelled']:.4f}",
        ),
        ("final std scale a", f"{figures['final_std_scale']:.3f}"),
        ("mean MD temperature (K)", f"{figures['mean_temperature']:.0f}"),
        ("test F RMSE (eV/Å)", f"{f_rmse:.4f}"),
        *(
            (
                f"test F stds, {name}: coverage 68 / 95 %, RMS z",
                f"{m['coverage_68']:.2f} / {m['coverage_95']:.2f}, {m['rms_z']:.2f}",
            )
            for name, m in figures["test_stds"].items()
            if name != "map"
        ),
        ("wall: learn_otf (s)", f"{wall:.0f}"),
        ("  of which refits/updates (s)", f"{fit_seconds:.0f}"),
        ("  of which EMT checks (s)", f"{checker.seconds:.0f}"),
        ("wall: test set (s)", f"{t_test:.0f}"),
    ]
    for name, ok in figures["floor"].items():
        rows.append((f"floor {name}", "PASS" if ok else "FAIL"))
    width = max(len(r[0]) for r in rows)
    print(
        f"\nOTF MD, {cfg['temperature']:.0f} K, threshold {cfg['std_threshold']} eV/Å"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"stopped: {figures['stop']}; outputs in {root}")
    print(
        "\nwhat if (on this trajectory, no feedback): stds K u, label when "
        "K a max s > T\n     K  T eV/Å  extra labels  misses <400  misses >=400"
    )
    for r in figures["what_if"]:
        print(
            f"{r['factor']:>6.2f} {r['threshold']:>6.3f} {r['extra_labels']:>13} "
            f"{r['misses_before_400']:>12} {r['misses_after_400']:>13}"
        )
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(figures, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
