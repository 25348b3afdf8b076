"""A baseline potential under the GP (gapfit.baseline): the GP learns the labels less
the baseline, predictions add it back, and every path (fit, update, cross-validation,
model file, command line) agrees."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from checks import assert_forces_match_fd, assert_stress_matches_strain_fd
from click.testing import CliRunner
from emt_cells import SOAP, cu_cells, emt_labelled

from gapfit import GAP, GAPCalculator, Model
from gapfit.baseline import Baseline
from gapfit.cli import main
from gapfit.crossval import cross_validated
from gapfit.data import LabelKeys
from gapfit.errors import GapfitError
from gapfit.gap_fit_args import QUIP_POTENTIAL, parse_gap_fit_command
from gapfit.learn import learn_pool
from gapfit.update import refit, update

LJ = {"epsilon": 0.4, "sigma": 2.3, "rc": 5.0, "smooth": True}  # eV, Å; smooth at rc


def isolated() -> Atoms:
    atoms = emt_labelled(Atoms("Cu", [[5.0] * 3], cell=[10.0] * 3, pbc=True))
    atoms.info["config_type"] = "isolated_atom"
    return atoms


@pytest.fixture(scope="module")
def train() -> list[Atoms]:
    return [isolated(), *cu_cells(8, seed=11)]


@pytest.fixture(scope="module")
def with_lj(train) -> GAP:
    return GAP(soap=SOAP, baseline="lj", baseline_kwargs=LJ).fit(train)


def less_lj(frames: list[Atoms]) -> list[Atoms]:
    """Copies whose labels are EMT's less Lennard-Jones'."""
    out = []
    for atoms in frames:
        lj = atoms.copy()
        lj.calc = LennardJones(**LJ)
        copy = atoms.copy()
        copy.info = dict(atoms.info)
        copy.calc = SinglePointCalculator(
            copy,
            energy=atoms.get_potential_energy() - lj.get_potential_energy(),
            forces=atoms.get_forces() - lj.get_forces(),
            stress=atoms.get_stress() - lj.get_stress(),
        )
        out.append(copy)
    return out


def lj_values(atoms: Atoms) -> dict:
    copy = atoms.copy()
    copy.calc = LennardJones(**LJ)
    return {
        "energy": copy.get_potential_energy(),
        "forces": copy.get_forces(),
        "stress": copy.get_stress(),
    }


def test_a_baseline_equal_to_the_labeller_leaves_nothing_to_learn(train) -> None:
    """EMT under EMT labels: zero weights, EMT's values on a new cell to rounding,
    and the GP's stds, which do not depend on the labels, unchanged."""
    gap = GAP(soap=SOAP, baseline="emt").fit(train)
    plain = GAP(soap=SOAP).fit(train)
    assert np.abs(np.asarray(gap.model_.posterior.weights)).max() < 1e-9
    assert gap.training_errors_["all"]["forces"]["rmse"] < 1e-9
    (new,) = cu_cells(1, seed=99, rattle=0.15)
    (got,), (ref,) = (
        gap.model_.predict([new], std=True),
        plain.model_.predict([new], std=True),
    )
    assert abs(got["energy"] - new.get_potential_energy()) < 1e-9
    assert np.abs(got["forces"] - new.get_forces()).max() < 1e-9
    assert np.abs(got["stress"] - new.get_stress()).max() < 1e-9
    for key in ("energy_std", "forces_std", "stress_std"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-12)


def test_the_model_is_the_baseline_plus_a_fit_to_what_it_leaves(with_lj, train) -> None:
    """A fit with the Lennard-Jones baseline equals a fit without one to the labels
    less Lennard-Jones, plus Lennard-Jones: same e0, weights and predictions."""
    plain = GAP(soap=SOAP).fit(less_lj(train))
    assert with_lj.model_.e0 == pytest.approx(plain.model_.e0, abs=1e-10)
    np.testing.assert_allclose(
        with_lj.model_.posterior.weights, plain.model_.posterior.weights, atol=1e-8
    )
    for key in ("energy", "forces", "virial"):
        assert with_lj.training_errors_["all"][key]["rmse"] == pytest.approx(
            plain.training_errors_["all"][key]["rmse"], rel=1e-6
        )
    new = cu_cells(2, seed=98, labelled=False, rattle=0.2)
    got = with_lj.model_.predict(new)
    ref = plain.model_.predict(new)
    for atoms, g, r in zip(new, got, ref, strict=True):
        lj = lj_values(atoms)
        assert g["energy"] == pytest.approx(r["energy"] + lj["energy"], abs=1e-8)
        np.testing.assert_allclose(g["forces"], r["forces"] + lj["forces"], atol=1e-8)
        np.testing.assert_allclose(g["stress"], r["stress"] + lj["stress"], atol=1e-9)
        lj_atoms = atoms.copy()
        lj_atoms.calc = LennardJones(**LJ)
        np.testing.assert_allclose(
            g["energies"], r["energies"] + lj_atoms.get_potential_energies(), atol=1e-8
        )
        assert g["energies"].sum() == pytest.approx(g["energy"], abs=1e-8)


