"""gap_fit's ``distance_Nb order=2`` (its 2-body form, as wfl writes it): a 2-body term
whose kernel sums over the two orders of a pair of one species, each pair counted in
both orders (``compact_clusters=T``) or once (``F``). The dense-GP reference of the
counting and the permutation sum is in ``test_sparse_gp.py``."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import write
from click.testing import CliRunner
from emt_cells import cu_au_frames

from gapfit.cli import main
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.gap_fit_args import parse_gap_fit_command
from gapfit.gapstring import parse_distance_2b
from gapfit.model import Model

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
        ("distance_Nb order=3 cutoff=3", ["order=3 is not implemented", "angle_3b"]),
        ("distance_Nb order=1 cutoff=3", ["order=1 is not implemented", "order=2"]),
        ("distance_2b order=2 cutoff=4", ["setting of gap_fit's distance_Nb"]),
        ("distance_Nb order=2 add_species=F Z1=29 Z2=79", ["Z={Z1 Z2}"]),
        ("distance_Nb order=2 Z={29 79}", ["with add_species=T", "add_species=F"]),
        ("distance_Nb order=2 add_species=F Z={29}", ["not two atomic numbers"]),
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


def test_active_learning_takes_a_distance_nb_term_over_every_pair() -> None:
    """``gapfit learn`` takes one 2-body term over every species pair: distance_Nb's
    default ``Z={0 0}`` is that; ``Z={29 79}`` (one pair) is refused."""
    learnable = GAP(distance_2b=NB, soap="cutoff=4.0 n_max=3 l_max=2")._settings()
    assert learnable[1]["order"] == 2
    one_pair = NB.replace("add_species=T", "add_species=F Z={29 79}")
    with pytest.raises(GapfitError, match=r"covers one species \(Z=\[29, 79\]\)"):
        GAP(distance_2b=one_pair)._settings()
