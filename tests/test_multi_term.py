"""Several terms of one kind (gap_fit's ``gap={soap ... : soap ...}``): a sum of
independent GPs, each with its own descriptor settings and sparse points."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ase.io import read, write
from ase.neighborlist import neighbor_list
from checks import (
    assert_forces_match_fd,
    assert_stress_matches_strain_fd,
    assert_symmetries,
)
from click.testing import CliRunner
from emt_cells import clear_alloy_cell, cu_au_frames, predictor

from gapfit.cli import main
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import parse_gap_fit_command
from gapfit.model import Model
from gapfit.neighbours import make_batch, pair_tables
from gapfit.selection import unit_soap
from gapfit.tune import _with, grid_search, parse_grid

SOAP_A = (
    "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=20 delta=0.5 "
    "sparse_method=cur_points"
)
SOAP_B = (
    "cutoff=3.3 cutoff_transition_width=0.3 n_max=2 l_max=3 n_sparse=12 delta=0.2 "
    "sparse_method=cur_points"
)
PAIR_A = (
    "cutoff=4.8 cutoff_transition_width=0.8 n_sparse=8 delta=1.0 sparse_method=uniform"
)
PAIR_B = (
    "cutoff=3.2 cutoff_transition_width=0.4 n_sparse=6 delta=0.3 sparse_method=uniform"
)
# where a cosine cutoff's transition starts or ends
KINKS = (2.8, 3.0, 3.2, 3.3, 4.0, 4.8)
SETTINGS = {
    "soap": [SOAP_A, SOAP_B],
    "distance_2b": [PAIR_A, PAIR_B],
    "default_sigma": (0.002, 0.05, 0.05),
    "e0_method": "average",
}
GAP_STRING = (
    f"gap={{distance_2b {PAIR_A} : distance_2b {PAIR_B} : soap {SOAP_A} : "
    f"soap {SOAP_B}}}"
)


@pytest.fixture(scope="module")
def frames():
    return cu_au_frames(31, 5, 3)


@pytest.fixture(scope="module")
def model(frames):
    return GAP(**SETTINGS).fit(frames).model_


@pytest.fixture(scope="module")
def test_cell():
    return clear_alloy_cell(77, KINKS)


def test_terms_are_named_and_each_has_its_own_settings(model):
    names = [(t.name, t.kind, t.spec.cutoff) for t in model.terms]
    assert names == [
        ("distance_2b", "distance_2b", 4.8),
        ("distance_2b_2", "distance_2b", 3.2),
        ("soap", "soap", 4.0),
        ("soap_2", "soap", 3.3),
    ]
    assert model.term("soap_2").spec.l_max == 3
    assert model.term("soap_2").kernel.delta == 0.2
    # each SOAP term's sparse points are unit vectors of its own descriptor
    widths = [model.term(n).sparse_X.shape[1] for n in ("soap", "soap_2")]
    assert widths == [model.term(n).spec.n_features for n in ("soap", "soap_2")]
    assert widths[0] != widths[1]
    for name in ("soap", "soap_2"):
        X = model.term(name).sparse_X
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-12)
    # the short 2-body term's sparse distances lie inside its own cutoff
    assert model.term("distance_2b_2").sparse_r.max() < 3.2
    assert set(model.info["settings"]) >= {"soap", "soap_2", "distance_2b_2"}
    assert model.info["n_sparse"]["soap_2"] == {"Cu": 12, "Au": 12}


def test_forces_and_stress_are_derivatives(model, test_cell):
    f = assert_forces_match_fd(
        predictor(model), test_cell, h=3e-3, order=4, rtol=1e-6, indices=range(8)
    )
    s = assert_stress_matches_strain_fd(
        predictor(model), test_cell, h=1e-3, order=4, rtol=1e-6
    )
    print(f"\n2x2b + 2xSOAP: forces vs FD {f:.1e} eV/Å, stress vs FD {s:.1e} eV/Å^3")


def test_predictions_and_stds_are_invariant(model, test_cell):
    rng = np.random.default_rng(4)
    assert_symmetries(predictor(model, std=True), test_cell, rng, improper=False)


def test_each_term_over_its_own_pairs_predicts_as_over_every_pair(model, test_cell):
    """A term's per-atom tables hold its own pairs (inside its cutoff): the means and
    every std equal those from tables of every pair of the longest cutoff."""
    batch = make_batch([test_cell], model.species, model.neighbour_cutoff)
    own = model.tables(batch, model.table_widths(batch))
    every = (pair_tables(batch),) * len(model.terms)
    widths = [t.incoming.shape[1] for t in own]
    # distance_2b (4.8 Å) holds every pair; soap 4.0, soap_2 3.3, distance_2b_2 3.2 Å
    assert widths[0] == every[0].incoming.shape[1]
    assert widths[3] < widths[2] < widths[0] and widths[1] < widths[0]
    b = batch._asdict()
    for run in (model.mean_and_std, model.mean_and_energy_std):
        got, want = run(b, own), run(b, every)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_two_halves_of_one_kernel_are_that_kernel(frames, test_cell):
    """Two SOAP terms with the same settings and delta / sqrt(2) each are one SOAP
    term with delta: the sum of the two GPs has the one GP's covariance, and with
    the same sparse points the same DTC posterior (with half the jitter each: the
    sum's Nystrom term is then the one term's exactly)."""
    one = "cutoff=4.0 n_max=3 l_max=2 n_sparse=20 delta=0.5"
    half = f"cutoff=4.0 n_max=3 l_max=2 n_sparse=20 delta={float(0.5 / np.sqrt(2))!r}"
    kw = {"default_sigma": (0.002, 0.05, 0.05), "e0_method": "average"}
    single = GAP(soap=one, sparse_jitter=1e-8, **kw).fit(frames).model_
    double = GAP(soap=[half, half], sparse_jitter=5e-9, **kw).fit(frames).model_
    np.testing.assert_array_equal(
        double.term("soap").sparse_X, double.term("soap_2").sparse_X
    )
    p, q = (m.predict([test_cell], std=True)[0] for m in (single, double))
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(p[key], q[key], rtol=1e-6, atol=1e-6)
    for key in ("energy_std", "forces_std", "stress_std"):
        np.testing.assert_allclose(p[key], q[key], rtol=1e-4)
    # not the same as one term at delta / sqrt(2): the halves do add up
    lone = GAP(soap=half, **kw).fit(frames).model_.predict([test_cell], std=True)[0]
    assert (
        np.abs(lone["forces_std"] - q["forces_std"]).max()
        > 0.05 * np.abs(q["forces_std"]).max()
    )


def test_gap_fit_string_cli_and_file_round_trip_give_one_model(frames, model, tmp_path):
    cmd = parse_gap_fit_command(
        [
            "at_file=x.xyz",
            GAP_STRING,
            "default_sigma={0.002 0.05 0.05 0.0}",
            "e0_method=average",
        ]
    )
    assert [len(cmd.gap_kwargs[k]) for k in ("soap", "distance_2b")] == [2, 2]
    from_string = GAP(**cmd.gap_kwargs, chunk_atoms=1).fit(frames).model_
    a, b = (m.predict(frames[-2:]) for m in (model, from_string))
    for p, q in zip(a, b, strict=True):
        assert abs(p["energy"] - q["energy"]) < 1e-9
        assert np.abs(p["forces"] - q["forces"]).max() < 1e-9

    write(tmp_path / "train.xyz", frames)
    out = tmp_path / "cli.npz"
    args = ["fit", "--at-file", str(tmp_path / "train.xyz"), "--gp-file", str(out)]
    args += ["--soap", SOAP_A, "--soap", SOAP_B]
    args += ["--distance-2b", PAIR_A, "--distance-2b", PAIR_B]
    args += ["--default-sigma", "0.002", "0.05", "0.05", "--e0-method", "average"]
    result = CliRunner().invoke(main, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "soap_2" in result.output
    with np.load(out) as z:  # an older gapfit refuses it instead of misreading it
        meta = json.loads(str(z["meta"]))
        assert meta["format_version"] == 7  # 2-body terms: each pair's visits
        assert [t["kind"] for t in meta["terms"]] == [
            "distance_2b",
            "distance_2b",
            "soap",
            "soap",
        ]
    # the CLI read positions and labels rounded to the file's 8 decimals
    p, q = (m.predict(frames[-1:], std=True)[0] for m in (model, Model.load(out)))
    for key in ("energy", "forces", "stress", "energy_std", "forces_std"):
        scale = np.abs(p[key]).max()
        np.testing.assert_allclose(p[key], q[key], rtol=0, atol=1e-6 * scale)
    model.save(tmp_path / "same.npz")
    back = Model.load(tmp_path / "same.npz")
    assert [t.name for t in back.terms] == [t.name for t in model.terms]
    p, q = (m.predict(frames[-1:], std=True)[0] for m in (model, back))
    for key in ("energy", "forces", "stress", "energy_std", "forces_std"):
        np.testing.assert_allclose(p[key], q[key], rtol=1e-12, atol=1e-15)


def test_dry_run_counts_every_term(frames, model):
    plan = GAP(**SETTINGS).plan(frames)
    assert plan.n_sparse == {
        t.name: t.n_sparse for t in model.terms
    }  # 2-body: exact; SOAP: min(n_sparse, atoms) per species, here exact
    assert plan.M == sum(t.n_sparse for t in model.terms)
    assert plan.n_features == sum(
        t.spec.n_features for t in model.terms if t.kind == "soap"
    )
    assert "sparse points soap_2" in plan.table()


def test_hyperparameters_per_term_and_the_fit_within_its_sigmas(frames):
    """Each term's delta is chosen by the evidence and stored under its name; the
    fit then reproduces its data within the sigmas (these small descriptors at the
    hand-set deltas do not: force RMSE 69 meV/Å, one SOAP term 220)."""
    gap = GAP(**SETTINGS, optimise_hyperparameters=True)
    model = gap.fit(frames).model_
    settings = model.info["settings"]
    for term in model.terms:
        assert settings[term.name]["delta"] == term.kernel.delta
    assert model.term("soap").kernel.delta != model.term("soap_2").kernel.delta
    errors = model.info["training_errors"]["all"]
    assert errors["forces"]["rmse"] < 50.0  # meV/Å, sigma 50
    assert errors["energy"]["rmse"] < 2.0  # meV/atom, sigma 2


def test_tune_grid_keys_name_the_term(frames):
    grid = parse_grid(["soap_2.cutoff=3.0,3.5", "distance_2b_2.delta=0.1,1.0"])
    gap = GAP(**SETTINGS)
    point = _with(gap, {"soap_2.cutoff": "3.5", "distance_2b_2.delta": "0.1"})
    named = point._term_settings()
    assert named["soap_2"][1]["cutoff"] == 3.5 and named["soap"][1]["cutoff"] == 4.0
    assert named["distance_2b_2"][1]["delta"] == 0.1
    assert named["distance_2b"][1]["delta"] == 1.0
    with pytest.raises(GapfitError, match=r"no SOAP term soap_3 \(it has soap, soap_2"):
        _with(gap, {"soap_3.cutoff": "3.0"})
    with pytest.raises(GapfitError, match="not a term name"):
        parse_grid(["sopa_2.cutoff=3.0"])
    assert grid["soap_2.cutoff"] == ["3.0", "3.5"]
    result = grid_search(gap, frames, {"soap_2.cutoff": ["3.0"]}, 2)  # one point
    assert [r["settings"] for r in result.rows] == [{"soap_2.cutoff": "3.0"}]
    assert result.rows[0]["cv_forces"] > 0
    assert result.best.model_.term("soap_2").spec.cutoff == 3.0
    assert result.best.model_.term("soap").spec.cutoff == 4.0


def test_active_learning_takes_several_terms_of_a_kind(frames, tmp_path):
    """``gapfit learn --soap A --soap B --distance-2b C --distance-2b D``: each term
    holds its own sparse points (a SOAP term's chosen from its own descriptors), a
    resumed run pads each SOAP term again and goes on; two 3-body terms are refused,
    as by ``gapfit fit``."""
    write(tmp_path / "pool.xyz", frames)
    run = tmp_path / "cli"
    args = ["learn", "--pool", tmp_path / "pool.xyz", "--labeller", "emt"]
    args += ["--workdir", run, "--soap", SOAP_A, "--soap", SOAP_B, "--budget", "4"]
    args += ["--distance-2b", PAIR_A, "--distance-2b", PAIR_B]
    args += ["--strategy", "random", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    again = ["learn", "--workdir", str(run), "--resume", "--budget", "6", "--quiet"]
    result = CliRunner().invoke(main, again)
    assert result.exit_code == 0, result.output
    model = Model.load(run / "model.npz")
    a, b = model.term("soap"), model.term("soap_2")
    assert (a.spec.cutoff, b.spec.cutoff) == (4.0, 3.3)
    assert 0 < a.n_sparse <= 40 and 0 < b.n_sparse <= 24  # n_sparse per element
    pairs = [model.term(n) for n in ("distance_2b", "distance_2b_2")]
    assert [p.spec.cutoff for p in pairs] == [4.8, 3.2]
    # each term's points are environments of the labelled frames under its settings
    labelled = read(run / "labelled.xyz", ":")
    assert len(labelled) == 6
    gap = GAP(soap=[SOAP_A, SOAP_B], e0_method="average")
    env = unit_soap(gap, model.species, labelled)
    for name in ("soap", "soap_2"):
        cosines = env.X_hat[name] @ model.term(name).sparse_X.T
        assert cosines.max(axis=0) == pytest.approx(1.0, abs=1e-12)
    # the 2-body points span every labelled distance within each term's cutoff
    d = np.concatenate([neighbor_list("d", f, 4.8) for f in labelled])
    for term in pairs:
        inside = d[d < term.spec.cutoff]
        assert term.sparse_r.min() == pytest.approx(inside.min(), abs=1e-9)
        assert term.sparse_r.max() == pytest.approx(inside.max(), abs=1e-9)

    with pytest.raises(GapfitError, match="one 3-body term"):
        GAP(angle_3b=["cutoff=3.0", "cutoff=3.5"]).fit(frames)
    # an option given twice is an error where one is taken, never the last one
    args = ["fit", "--at-file", tmp_path / "pool.xyz", "--gp-file", tmp_path / "m.npz"]
    args += ["--angle-3b", "cutoff=3.0", "--angle-3b", "cutoff=3.5"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and "one 3-body term" in result.output