def test_forces_and_stress_are_derivatives_with_a_baseline(with_lj) -> None:
    """Fourth-order differences; the steps balance Lennard-Jones' truncation error
    (5e-6 eV/Å at h = 3e-3 Å) against the rounding of an energy summed from weights
    of 1e5 (1.5e-5 eV/Å at 1e-4 Å, with or without a baseline). A baseline force
    of the wrong sign would be off by eV/Å."""
    (atoms,) = cu_cells(1, seed=97, labelled=False)

    def calc(a: Atoms) -> dict:
        return with_lj.model_.predict([a])[0]

    assert_forces_match_fd(calc, atoms, h=1e-3, order=4, rtol=1e-6, indices=[0, 7])
    assert_stress_matches_strain_fd(calc, atoms, h=3e-4, order=4, rtol=1e-6)


def test_update_and_cross_validation_subtract_the_baseline(with_lj, train) -> None:
    """The cheap update equals a refit, and cross-validated errors equal those of
    the plain fit to the labels less the baseline."""
    more = cu_cells(2, seed=12)
    updated = update(with_lj.model_, more)
    full = refit(with_lj.model_, [*train, *more])
    new = cu_cells(2, seed=95, labelled=False)
    for a, b in zip(updated.predict(new), full.predict(new), strict=True):
        assert abs(a["energy"] - b["energy"]) < 1e-8
        assert np.abs(a["forces"] - b["forces"]).max() < 1e-8
    assert updated.baseline == with_lj.model_.baseline
    plain = GAP(soap=SOAP).fit(less_lj(train))
    held, preds = cross_validated(with_lj.model_, train, k=3)
    held_p, preds_p = cross_validated(plain.model_, less_lj(train), k=3)
    for f, p, fp, pp in zip(held, preds, held_p, preds_p, strict=True):
        assert p["energy"] - f.energy == pytest.approx(
            pp["energy"] - fp.energy, abs=1e-8
        )
        np.testing.assert_allclose(
            p["forces"] - f.forces, pp["forces"] - fp.forces, atol=1e-8
        )
        np.testing.assert_allclose(p["forces_std"], pp["forces_std"], rtol=1e-8)


