"""Model file round trip and validation; gap_fit-style SOAP strings."""

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from threadpoolctl import threadpool_info

import gapfit.neighbours
from gapfit import GapfitError
from gapfit.fit import GAP, term_specs
from gapfit.gapstring import parse_soap
from gapfit.model import FORMAT_VERSION, PAIR_VISITS_FORMAT, Model, _summed_mean
from gapfit.variance import soap_rows_and_priors


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(6):
        at = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True).repeat(2)
        at.positions += rng.normal(0, 0.07, at.positions.shape)
        at.calc = EMT()
        at.get_potential_energy()
        at.get_forces()
        at.get_stress()
        frames.append(at)
    gap = GAP(soap="cutoff=3.8 n_max=3 l_max=2 n_sparse=20", e0_method="average").fit(
        frames
    )
    path = tmp_path_factory.mktemp("model") / "m.npz"
    gap.save(path)
    return gap, frames, path


def test_round_trip_gives_identical_predictions(fitted):
    gap, frames, path = fitted
    loaded = Model.load(path)
    a = gap.model_.predict(frames[:2], std=True)
    b = loaded.predict(frames[:2], std=True)
    for ra, rb in zip(a, b, strict=True):
        for key in (
            "energy",
            "forces",
            "stress",
            "energy_std",
            "forces_std",
            "stress_std",
        ):
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)
    assert loaded.info["data"]["n_configs"] == 6
    assert len(loaded.info["data"]["sha256"]) == 64


def _rewrite(path, out, mutate):
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    mutate(members)
    np.savez(out, **members)


def test_newer_format_version_is_rejected(fitted, tmp_path):
    _, _, path = fitted

    def bump(m):
        meta = json.loads(str(m["meta"]))
        meta["format_version"] = FORMAT_VERSION + 1
        m["meta"] = np.array(json.dumps(meta))

    _rewrite(path, tmp_path / "new.npz", bump)
    with pytest.raises(GapfitError, match="newer than this gapfit"):
        Model.load(tmp_path / "new.npz")


def test_format_1_file_reads_as_the_same_model(fitted, tmp_path):
    """Format 1 stored the unwhitened factor ``R_1 = R L_mm^T``; it loads as R."""
    gap, frames, path = fitted

    def older(m):
        meta = json.loads(str(m["meta"]))
        meta["format_version"] = 1
        m["meta"] = np.array(json.dumps(meta))
        m["R"] = m["R"] @ m["L_mm"].T

    _rewrite(path, tmp_path / "v1.npz", older)
    want = gap.model_.predict(frames[:2], std=True)
    got = Model.load(tmp_path / "v1.npz").predict(frames[:2], std=True)
    for a, b in zip(want, got, strict=True):
        for key in ("energy", "forces", "energy_std", "forces_std", "stress_std"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-7, err_msg=key)


