"""Terms of one central species or species pair (gap_fit's ``add_species=F`` with
``Z=``, ``n_species``, ``species_Z`` on SOAP and ``Z1``/``Z2`` on distance_2b), as
wfl's multistage fits write them: one term per element, each with its own settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from checks import assert_forces_match_fd, assert_symmetries
from click.testing import CliRunner
from emt_cells import clear_alloy_cell, cu_au_frames, predictor

from gapfit.cli import main
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import parse_gap_fit_command
from gapfit.gapstring import parse_distance_2b, parse_soap
from gapfit.learn import learn_pool
from gapfit.model import Model
from gapfit.selection import (
    energy_prior,
    energy_variance,
    local_energy_variance,
    soap_terms,
    unit_soap,
)

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=16 delta=0.5"
PAIR = "cutoff=4.0 cutoff_transition_width=0.8 n_sparse=6 delta=0.8"
SPECIES = "add_species=F n_species=2 species_Z={29 79}"
PER_SPECIES = {
    "soap": [f"{SOAP} {SPECIES} Z=29", f"{SOAP} {SPECIES} Z=79"],
    "distance_2b": [
        f"{PAIR} add_species=F Z1={a} Z2={b}" for a, b in ((29, 29), (29, 79), (79, 79))
    ],
}
SIGMAS = {"default_sigma": (0.002, 0.05, 0.05), "e0_method": "average"}
KINKS = (3.2, 3.0, 4.0)  # where a cosine cutoff's transition starts or ends


@pytest.fixture(scope="module")
def frames():
    return cu_au_frames(41, 4, 4)


@pytest.fixture(scope="module")
def per_species(frames):
    return GAP(**PER_SPECIES, **SIGMAS).fit(frames).model_


@pytest.fixture(scope="module")
def test_cell():
    return clear_alloy_cell(78, KINKS)


def test_one_term_per_species_is_the_add_species_model(frames, per_species, test_cell):
    """Per-species terms with equal settings are gap_fit's ``add_species=T`` model
    (which is how gap_fit builds it): the kernel never couples central species or
    pair types, so the same sparse points give the same posterior. Every mean and
    std agrees: a term that counted atoms it does not cover, or dropped its
    neighbours' share of a covered atom's force, would not."""
    whole = GAP(soap=SOAP, distance_2b=PAIR, **SIGMAS).fit(frames).model_
    terms = per_species.terms
    names = [(t.name, getattr(t.spec, "centre", None) or t.spec.pair) for t in terms]
    assert names == [
        ("distance_2b", (29, 29)),
        ("distance_2b_2", (29, 79)),
        ("distance_2b_3", (79, 79)),
        ("soap", 29),
        ("soap_2", 79),
    ]
    assert per_species.info["n_sparse"]["soap_2"] == {"Cu": 0, "Au": 16}
    X = {t.spec.centre: t.sparse_X for t in per_species.terms if t.kind == "soap"}
    ref = whole.term("soap")
    for z, index in ((29, 0), (79, 1)):
        np.testing.assert_array_equal(X[z], ref.sparse_X[ref.sparse_species == index])
    cells = [test_cell, frames[-1]]
    for std in (True, "energy"):
        for p, q in zip(
            whole.predict(cells, std=std),
            per_species.predict(cells, std=std),
            strict=True,
        ):
            for key in p:
                if key.endswith("_raw"):
                    continue
                scale = np.abs(p[key]).max()
                np.testing.assert_allclose(q[key], p[key], rtol=0, atol=1e-8 * scale)


def test_a_term_of_one_species_leaves_the_others_alone(frames, test_cell):
    """A SOAP term of Cu centres alone: an Au atom has no local energy and no local
    energy std from it, yet its force has a std (it moves its Cu neighbours'
    environments), and forces are still the energy's derivatives."""
    cu_only = f"{SOAP} {SPECIES} Z=29"
    model = GAP(soap=cu_only, **SIGMAS).fit(frames).model_
    p = model.predict([test_cell], std=True)[0]
    au = test_cell.numbers == 79
    e0 = model.e0[79]
    np.testing.assert_allclose(p["energies"][au], e0, rtol=0, atol=1e-12)
    assert np.all(p["energies_std"][au] == 0) and np.all(p["energies_std"][~au] > 0)
    assert np.all(p["forces_std"][au] > 1e-4)
    f = assert_forces_match_fd(
        predictor(model),
        test_cell,
        h=3e-3,
        order=4,
        rtol=1e-6,
        indices=np.flatnonzero(au)[:3],
    )
    print(f"\nSOAP of Cu centres only: forces on Au vs FD {f:.1e} eV/Å")
    assert_symmetries(predictor(model, std=True), test_cell, np.random.default_rng(5))


