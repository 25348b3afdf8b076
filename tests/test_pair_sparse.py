"""gap_fit's ``sparse_method=random`` and ``theta_fac`` for the 2-body term: random
sparse distances among the data's distinct distances (the shortest and longest of
each pair type first), and a length scale per pair type, ``theta_fac`` times that
type's range of distances. The dense-GP reference of a kernel with a length per pair
type is in ``test_sparse_gp.py``; the distributed fit's equality in
``test_distributed.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from click.testing import CliRunner
from emt_cells import cu_au_frames

from gapfit.cli import main
from gapfit.distance_2b import PairSpec, PairSummary, pair_type
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.model import FORMAT_VERSION, Model
from gapfit.tune import _with

CUTOFF = 4.0
SIGMAS = {"default_sigma": (0.002, 0.05, 0.05), "e0_method": "average"}


@pytest.fixture(scope="module")
def frames():
    return cu_au_frames(7, 3, 3)


def _distances(frames) -> dict[int, np.ndarray]:
    """Every pair distance (Å) inside the cutoff, per pair type (Cu-Cu 0, Cu-Au 1,
    Au-Au 2), from ASE's neighbour list: the data as gap_fit's descriptor lists it."""
    out: dict[int, list] = {0: [], 1: [], 2: []}
    for at in frames:
        i, j, d = neighbor_list("ijd", at, CUTOFF)
        s = (at.numbers == 79).astype(int)
        t = pair_type(s[i], s[j], 2)
        for k in out:
            out[k].append(d[t == k])
    return {k: np.concatenate(v) for k, v in out.items()}


def test_random_points_are_distinct_distances_spanning_each_type() -> None:
    """Per pair type: min(n_sparse, distinct distances) points, each a distance of
    the data (to 1e-10 Å), the shortest and longest among them, no two equal; one
    seed gives one set, another seed another; summaries of parts of the data merge
    into the summary of the whole (what a distributed fit relies on)."""
    rng = np.random.default_rng(0)
    spec = PairSpec((29, 79), cutoff=CUTOFF)
    r = rng.uniform(2.0, 5.0, 600)
    r[:100] = r[100:200]  # every distance of the first 100 pairs twice
    types = rng.integers(0, 3, 600)
    types[:100] = types[100:200]
    types[r > 3.9] = 2
    types[(types == 2) & (r < 3.9)] = 0  # Au-Au: the pairs beyond 3.9 Å alone
    whole = PairSummary.of(spec, r, types, "random")
    Z_r, Z_t = whole.sparse_points(spec, 12, seed=5)
    for t in range(3):
        inside = np.unique(np.round(r[(types == t) & (r < CUTOFF)], 10))  # to 1e-10
        got = Z_r[Z_t == t]
        assert len(got) == min(12, len(inside))
        assert len(np.unique(got)) == len(got)
        assert np.isin(got, inside).all()
        assert (got.min(), got.max()) == (inside.min(), inside.max())
    assert np.array_equal(whole.sparse_points(spec, 12, seed=5)[0], Z_r)
    assert not np.array_equal(whole.sparse_points(spec, 12, seed=6)[0], Z_r)
    parts = [PairSummary.of(spec, r[k::3], types[k::3], "random") for k in range(3)]
    merged = PairSummary.merged(spec, parts)
    np.testing.assert_array_equal(merged.ranges, whole.ranges)
    for a, b in zip(merged.candidates, whole.candidates, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.array_equal(merged.sparse_points(spec, 12, seed=5)[0], Z_r)
    few = PairSummary.of(spec, np.array([2.5, 2.5, 3.0]), np.zeros(3, int), "random")
    assert few.sparse_points(spec, 12, 0)[0].tolist() == [2.5, 3.0]
    with pytest.raises(GapfitError, match="no pair of atoms closer than cutoff"):
        PairSummary.of(spec, np.array([4.5]), np.zeros(1, int), "random").sparse_points(
            spec, 4, 0
        )


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_theta_fac_is_each_pair_types_range_of_distances(frames, method, tmp_path):
    """A fit with ``theta_fac=0.5`` gets a length per pair type: half its range of
    distances in the data (ASE's neighbour list); its sparse points span that
    range (random: distances of the data). Saved, the model is format 8, predicts
    the same and ``gapfit info`` names each pair's length; a file whose lengths do
    not match its pair types is refused."""
    pair = f"cutoff={CUTOFF} delta=0.5 theta_fac=0.5 n_sparse=6 sparse_method={method}"
    model = GAP(distance_2b=pair, **SIGMAS).fit(frames).model_
    term = model.term("distance_2b")
    data = _distances(frames)
    want = [0.5 * (d.max() - d.min()) for d in data.values()]
    np.testing.assert_allclose(term.kernel.theta, want, rtol=1e-12)
    for t, d in data.items():
        got = term.sparse_r[term.sparse_type == t]
        assert len(got) == 6
        assert got.min() == pytest.approx(d.min(), abs=1e-9)
        assert got.max() == pytest.approx(d.max(), abs=1e-9)
        if method == "random":
            assert np.all(np.abs(got[:, None] - d[None, :]).min(axis=1) < 1e-9)
        else:
            np.testing.assert_allclose(np.diff(got), np.diff(got)[0], rtol=1e-9)

    model.save(tmp_path / "m.npz")
    again = Model.load(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        meta = json.loads(str(z["meta"]))
        members = {k: z[k] for k in z.files}
    assert meta["format_version"] == FORMAT_VERSION == 8
    assert again.term("distance_2b").kernel == term.kernel
    a, b = (m.predict(frames[-1:], std=True)[0] for m in (model, again))
    for key in ("energy", "forces", "forces_std", "stress_std"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    shown = CliRunner().invoke(main, ["info", "--gp-file", str(tmp_path / "m.npz")])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "lengths per type" in x)
    for name, theta in zip(("Cu-Cu", "Cu-Au", "Au-Au"), want, strict=True):
        assert f"{name} {round(theta, 4)}" in line
    meta["terms"][0]["kernel"]["theta"] = want[:2]
    members["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **members)
    with pytest.raises(GapfitError, match="theta.*inconsistent"):
        Model.load(tmp_path / "bad.npz")


def test_theta_uniform_models_keep_one_length_and_their_format(frames, tmp_path):
    """``theta_uniform`` (and ``theta_fac`` on data of one species pair) keeps one
    length, written as one number in a format-7 file."""
    pair = f"cutoff={CUTOFF} delta=0.5 theta_uniform=0.8 n_sparse=4"
    model = GAP(distance_2b=pair, **SIGMAS).fit(frames).model_
    assert model.term("distance_2b").kernel.theta == 0.8
    cu = GAP(distance_2b=pair.replace("theta_uniform=0.8", "theta_fac=0.5"), **SIGMAS)
    theta = cu.fit(frames[:3]).model_.term("distance_2b").kernel.theta
    assert isinstance(theta, float)
    assert theta == pytest.approx(0.5 * np.ptp(_distances(frames[:3])[0]), rel=1e-12)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        assert json.loads(str(z["meta"]))["format_version"] == 7


def test_a_tune_grid_of_theta_fac_replaces_theta_uniform() -> None:
    """``gapfit tune --grid distance_2b.theta_fac=...`` on a term with
    ``theta_uniform``: the grid's factor sets the lengths (gap_fit takes one)."""
    gap = GAP(distance_2b=f"cutoff={CUTOFF} theta_uniform=0.6")
    point = _with(gap, {"distance_2b.theta_fac": "0.4"})
    settings = point._term_settings()["distance_2b"][1]
    assert (settings["theta_fac"], settings["theta_uniform"]) == (0.4, None)
    back = _with(point, {"distance_2b.theta_uniform": "0.7"})._term_settings()[
        "distance_2b"
    ][1]
    assert (back["theta_fac"], back["theta_uniform"]) == (None, 0.7)
