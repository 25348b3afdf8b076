"""gap_fit's ``distance_Nb`` as wfl writes it. ``order=2``: a 2-body term whose kernel
sums over the two orders of a pair of one species, each pair counted in both orders
(``compact_clusters=T``) or once (``F``); the dense-GP reference of the counting and
the permutation sum is in ``test_sparse_gp.py``. ``order=3``: the 3-body term over
the triangle's three distances, its kernel summed over their orders (data of one
element); the reference from its definition is in ``test_angle_3b.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from checks import (
    assert_forces_match_fd,
    assert_stress_matches_strain_fd,
    assert_symmetries,
)
from click.testing import CliRunner
from emt_cells import clear_alloy_cell, cu_au_frames, cu_cells, predictor

from gapfit.cli import main
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import parse_gap_fit_command
from gapfit.gapstring import parse_distance_2b
from gapfit.model import Model
from gapfit.plan import TRIPLET_MEAN_S, TRIPLET_ROW_S

# wfl's 2-body string, with its bare compact_clusters and f0
NB = (
    "distance_Nb order=2 n_sparse=6 cutoff=4.0 cutoff_transition_width=0.8 "
    "compact_clusters covariance_type=ard_se theta_uniform=1.0 sparse_method=uniform "
    "f0=0.0 add_species=T delta=0.8"
)
PAIR = "cutoff=4.0 cutoff_transition_width=0.8 n_sparse=6 theta_uniform=1.0"
SIGMAS = {"default_sigma": (0.002, 0.05, 0.05), "e0_method": "average"}


@pytest.fixture(scope="module")
def frames():
    return cu_au_frames(43, 4, 4)


@pytest.fixture(scope="module")
def nb_model(frames):
    return GAP(distance_2b=NB, **SIGMAS).fit(frames).model_


def test_distance_nb_is_distance_2b_with_twice_the_variance_for_one_species(
    frames, nb_model
):
    """gap_fit sums distance_Nb's kernel over the 2 orders of a Cu-Cu or Au-Au pair
    (2 delta^2) and not of a Cu-Au pair: the term predicts what one distance_2b term
    per pair with delta sqrt(2) x 0.8 on Cu-Cu and Au-Au and 0.8 on Cu-Au does (same
    sparse points, K_mm and rows), every mean and std (the stds to 1e-6 of their
    scale: the blocks of K_mm are factored in another order)."""
    spec = nb_model.terms[0].spec
    assert (spec.visits, spec.permutations, spec.cutoff_transition_width) == (
        2,
        True,
        0.8,
    )
    d = {(29, 29): 0.8 * np.sqrt(2), (29, 79): 0.8, (79, 79): 0.8 * np.sqrt(2)}
    per_pair = [f"{PAIR} add_species=F Z1={a} Z2={b} delta={d[a, b]}" for a, b in d]
    split = GAP(distance_2b=per_pair, **SIGMAS).fit(frames).model_
    p, q = (m.predict(frames[-2:], std=True) for m in (nb_model, split))
    for a, b in zip(p, q, strict=True):
        for key in ("energy", "forces", "stress", "energy_std", "forces_std"):
            scale = np.abs(a[key]).max()  # stds: DTC differences lose ~1e-8
            tol = 1e-6 if key.endswith("std") else 1e-9
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=tol * scale)
    # without the permutation sum (distance_2b, delta 0.8) the model differs
    plain = GAP(distance_2b=f"{PAIR} delta=0.8", **SIGMAS).fit(frames).model_
    r = plain.predict(frames[-2:], std=True)
    assert np.abs(r[0]["energy_std"] - p[0]["energy_std"]) > 1e-4


def test_wfl_line_option_and_python_give_one_term(frames, nb_model, tmp_path):
    """The gap_fit line, ``--distance-2b "distance_Nb ..."`` and ``GAP(distance_2b=
    "distance_Nb ...")`` read the same settings; the saved model keeps them."""
    cmd = parse_gap_fit_command(
        ["at_file=x.xyz", "gap={" + NB + " : soap cutoff=4.0 n_max=3 l_max=2}"]
        + ["default_sigma={0.002 0.05 0.05 0.0}", "e0_method=average"]
    )
    assert cmd.gap_kwargs["distance_2b"] == parse_distance_2b(NB)
    settings = parse_distance_2b(NB)
    assert (settings["order"], settings["compact_clusters"], settings["Z"]) == (
        2,
        True,
        [0, 0],
    )
    # gap_fit's default transition width for distance_Nb is 0.5 Å
    assert (
        parse_distance_2b("distance_Nb order=2 cutoff=4")["cutoff_transition_width"]
        == 0.5
    )
    write(tmp_path / "train.xyz", frames)
    out = tmp_path / "nb.npz"
    args = ["fit", "--at-file", str(tmp_path / "train.xyz"), "--gp-file", str(out)]
    args += ["--distance-2b", NB, "--default-sigma", "0.002", "0.05", "0.05"]
    result = CliRunner().invoke(main, [*args, "--e0-method", "average", "--quiet"])
    assert result.exit_code == 0, result.output
    loaded = Model.load(out)
    assert loaded.terms[0].spec == nb_model.terms[0].spec
    p, q = (m.predict(frames[-1:])[0] for m in (nb_model, loaded))
    np.testing.assert_allclose(q["forces"], p["forces"], atol=1e-6)  # 8-decimal file


def test_compact_clusters_f_counts_each_pair_once(frames):
    once = GAP(
        distance_2b=NB.replace("compact_clusters", "compact_clusters=F"), **SIGMAS
    )
    spec = once.fit(frames).model_.terms[0].spec
    assert (spec.visits, spec.permutations) == (1, True)


@pytest.mark.parametrize(
    "text, words",
    [
        ("distance_Nb cutoff=4", ["needs order="]),
        ("distance_Nb order=3 cutoff=3", ["3-body term", "--angle-3b"]),
        ("distance_Nb order=1 cutoff=3", ["order=1 is not implemented", "order=3"]),
        ("distance_2b order=2 cutoff=4", ["setting of gap_fit's distance_Nb"]),
        ("distance_Nb order=2 add_species=F Z1=29 Z2=79", ["Z={Z1 Z2}"]),
        ("distance_Nb order=2 Z={29 79}", ["with add_species=T", "add_species=F"]),
        ("distance_Nb order=2 add_species=F Z={29}", ["not 2 atomic numbers"]),
        ("cutoff=4 compact_clusters=F", ["distance_Nb", "Z1= Z2="]),
        ("cutoff=4 Z={29 79}", ["distance_Nb", "Z1= Z2="]),
    ],
)
def test_bad_distance_nb_settings_say_what_to_write(text, words):
    with pytest.raises(GapfitError) as err:
        parse_distance_2b(text)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_one_gp_over_pairs_of_two_species_is_refused(frames):
    gap = GAP(distance_2b="distance_Nb order=2 cutoff=4 add_species=F", **SIGMAS)
    with pytest.raises(GapfitError, match=r"without both atomic numbers \(Z=\{0 0\}\)"):
        gap.fit(frames)
    with pytest.raises(GapfitError, match="gap_fit descriptor 'distance_3b'"):
        parse_gap_fit_command(["at_file=x.xyz", "gap={distance_3b cutoff=3}"])


# wfl's 3-body string (distance_Nb order=3), on data of one element
NB3 = (
    "distance_Nb order=3 f0=0.0 add_species=T cutoff=3.25 n_sparse=12 "
    "covariance_type=ard_se delta=0.3 theta_uniform=1.0 sparse_method=uniform "
    "compact_clusters=T"
)


def test_wfl_2_3_body_and_soap_line_fits_one_element(tmp_path):
    """wfl's 2-body + 3-body + SOAP line on Cu: the 3-body term is distance_Nb's
    (the three distances, kernel summed over their orders: exact against the
    definition in ``test_angle_3b.py``); its forces and stress are derivatives of
    its energy, its predictions invariant (with stds), and it saves and loads as
    format 7. On two elements it is refused, saying why."""
    frames = cu_cells(5, seed=11)
    line = "gap={" + NB + " : " + NB3 + " : soap cutoff=3.5 n_max=3 l_max=2 zeta=4}"
    cmd = parse_gap_fit_command(
        ["at_file=x.xyz", line, "default_sigma={0.002 0.05 0.05 0.0}"]
        + ["e0_method=average"]
    )
    assert cmd.gap_kwargs["angle_3b"]["order"] == 3
    model = GAP(**cmd.gap_kwargs).fit(frames).model_
    term = model.term("angle_3b")
    assert (term.spec.form, term.spec.visits, term.kernel.theta) == (
        "distances",
        1,
        (1.0, 1.0, 1.0),
    )
    # a Cu cell clear of the cutoff functions' kinks (2-body, 3-body, SOAP). With 30
    # sparse triplets instead of 12, K_mm of these alike Cu triangles is so near
    # singular that the energy's rounding moved FD forces by 8e-6 of max |F| and a
    # supercell's local energies by 1.4e-8
    cell = clear_alloy_cell(6, (2.75, 3.0, 3.2, 3.25, 3.5, 4.0), n_au=0)
    assert_forces_match_fd(predictor(model), cell, indices=[0, 5, 17])
    assert_stress_matches_strain_fd(predictor(model), cell)
    assert_symmetries(predictor(model, std=True), cell, np.random.default_rng(2))
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        meta = json.loads(str(z["meta"]))
    assert meta["format_version"] == 7
    assert meta["terms"][1]["descriptor"]["form"] == "distances"
    again = Model.load(tmp_path / "m.npz").predict([cell], std=True)[0]
    first = model.predict([cell], std=True)[0]
    np.testing.assert_array_equal(again["forces_std"], first["forces_std"])
    with pytest.raises(GapfitError, match="data of one element"):
        GAP(angle_3b=NB3, **SIGMAS).fit(cu_au_frames(5, 1, 2))


def test_dry_run_counts_the_six_orders_of_the_3_body_kernel() -> None:
    """The dry run of distance_Nb's 3-body term counts the triplets and sparse points
    of angle_3b at the same cutoff and its kernel work 6 times (one per order): 5
    more times its (padded triplets x sparse points) at the rows' and the mean's
    rates (the measured neighbour-list time, in both stages, cancels)."""
    frames = cu_cells(3, seed=4)
    angle = NB3.replace("distance_Nb order=3", "angle_3b").replace(
        " compact_clusters=T", ""
    )
    plans = [GAP(angle_3b=a, soap=None, **SIGMAS).plan(frames) for a in (angle, NB3)]
    assert plans[0].n_triplets == plans[1].n_triplets > 0
    assert plans[0].n_sparse == plans[1].n_sparse
    rows, mean = (
        plans[1].stage_seconds[k] - plans[0].stage_seconds[k]
        for k in ("solve", "training_errors")
    )
    work = (rows - mean) / (5 * (TRIPLET_ROW_S - TRIPLET_MEAN_S))
    real = plans[0].n_triplets * plans[0].n_sparse["angle_3b"]
    assert real <= work <= 2 * real  # triplets padded to a bucket


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"angle_3b": "distance_Nb order=2 cutoff=3"}, ["2-body term"]),
        ({"angle_3b": NB3 + " compact_clusters=F"}, ["given twice"]),
        ({"angle_3b": NB3.replace("=T", "=F")}, ["compact_clusters=F", "=T"]),
        ({"angle_3b": NB3 + " Z={29 29 29}"}, ["add_species=T", "add_species=F"]),
        ({"angle_3b": "cutoff=3 Z={29 29 29}"}, ["add order=3"]),
        (
            {"angle_3b": NB3.replace("add_species=T", "add_species=F Z={29 29 79}")},
            ["one element"],
        ),
    ],
)
def test_bad_3_body_distance_nb_settings_say_what_to_write(kwargs, words):
    with pytest.raises(GapfitError) as err:
        GAP(**kwargs)._term_settings()
    for word in words:
        assert word in str(err.value), str(err.value)
