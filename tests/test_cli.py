"""The command line: fit -> predict / eval / info; clean failures (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner, Result

from gapfit.cli import main

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=4 l_max=3 n_sparse=40"
N_TEST = 2


def cu_cell(rng: np.random.Generator) -> Atoms:
    """A strained, rattled 2x2x2 cubic fcc Cu cell (32 atoms)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    eps = rng.normal(0.0, 0.02, (3, 3))
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
    )
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    return atoms


def emt_labelled(atoms: Atoms, config_type: str) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    atoms.info["config_type"] = config_type
    return atoms


def invoke(*args: str) -> Result:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def fails_cleanly(result: Result, *words: str) -> None:
    """Exit status 2, one ``Error:`` message holding ``words``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def lookup(atoms: Atoms, key: str):
    """A value as written by ``gapfit predict`` (ase.io moves energy, forces, stress
    and energies into a calculator on reading)."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for table in (atoms.info, atoms.arrays, results):
        if key in table:
            return np.asarray(table[key], dtype=float)
    raise KeyError(key)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    train = [emt_labelled(cu_cell(rng), "bulk") for _ in range(10)]
    train.append(
        emt_labelled(
            Atoms("Cu", positions=[[10.0, 10.0, 10.0]], cell=[20.0] * 3, pbc=True),
            "isolated_atom",
        )
    )
    ase.io.write(root / "train.xyz", train)
    ase.io.write(
        root / "test.xyz", [emt_labelled(cu_cell(rng), "test") for _ in range(N_TEST)]
    )
    gold = cu_cell(rng)
    gold[3].symbol = "Au"
    ase.io.write(root / "au.xyz", gold)
    return root