def test_2_body_terms_of_older_formats_keep_counting_each_pair_once(tmp_path):
    """Before format 7 a 2-body term counted each pair once (gap_fit's distance_2b
    counts i-j and j-i, as gapfit does since): the shipped cu_emt model (format 2)
    loads with ``visits`` 1, and saved again (format 7) predicts the same."""
    shipped = Path(__file__).resolve().parents[1] / "potentials/cu_emt/model.npz"
    old = Model.load(shipped)
    assert old.term("distance_2b").spec.visits == 1
    old.save(tmp_path / "again.npz")
    with np.load(tmp_path / "again.npz") as z:
        meta = json.loads(str(z["meta"]))
    assert meta["format_version"] == PAIR_VISITS_FORMAT == 7
    assert meta["terms"][0]["descriptor"]["visits"] == 1
    at = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    at.rattle(0.05, seed=3)
    a, b = (
        m.predict([at], std=True)[0] for m in (old, Model.load(tmp_path / "again.npz"))
    )
    for key in ("energy", "forces", "energy_std", "forces_std"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    fresh = GAP(distance_2b="cutoff=3.8 n_sparse=4")  # a new fit counts both orders
    assert term_specs(fresh._term_settings(), (29,))["distance_2b"][0].visits == 2


def test_corrupt_and_foreign_files_are_rejected(fitted, tmp_path):
    _, _, path = fitted
    (tmp_path / "junk.npz").write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(GapfitError, match="not a readable gapfit model"):
        Model.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))
    with pytest.raises(GapfitError, match="no 'meta'"):
        Model.load(tmp_path / "foreign.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(GapfitError, match="truncated"):
        Model.load(tmp_path / "cut.npz")
    _rewrite(path, tmp_path / "nan.npz", lambda m: m["weights"].__setitem__(0, np.nan))
    with pytest.raises(GapfitError, match="weights"):
        Model.load(tmp_path / "nan.npz")
    _rewrite(path, tmp_path / "shape.npz", lambda m: m.__setitem__("R", m["R"][:-1]))
    with pytest.raises(GapfitError, match="R has shape"):
        Model.load(tmp_path / "shape.npz")

    def terms(change):
        def mutate(m):
            meta = json.loads(str(m["meta"]))
            change(meta["terms"])
            m["meta"] = np.array(json.dumps(meta))

        return mutate

    def twice(t):
        t.append(dict(t[0]))

    for name, change in (
        ("kind", terms(lambda t: t[0].__setitem__("kind", "soapy"))),
        ("twice", terms(twice)),
    ):
        _rewrite(path, tmp_path / f"{name}.npz", change)
        with pytest.raises(GapfitError, match="unknown or given twice"):
            Model.load(tmp_path / f"{name}.npz")
    assert zipfile.is_zipfile(path)


def test_save_is_atomic_and_leaves_no_temp_files(fitted, tmp_path):
    gap, _, _ = fitted
    target = tmp_path / "model.npz"
    gap.save(target)
    gap.save(target)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_soap_string_parsing():
    s = parse_soap(
        "soap cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 "
        "atom_sigma=0.5 zeta=4 delta=1.0 n_sparse=500 sparse_method=cur_points"
    )
    assert (s["cutoff"], s["n_max"], s["zeta"], s["n_sparse"]) == (5.0, 8, 4, 500)
    assert s["poly_r0"] == 5.0
    with pytest.raises(GapfitError, match="Did you mean 'n_max'"):
        parse_soap("n_maxx=8")
    with pytest.raises(GapfitError, match="l_max"):
        parse_soap("l_max=6.5")
    with pytest.raises(GapfitError, match="dot_product"):
        parse_soap("covariance_type=ard_se")
    with pytest.raises(GapfitError, match="no '='"):
        parse_soap("cutoff 5")


def test_std_prediction_leaves_the_blas_threads_as_they_were(fitted):
    # predict limits BLAS to one thread during its LAPACK solves, and only then
    gap, frames, _ = fitted

    def threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = threads()
    gap.model_.predict(frames[:1], std=True)
    assert threads() == before


def test_batched_prediction_equals_one_by_one(fitted):
    """Padding batches to one shape (one compilation) changes nothing but rounding
    (on an H100, products of other shapes sum in another order: energies 1.5e-11
    relative)."""
    gap, frames, _ = fitted
    together = gap.model_.predict(frames, batch_atoms=70)  # groups of 2-3 configs
    for frame, ref in zip(frames, together, strict=True):
        (alone,) = gap.model_.predict([frame])
        np.testing.assert_allclose(alone["energy"], ref["energy"], rtol=1e-10)
        np.testing.assert_allclose(alone["forces"], ref["forces"], atol=1e-11)
        np.testing.assert_allclose(alone["stress"], ref["stress"], atol=1e-13)


def test_streamed_batches_predict_what_held_ones_do(fitted, monkeypatch):
    """Beyond ``HELD_ATOMS`` atoms predict builds each batch's neighbour lists when
    it gets to it (after a pass for the common shape): the same padded batches, so
    the same numbers to the bit, with and without stds."""
    gap, frames, _ = fitted
    small = frames[4][:-5]  # 27 atoms: groups of unequal padded size
    structures = [*frames[:3], small]
    held = gap.model_.predict(structures, batch_atoms=70)
    held_std = gap.model_.predict(structures[:2], std=True)
    held_shape = gap.model_.padded_shape(structures, batch_atoms=70)
    monkeypatch.setattr(gapfit.neighbours, "HELD_ATOMS", 0)
    streamed = gap.model_.predict(structures, batch_atoms=70)
    streamed_std = gap.model_.predict(structures[:2], std=True)
    assert gap.model_.padded_shape(structures, batch_atoms=70) == held_shape
    for a, b in zip(held + held_std, streamed + streamed_std, strict=True):
        assert a.keys() == b.keys()
        for q in a:
            assert np.array_equal(a[q], b[q]), q


def test_a_new_delta_reuses_the_compiled_programs(fitted):
    """delta is traced, not static: a model with another delta (a re-optimisation)
    runs the programs already compiled, with its kernel values scaled by delta^2."""
    gap, frames, _ = fitted
    model = gap.model_
    soap = model.term("soap")
    scaled = dataclasses.replace(
        model,
        terms=(
            dataclasses.replace(
                soap,
                kernel=dataclasses.replace(soap.kernel, delta=2.0 * soap.kernel.delta),
            ),
        ),
    )
    base = model.predict(frames[:1], std=True)[0]
    sizes = (_summed_mean._cache_size(), soap_rows_and_priors._cache_size())
    other = scaled.predict(frames[:1], std=True)[0]
    assert (_summed_mean._cache_size(), soap_rows_and_priors._cache_size()) == sizes
    e0 = sum(model.e0[int(z)] for z in frames[0].numbers)
    assert other["energy"] - e0 == pytest.approx(4.0 * (base["energy"] - e0), rel=1e-10)
    np.testing.assert_allclose(other["forces"], 4.0 * base["forces"], atol=1e-10)


def test_padded_shape_serves_every_part_with_one_compilation(fitted):
    """Parts of a set predicted with the set's ``padded_shape`` (as the folds of a
    cross-validation) share one compiled std program, and predict what each part
    alone does."""
    gap, frames, _ = fitted
    model = gap.model_
    small = frames[4][:-5]  # 27 atoms: a smaller padded batch than the 32-atom cells
    dense = frames[5].copy()  # compressed: more pairs and a wider pair table
    dense.set_cell(0.85 * dense.cell, scale_atoms=True)
    parts = [[frames[3]], [small], [dense]]
    own = [model.padded_shape(part, std=True) for part in parts]
    assert own[0][0] != own[1][0] and own[0][1] != own[2][1]  # alone: three programs
    shape, width = model.padded_shape([a for part in parts for a in part], std=True)
    before = soap_rows_and_priors._cache_size()
    shared = [
        model.predict(part, std=True, shape=shape, width=width)[0] for part in parts
    ]
    assert soap_rows_and_priors._cache_size() <= before + 1
    alone = [model.predict(part, std=True)[0] for part in parts]
    for a, b in zip(alone, shared, strict=True):
        for q in ("energy", "forces", "energy_std", "forces_std", "virial_std"):
            np.testing.assert_allclose(b[q], a[q], rtol=1e-9, atol=1e-12)


def test_training_errors_come_from_the_rows_and_equal_predict(fitted):
    """A fit's training errors are its frames' kernel rows times the weights (no
    prediction program compiled): equal to ``Model.predict``'s, per frame, for a
    2-body + SOAP model fitted in several chunks."""
    from gapfit.assembly import fitted_predictions, padded_batches
    from gapfit.data import frames_from_atoms
    from gapfit.model import chunk_indices
    from gapfit.report import error_table

    _, atoms, _ = fitted
    gap = GAP(
        soap="cutoff=3.8 n_max=3 l_max=2 n_sparse=20",
        distance_2b="cutoff=3.8 n_sparse=8",
        e0_method="average",
        chunk_atoms=64,
    ).fit(atoms)
    model = gap.model_
    frames = frames_from_atoms(atoms)
    chunks = chunk_indices([len(f.numbers) for f in frames], 64)
    assert len(chunks) == 3
    batches = padded_batches(frames, chunks, model.species, model.neighbour_cutoff)
    got = fitted_predictions(model, frames, chunks, batches)
    want = model.predict(frames)
    for g, w in zip(got, want, strict=True):
        assert g["energy"] == pytest.approx(w["energy"], rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(g["forces"], w["forces"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(g["virial"], w["virial"], rtol=0, atol=1e-9)
    table = error_table(frames, want)["all"]
    for q in ("energy", "forces", "virial"):
        assert gap.training_errors_["all"][q]["rmse"] == pytest.approx(
            table[q]["rmse"], rel=1e-6
        )


def test_means_do_not_depend_on_the_std_mode(fitted):
    """Asking for stds does not change the means: with a stiff 2-body term
    (delta 100: weights up to 1.5e3, summed to a few eV) the means of ``std=True``
    and ``std="energy"`` equal those without stds to 3e-9 (per-pair sums; the
    energy rows times the weights, as before, were 2.5e-8 eV off in energy and
    2.2e-7 eV in virial)."""
    _, atoms, _ = fitted
    model = (
        GAP(
            soap="cutoff=3.8 n_max=3 l_max=2 n_sparse=20",
            distance_2b="cutoff=3.8 delta=100 n_sparse=20",
            e0_method="average",
        )
        .fit(atoms[:3])
        .model_
    )
    plain = model.predict(atoms[3:])
    for std in (True, "energy"):
        for a, b in zip(plain, model.predict(atoms[3:], std=std), strict=True):
            for q in ("energy", "forces", "virial"):
                np.testing.assert_allclose(b[q], a[q], rtol=0, atol=1e-8)


def test_energy_stds_alone_equal_those_of_all_stds(fitted):
    """``std="energy"`` (local and total energy stds only, without the pair
    derivatives) gives the same energy stds as ``std=True`` and the same means, for
    a 2-body + SOAP model (to the rounding of ``delta^2`` less what the data
    explain: 2e-8 relative seen); an unknown mode is an error naming the valid ones."""
    _, atoms, _ = fitted
    model = (
        GAP(
            soap="cutoff=3.8 n_max=3 l_max=2 n_sparse=20",
            distance_2b="cutoff=3.8 n_sparse=8",
            e0_method="average",
        )
        .fit(atoms[:3])
        .model_
    )
    every = model.predict(atoms[3:], std=True)
    energy = model.predict(atoms[3:], std="energy")
    for a, e in zip(every, energy, strict=True):
        stds = {k for k in e if k.endswith("_std")}
        assert stds == {"energy_std", "energies_std"}
        assert e["energy_std"] > 0 and (e["energies_std"] > 0).all()
        np.testing.assert_allclose(e["energy_std"], a["energy_std"], rtol=1e-6)
        np.testing.assert_allclose(e["energies_std"], a["energies_std"], rtol=1e-6)
        np.testing.assert_allclose(e["forces"], a["forces"], atol=1e-10)
        np.testing.assert_allclose(e["energy"], a["energy"], rtol=1e-10)
    with pytest.raises(GapfitError, match="'energy'"):
        model.predict(atoms[:1], std="forces")