def test_wfl_gap_fit_line_cli_and_file_give_one_model(frames, per_species, tmp_path):
    terms = [f"distance_2b {t}" for t in PER_SPECIES["distance_2b"]]
    terms += [f"soap {t}" for t in PER_SPECIES["soap"]]
    line = "gap={" + " : ".join(terms) + "}"
    cmd = parse_gap_fit_command(
        ["at_file=x.xyz", *line.split(), "default_sigma={0.002 0.05 0.05 0.0}"]
        + ["e0_method=average"]
    )
    assert cmd.gap_kwargs["soap"][1]["species_Z"] == [29, 79]
    assert [s["Z"] for s in cmd.gap_kwargs["soap"]] == [29, 79]
    write(tmp_path / "train.xyz", frames)
    out = tmp_path / "cli.npz"
    args = ["fit", "--at-file", str(tmp_path / "train.xyz"), "--gp-file", str(out)]
    for kind in ("soap", "distance_2b"):
        for text in PER_SPECIES[kind]:
            args += [f"--{kind.replace('_', '-')}", text]
    args += ["--default-sigma", "0.002", "0.05", "0.05", "--e0-method", "average"]
    result = CliRunner().invoke(main, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    with np.load(out) as z:  # an older gapfit refuses it instead of misreading it
        meta = json.loads(str(z["meta"]))
    assert meta["format_version"] == 7
    assert [t["descriptor"].get("centre") for t in meta["terms"][3:]] == [29, 79]
    assert [t["descriptor"].get("pair") for t in meta["terms"][:3]] == [
        [29, 29],
        [29, 79],
        [79, 79],
    ]
    loaded = Model.load(out)
    # the CLI read positions and labels rounded to the file's 8 decimals
    p, q = (m.predict(frames[-1:], std=True)[0] for m in (per_species, loaded))
    for key in ("energy", "forces", "stress", "energy_std", "forces_std"):
        scale = np.abs(p[key]).max()
        np.testing.assert_allclose(q[key], p[key], rtol=0, atol=1e-6 * scale)
    plan = GAP(**cmd.gap_kwargs).plan(frames)
    assert plan.n_sparse == {t.name: t.n_sparse for t in loaded.terms}


def test_a_corrupt_centre_is_refused(per_species, tmp_path):
    per_species.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        members = dict(z)
    meta = json.loads(str(members["meta"]))
    meta["terms"][3]["descriptor"]["centre"] = 47
    members["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **members)
    with pytest.raises(GapfitError, match="term 'soap'.*Z=47.*refit"):
        Model.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "text,words",
    [
        ("Z=29", ["add_species=T", "add_species=F"]),
        ("add_species=F species_Z={29 79}", ["without n_species", "n_species=2"]),
        ("add_species=F n_species=3 species_Z={29 79}", ["n_species=3", "agree"]),
        ("add_species=F n_species=2", ["without species_Z"]),
        ("add_species=F n_Z=2 Z=29", ["n_Z=2", "one SOAP term per species"]),
        ("add_species=F Z={29 79}", ["Z={29 79}", "one SOAP term per species"]),
        ("add_species=F Z=200", ["not an atomic number"]),
        ("add_species=F n_species=2 species_Z={29 x}", ["list of atomic numbers"]),
        ("add_species=F z=29 n_species=1 species_z=29 Z=29", ["given twice"]),
    ],
)
def test_bad_species_settings(text, words):
    with pytest.raises(GapfitError) as err:
        parse_soap(text)
    for word in words:
        assert word in str(err.value)


def test_species_settings_parse_as_gap_fit_writes_them():
    s = parse_soap(
        f"soap {SOAP} add_species=F Z={{79}} n_species=2 species_Z={{79,29}}"
    )
    assert (s["Z"], s["n_species"], s["species_Z"], s["add_species"]) == (
        79,
        2,
        [29, 79],
        False,
    )
    assert parse_soap(s) == s  # parsed settings parse to themselves
    pair = parse_distance_2b("add_species=F Z1=79 Z2=29")
    assert (pair["Z1"], pair["Z2"]) == (79, 29)
    with pytest.raises(GapfitError, match="add_species=F to fit that pair alone"):
        parse_distance_2b("Z1=29 Z2=29")


def test_terms_the_data_cannot_hold_are_refused(frames):
    cases = [
        (
            {"soap": f"{SOAP} add_species=F Z=29"},
            ["without species_Z", "species_Z={29 79}"],
        ),
        (
            {"soap": f"{SOAP} add_species=F n_species=1 species_Z=29 Z=29"},
            ["leaves out Au"],
        ),
        ({"soap": f"{SOAP} {SPECIES} Z=47"}, ["no Ag atom", "drop that term"]),
        ({"soap": f"{SOAP} {SPECIES}"}, ["without Z", "Z="]),
        (
            {"distance_2b": f"{PAIR} add_species=F Z1=29"},
            ["without both atomic numbers (Z1=29 Z2=0)"],
        ),
        (
            {"angle_3b": "cutoff=3.0 add_species=F"},
            ["angle_3b add_species=F", "add_species=T"],
        ),
    ]
    for kwargs, words in cases:
        with pytest.raises(GapfitError) as err:
            GAP(**kwargs, **SIGMAS).plan(frames)
        for word in words:
            assert word in str(err.value), (kwargs, str(err.value))


def test_learning_with_a_term_per_species_is_the_add_species_run(
    frames, test_cell, tmp_path
):
    """``gapfit learn`` takes gap_fit's per-element SOAP terms (``Z=29``, ``Z=79``)
    and per-pair 2-body terms (``Z1``/``Z2``), each holding its own element's or
    pair's sparse points. With random picks and sparse points by local-energy
    residual, the run is the ``add_species=T`` run's: the kernel never couples
    central species or pair types, so each term chooses the points that the one term
    chooses of its element (2-body: spread again over its pair's distances as labels
    widen them), the pool scores agree, and so do the final models. A term that took
    the other element's environments as candidates, a pair term left at its first
    frames' range, or a score that left one term out, would not agree."""
    pool = [f.copy() for f in frames]
    kw = {"n_seed": 2, "batch_size": 2, "budget": 6, "strategy": "random"}
    kw |= {"sparse_force_std": None, "progress": False}
    gap = GAP(soap=SOAP, distance_2b=PAIR, **SIGMAS)
    one = learn_pool(tmp_path / "one", "emt", pool, gap, **kw)
    gap = GAP(**PER_SPECIES, **SIGMAS)
    per = learn_pool(tmp_path / "per", "emt", pool, gap, **kw)
    assert per.log[-1]["n_labels"] == one.log[-1]["n_labels"] == 6
    assert per.capacity == {"soap": 16, "soap_2": 16} and one.capacity == {"soap": 32}
    a, b = (Model.load(r.workdir.file("model.npz")) for r in (one, per))
    counts = a.info["n_sparse"]["soap"]
    got = b.info["n_sparse"]
    assert (got["soap"]["Cu"], got["soap_2"]["Au"]) == (counts["Cu"], counts["Au"])
    assert got["soap"]["Au"] == got["soap_2"]["Cu"] == 0
    r = a.term("distance_2b")
    for k, name in enumerate(("distance_2b", "distance_2b_2", "distance_2b_3")):
        got_r, want_r = b.term(name).sparse_r, r.sparse_r[r.sparse_type == k]
        assert np.allclose(got_r, want_r, rtol=0, atol=1e-12)
    assert min(counts.values()) > 0
    (p,), (q,) = (m.predict([test_cell], std=True) for m in (a, b))
    for key in ("energy", "forces", "virial", "energy_std", "forces_std"):
        scale = np.abs(p[key]).max()
        assert np.abs(q[key] - p[key]).max() <= 1e-6 * scale, key
    # the scores over the pool, from each run's padded model and environments
    envs = (unit_soap(r.gap, r.species, pool) for r in (one, per))
    (e1, e2), (m1, m2) = envs, (one.model, per.model)
    for score in (
        lambda m, e: local_energy_variance(m, e),
        lambda m, e: energy_variance(m, e, energy_prior(_soaps(m), e)),
    ):
        u, v = score(m1, e1), score(m2, e2)
        assert np.abs(u - v).max() <= 1e-8 * np.abs(u).max()


def _soaps(model):
    return {t.name: (t.spec, t.kernel) for t in soap_terms(model)}


def test_one_species_data_takes_add_species_f_as_gap_fit(frames):
    """On data of one species add_species=F without Z or species_Z is gap_fit's
    species-blind term, which there is the add_species=T term."""
    cu = [f for f in frames if set(f.numbers) == {29}]
    plain = GAP(soap=SOAP, distance_2b=PAIR, **SIGMAS).fit(cu).model_
    blind = GAP(
        soap=f"{SOAP} add_species=F", distance_2b=f"{PAIR} add_species=F", **SIGMAS
    )
    model = blind.fit(cu).model_
    assert all(
        t.spec.to_dict().keys().isdisjoint({"centre", "pair"}) for t in model.terms
    )
    p, q = (m.predict(cu[:1])[0] for m in (plain, model))
    np.testing.assert_allclose(q["forces"], p["forces"], rtol=0, atol=1e-12)