def test_the_model_file_names_the_baseline(with_lj, tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    with_lj.save(path)
    loaded = Model.load(path)
    assert loaded.baseline == with_lj.model_.baseline
    new = cu_cells(1, seed=96, labelled=False)
    (a,), (b,) = loaded.predict(new), with_lj.model_.predict(new)
    assert a["energy"] == b["energy"]
    assert np.array_equal(a["forces"], b["forces"])
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["baseline"] == {"calculator": "lj", "kwargs": LJ}
    assert meta["format_version"] == 3  # a gapfit without baselines refuses it
    dataclasses.replace(with_lj.model_, baseline=None).save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["format_version"] == 2


def test_baseline_errors_say_what_to_do(train) -> None:
    with pytest.raises(GapfitError, match="name the baseline calculator"):
        GAP(soap=SOAP, baseline_kwargs={"sigma": 2.0}).fit(train)
    with pytest.raises(GapfitError, match="give it as 'module:Class'"):
        GAP(soap=SOAP, baseline=LennardJones()).fit(train)
    with pytest.raises(
        GapfitError, match="--baseline 'nosuchmodule:Calc': cannot import"
    ):
        GAP(soap=SOAP, baseline="nosuchmodule:Calc").fit(train)
    with pytest.raises(GapfitError, match="--baseline-kwargs .* is not JSON"):
        GAP(soap=SOAP, baseline="lj", baseline_kwargs="{sigma: 2}").fit(train)


class NoStressEMT(EMT):
    """EMT that offers no stress (as some DFT calculators)."""

    implemented_properties = ["energy", "energies", "forces", "free_energy"]


def test_a_baseline_without_stress_serves_energies_and_forces(train) -> None:
    """Without virial labels it fits; predictions then have no virial or stress
    (never a GP-only one); with virial labels the fit says what to do."""
    no_stress = "test_baseline:NoStressEMT"
    keys = LabelKeys(virial="none", stress="none")
    gap = GAP(soap=SOAP, baseline=no_stress, keys=keys).fit(train)
    (new,) = cu_cells(1, seed=94)
    (got,) = gap.model_.predict([new], std=True)
    assert "virial" not in got and "stress" not in got and "stress_std" not in got
    np.testing.assert_allclose(got["forces"], new.get_forces(), atol=1e-9)
    new.calc = GAPCalculator(gap.model_)
    with pytest.raises(PropertyNotImplementedError):
        new.get_stress()
    with pytest.raises(GapfitError, match="computes no stress; drop the virials"):
        GAP(soap=SOAP, baseline=no_stress).fit(train)


def test_gap_fit_core_potential_becomes_a_quippy_baseline(tmp_path: Path) -> None:
    """gap_fit's core_ip_args / core_param_file map onto quippy's ASE calculator
    (quippy-ase is not installed here: the mapping is checked, not run)."""
    command = parse_gap_fit_command(
        "at_file=train.xyz gap={soap cutoff=4.0} core_param_file=glue.xml "
        "core_ip_args={IP Glue}"
    )
    assert command.gap_kwargs["baseline"] == QUIP_POTENTIAL
    assert command.gap_kwargs["baseline_kwargs"] == {
        "args_str": "IP Glue",
        "param_filename": str(Path("glue.xml").absolute()),
    }
    assert any("core_ip_args" in note for note in command.ignored)
    with pytest.raises(GapfitError, match="without core_ip_args"):
        parse_gap_fit_command(
            "at_file=t.xyz gap={soap cutoff=4.0} core_param_file=a.xml"
        )


def test_cli_fit_with_a_baseline(train, tmp_path: Path) -> None:
    data, model = tmp_path / "train.xyz", tmp_path / "model.npz"
    ase.io.write(data, train)
    runner = CliRunner()
    args = ["fit", "--at-file", data, "--gp-file", model, "--soap", SOAP, "--quiet"]
    result = runner.invoke(
        main, [*map(str, args), "--baseline", "lj", "--baseline-kwargs", json.dumps(LJ)]
    )
    assert result.exit_code == 0, result.output
    assert Model.load(model).baseline.kwargs == LJ
    info = runner.invoke(main, ["info", "--gp-file", str(model)])
    assert "baseline: lj" in info.output
    dry = runner.invoke(main, [*map(str, args), "--baseline", "emt", "--dry-run"])
    assert "emt on every config: not in the time above" in dry.output, dry.output
    both = runner.invoke(
        main,
        [
            "fit",
            f"at_file={data}",
            "gap={soap cutoff=4.0}",
            "core_ip_args={IP Glue}",
            "--baseline",
            "lj",
        ],
    )
    assert both.exit_code == 2 and "both set the baseline" in both.output


def test_active_learning_keeps_the_baseline(tmp_path: Path) -> None:
    """A pool run with a baseline: labels are the labeller's totals, the run's model
    file names the baseline, and its cheap updates equal a refit on the labels."""
    settings = GAP(soap=SOAP, e0_method="average", baseline="lj", baseline_kwargs=LJ)
    pool = cu_cells(6, seed=41, labelled=False)
    learner = learn_pool(
        tmp_path / "run", "emt", pool, settings, n_seed=2, budget=5, progress=False
    )
    saved = Model.load(tmp_path / "run" / "model.npz")
    assert saved.baseline == Baseline("lj", LJ)
    for atoms in learner.labelled:
        ref = emt_labelled(atoms).get_forces()  # EMT's, not less Lennard-Jones
        np.testing.assert_allclose(atoms.get_forces(), ref, rtol=0, atol=1e-7)
    full = refit(learner.model, learner.labelled)
    for a, b in zip(full.predict(pool), learner.model.predict(pool), strict=True):
        assert np.abs(a["forces"] - b["forces"]).max() < 1e-8


def test_zbl_core_example() -> None:
    """examples/zbl_core.py: the same training errors with and without the core,
    and, below the data's closest approach, a repulsion that keeps growing with ZBL
    where the plain GAP's weakens."""
    path = Path(__file__).parents[1] / "examples" / "zbl_core.py"
    spec = importlib.util.spec_from_file_location("zbl_core", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    errors, rows = example.main()
    assert errors["ZBL + GAP"] == pytest.approx(errors["GAP"], rel=1e-9)
    push = {name: [row[name][1] for row in rows] for name in ("GAP", "ZBL + GAP")}
    assert all(f > 0 for f in push["ZBL + GAP"])
    assert np.all(np.diff(push["ZBL + GAP"]) > 0)  # rows: decreasing distance
    assert push["GAP"][-1] < push["GAP"][3]  # 1.0 Å against 1.6 Å
