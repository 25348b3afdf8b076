"""``gapfit tune``: descriptor settings chosen by cross-validation and evidence
(gapfit.tune)."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner
from emt_cells import cu_cells

from gapfit import GAP, Model
from gapfit.cli import main
from gapfit.crossval import cross_validated
from gapfit.errors import GapfitError
from gapfit.report import error_table
from gapfit.tune import _with, combinations, grid_search, parse_grid

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=24"


@pytest.fixture(scope="module")
def train() -> list:
    return cu_cells(8, seed=51)


@pytest.fixture(scope="module")
def searched(train):
    gap = GAP(soap=SOAP, e0_method="average")
    return grid_search(gap, train, ["atom_sigma=0.4,0.6", "zeta=2,4"], k=3)


def test_every_point_is_scored_and_the_best_comes_first(searched, train) -> None:
    rows = searched.rows
    assert sorted(
        (r["settings"]["atom_sigma"], r["settings"]["zeta"]) for r in rows
    ) == [
        ("0.4", "2"),
        ("0.4", "4"),
        ("0.6", "2"),
        ("0.6", "4"),
    ]
    forces = [r["cv_forces"] for r in rows]
    assert forces == sorted(forces) and len(set(forces)) == 4
    # the best is a fit of its own settings, its CV score reproducible from it
    best = searched.best
    spec = best.model_.term("soap").spec
    settings = rows[0]["settings"]
    assert spec.atom_sigma == float(settings["atom_sigma"])
    assert best.model_.term("soap").kernel.zeta == int(settings["zeta"])
    assert "hyperparameters" in best.model_.info  # delta and sigmas by evidence
    held, preds = cross_validated(best.model_, train, 3, 0, std=False)
    assert error_table(held, preds)["all"]["forces"]["rmse"] == pytest.approx(
        forces[0], rel=1e-12
    )


def test_select_by_evidence_orders_by_it(train) -> None:
    gap = GAP(soap=SOAP, e0_method="average")
    result = grid_search(gap, train, {"atom_sigma": [0.4, 0.6]}, k=3, select="evidence")
    evidence = [r["log_evidence"] for r in result.rows]
    assert evidence == sorted(evidence, reverse=True)


def test_grid_errors_say_what_to_do() -> None:
    with pytest.raises(GapfitError, match="Did you mean 'atom_sigma'"):
        parse_grid(["atom_sigmaa=0.4,0.5"])
    with pytest.raises(GapfitError, match="write key=value,value"):
        parse_grid(["cutoff"])
    with pytest.raises(GapfitError, match="no values"):
        parse_grid(["cutoff="])
    with pytest.raises(GapfitError, match="model has no 2-body term"):
        grid_search(GAP(soap=SOAP), [], ["distance_2b.theta_uniform=0.5,1"])
    with pytest.raises(GapfitError, match="not a valid number"):
        grid_search(GAP(soap=SOAP), [], ["cutoff=4.0,four"])
    assert combinations({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_a_cutoff_grid_moves_poly_r0_left_at_its_default() -> None:
    for given, want in (("", [4.5, 5.5]), (" poly_r0=3.0", [3.0, 3.0])):
        gap = GAP(soap=SOAP + " weighting=poly" + given)
        got = [
            _with(gap, {"cutoff": c})._term_settings()["soap"][1]["poly_r0"]
            for c in ("4.5", "5.5")
        ]
        assert got == want


def test_cli_tune(train, tmp_path: Path) -> None:
    data, best, table = (
        tmp_path / "train.xyz",
        tmp_path / "best.npz",
        tmp_path / "t.json",
    )
    ase.io.write(data, train)
    args = ["tune", "--at-file", data, "--gp-file", best, "--soap", SOAP]
    args += ["--e0-method", "average", "--grid", "atom_sigma=0.4,0.6", "--cv", "3"]
    args += ["--test", data]  # the training data as a stand-in test set
    args += ["--default-sigma", "0.001", "0.05", "0.05"]  # gap_fit's spelling
    result = CliRunner().invoke(
        main, [*map(str, args), "--json", str(table), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "best by cv_forces" in result.output
    rows = json.loads(table.read_text())
    model = Model.load(best)
    assert model.term("soap").spec.atom_sigma == float(
        rows[0]["settings"]["atom_sigma"]
    )
    assert np.isfinite([r["log_evidence"] for r in rows]).all()
    assert all(r["test_forces"] > 0 for r in rows) and "test F" in result.output