@pytest.fixture(scope="module")
def fitted(data: Path) -> tuple[Path, Result]:
    model = data / "model.npz"
    result = invoke(
        "fit",
        "--at-file",
        data / "train.xyz",
        "--gp-file",
        model,
        "--soap",
        SOAP,
        "--default-sigma",
        "0.001",
        "0.05",
        "0.05",
        "0.0",
        "--e0-method",
        "isolated",
        "--rnd-seed",
        "1",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return model, result


def test_fit_writes_model_and_summary(fitted: tuple[Path, Result]) -> None:
    model, result = fitted
    assert model.is_file()
    out = result.stdout
    assert "11 configs, 321 atoms, 11 energies, 963 force components, 11 virials" in out
    assert "sparse points: soap Cu 40" in out
    for stage in ("descriptors", "sparsify", "solve"):
        assert stage in out.split("timings:")[1]
    assert "training errors" in out and "\nall " in out
    assert f"model written to {model}" in out
    assert not list(model.parent.glob(".*.tmp"))  # no leftover temp files


def test_predict_writes_means_and_stds(fitted, data: Path) -> None:
    model, _ = fitted
    out = data / "pred.xyz"
    result = invoke("predict", "--gp-file", model, data / "test.xyz", "--output", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"predicted {N_TEST} configs, {32 * N_TEST} atoms" in result.stdout
    assert "atoms/s" in result.stdout
    images = ase.io.read(out, ":")
    assert len(images) == N_TEST
    shapes = {
        "energy": (),
        "virial": (3, 3),
        "stress": (6,),
        "forces": (32, 3),
        "energies": (32,),
    }
    for atoms in images:
        assert atoms.info["config_type"] == "test"
        for key, shape in shapes.items():
            assert lookup(atoms, key).shape == shape, key
            std = lookup(atoms, f"{key}_std")
            assert std.shape == shape, key
            assert (std > 0).all(), key
        # energies are local energies that add up to the total
        assert np.isclose(lookup(atoms, "energies").sum(), lookup(atoms, "energy"))


def test_eval_prints_table_and_json(fitted, data: Path) -> None:
    model, _ = fitted
    js = data / "errors.json"
    result = invoke("eval", "--gp-file", model, data / "test.xyz", "--json", js)
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert any(line.startswith("all ") for line in lines)
    assert any(line.startswith("test ") for line in lines)
    table = json.loads(js.read_text())
    assert table["all"]["n_configs"] == N_TEST
    assert table["all"]["forces"]["n"] == 3 * 32 * N_TEST
    assert table["all"]["energy"]["rmse"] >= 0


def test_predict_without_std(fitted, data: Path) -> None:
    model, _ = fitted
    out = data / "pred_mean.xyz"
    result = invoke(
        "predict", "--gp-file", model, data / "test.xyz", "-o", out, "--no-std"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    atoms = ase.io.read(out, 0)
    assert lookup(atoms, "forces").shape == (32, 3)
    with pytest.raises(KeyError):
        lookup(atoms, "forces_std")


def test_predict_energy_stds_only(fitted, data: Path) -> None:
    model, _ = fitted
    out = data / "pred_energy_std.xyz"
    result = invoke(
        "predict",
        "--gp-file",
        model,
        data / "test.xyz",
        "-o",
        out,
        "--std-of",
        "energy",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "std=energy" in result.stdout
    atoms = ase.io.read(out, 0)
    assert lookup(atoms, "energy_std") > 0
    assert (lookup(atoms, "energies_std") > 0).all()
    for key in ("forces_std", "virial_std", "stress_std"):
        with pytest.raises(KeyError):
            lookup(atoms, key)


def test_info_describes_model(fitted) -> None:
    model, _ = fitted
    result = invoke("info", "--gp-file", model)
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    assert "species: Cu" in out
    assert "sparse points: 40 (Cu 40)" in out
    assert "delta=1.0" in out and "zeta=4" in out
    assert "default_sigma: [0.001, 0.05, 0.05, 0.0]" in out
    assert "e0 (eV): Cu" in out
    assert "bulk 10, isolated_atom 1" in out and "sha256" in out
    assert "jax" in out and "\nall " in out


# ---- failures: exit status 2, a helpful message, no output file ---------------------
def test_missing_at_file(tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    result = invoke("fit", "--at-file", tmp_path / "nope.xyz", "--gp-file", model)
    fails_cleanly(result, "nope.xyz", "not found")
    assert not model.exists()


@pytest.mark.parametrize(
    "sigma",
    [
        ["0.001", "0.05", "0.05"],
        ["0.001 0.05 0.05 0.0"],
        ["{0.001", "0.05", "0.05", "0.0}"],
    ],
)
def test_default_sigma_forms_are_accepted(tmp_path: Path, sigma: list[str]) -> None:
    # the sigma parses, so the command gets as far as reading the (missing) data
    result = invoke(
        "fit",
        "--default-sigma",
        *sigma,
        "--at-file",
        tmp_path / "nope.xyz",
        "--gp-file",
        tmp_path / "m.npz",
    )
    fails_cleanly(result, "nope.xyz")


def test_misspelt_soap_key_suggests_the_right_one(data: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    result = invoke(
        "fit",
        "--at-file",
        data / "train.xyz",
        "--gp-file",
        model,
        "--soap",
        "cutoff=4.0 n_maxx=8",
    )
    fails_cleanly(result, "n_maxx", "n_max'?")
    assert not model.exists()


@pytest.mark.parametrize(
    "sigma,word",
    [
        (["0", "0.05", "0.05", "0"], "energy sigma"),
        (["0.001", "0.05"], "3 or 4 numbers"),
    ],
)
def test_bad_default_sigma(data: Path, tmp_path: Path, sigma, word: str) -> None:
    model = tmp_path / "model.npz"
    result = invoke(
        "fit",
        "--at-file",
        data / "train.xyz",
        "--gp-file",
        model,
        "--default-sigma",
        *sigma,
    )
    fails_cleanly(result, "--default-sigma", word)
    assert not model.exists()


def test_bad_e0(data: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    result = invoke(
        "fit",
        "--at-file",
        data / "train.xyz",
        "--gp-file",
        model,
        "--e0",
        "Cu:-0.1 Xq:0.2",
    )
    fails_cleanly(result, "Xq")
    assert not model.exists()


def test_predict_corrupt_model(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.npz"
    bad.write_bytes(np.random.default_rng(3).bytes(4096))
    out = tmp_path / "pred.xyz"
    result = invoke("predict", "--gp-file", bad, data / "test.xyz", "--output", out)
    fails_cleanly(result, "not a readable gapfit model")
    assert not out.exists()


def test_predict_foreign_npz(data: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "other.npz"
    np.savez(foreign, x=np.arange(5.0))
    out = tmp_path / "pred.xyz"
    result = invoke("predict", "--gp-file", foreign, data / "test.xyz", "--output", out)
    fails_cleanly(result, "not a gapfit model")
    assert not out.exists()


def test_predict_unknown_element(fitted, data: Path, tmp_path: Path) -> None:
    model, _ = fitted
    out = tmp_path / "pred.xyz"
    result = invoke("predict", "--gp-file", model, data / "au.xyz", "--output", out)
    fails_cleanly(result, "Au", "au.xyz")
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temp file either


def test_eval_needs_energies(fitted, tmp_path: Path) -> None:
    model, _ = fitted
    unlabelled = tmp_path / "unlabelled.xyz"
    ase.io.write(unlabelled, bulk("Cu", "fcc", a=3.61, cubic=True))
    result = invoke("eval", "--gp-file", model, unlabelled)
    fails_cleanly(result, "energy")
