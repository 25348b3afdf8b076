"""Calibrated stds: the fit (gapfit.calibration), the metrics (gapfit.uncertainty),
``gapfit calibrate``, ``gapfit eval --plot``, the model file and the calculator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from scipy.special import ndtri
from scipy.stats import norm, spearmanr
from test_cli import SOAP, cu_cell, emt_labelled, fails_cleanly, invoke

from gapfit import GAPCalculator, GapfitError, Model
from gapfit.calibration import (
    MIN_CONFIGS,
    Calibration,
    StdMap,
    calibrate,
    calibrated_std,
    fit_calibration,
    fit_std_map,
)
from gapfit.data import read_frames
from gapfit.uncertainty import (
    Samples,
    coverage,
    metrics,
    nll,
    spearman,
    uncertainty_table,
)

N_HELD = 12  # held-out configs: >= MIN_VALUES energies, so every quantity is fitted


# ---- numerics on synthetic errors with known noise -----------------------------------
def synthetic(n: int, scale: float, floor: float, seed: int = 0):
    """Errors ~ N(0, scale^2 s^2 + floor^2 w) for log-uniform stds s in [0.01, 1]
    and per-atom floor weights w = 1/N, N in [20, 110)."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))
    w = 1.0 / rng.integers(20, 110, n)
    e = rng.normal(size=n) * np.sqrt((scale * s) ** 2 + floor**2 * w)
    return e, s, w


def test_fit_recovers_scale_and_floor() -> None:
    e, s, w = synthetic(20000, scale=2.5, floor=0.3)
    p = fit_std_map(e, s, w)
    # statistical error of each estimate here is ~1 %
    assert abs(p.scale / 2.5 - 1) < 0.03, p
    assert abs(p.floor / 0.3 - 1) < 0.06, p
    assert p.n == 20000
    # coverage of the calibrated stds is nominal, of the raw ones far from it
    cal = calibrated_std(s, p, w)
    np.testing.assert_allclose(
        coverage(e, cal, [0.6827, 0.95]), [0.6827, 0.95], atol=0.01
    )
    assert coverage(e, s, [0.95])[0] < 0.7


def test_fit_recovers_relative_term() -> None:
    # errors along the predicted value y: var = (0.8 s)^2 + 0.02^2 + (0.05 y)^2
    rng = np.random.default_rng(5)
    n = 30000
    s = np.exp(rng.uniform(np.log(0.01), np.log(0.3), n))
    y = rng.normal(0.0, 1.0, n)
    e = rng.normal(size=n) * np.sqrt((0.8 * s) ** 2 + 0.02**2 + (0.05 * y) ** 2)
    p = fit_std_map(e, s, np.ones(n), y)
    assert abs(p.scale / 0.8 - 1) < 0.04, p
    assert abs(p.floor / 0.02 - 1) < 0.15, p
    assert abs(p.relative / 0.05 - 1) < 0.05, p
    # without y there is no relative term, and the two-term fit is less likely
    two = fit_std_map(e, s, np.ones(n))
    assert two.relative == 0.0
    assert nll(e, calibrated_std(s, p, 1.0, y)) < nll(e, calibrated_std(s, two, 1.0))


def test_fit_is_the_likelihood_maximum() -> None:
    # independent check: the NLL of uncertainty.nll rises in every direction
    e, s, w = synthetic(5000, scale=0.7, floor=0.05, seed=1)
    p = fit_std_map(e, s, w)
    best = nll(e, calibrated_std(s, p, w))
    for da, db in ((1.02, 1), (0.98, 1), (1, 1.05), (1, 0.95)):
        other = StdMap(p.scale * da, p.floor * db, 0.0, p.n)
        assert nll(e, calibrated_std(s, other, w)) > best, (da, db)


def test_fit_without_noise_gives_no_floor() -> None:
    e, s, _ = synthetic(20000, scale=3.0, floor=0.0, seed=2)
    p = fit_std_map(e, s, np.ones_like(s))
    assert abs(p.scale / 3.0 - 1) < 0.03, p
    # sampling noise may leave a small floor (it is the likelihood maximum), but
    # the calibrated std is the true 3 s everywhere
    ratio = calibrated_std(s, p, 1.0) / (3.0 * s)
    assert 0.95 < ratio.min() and ratio.max() < 1.07, (p, ratio.min(), ratio.max())


def test_fit_refuses_zero_errors() -> None:
    with pytest.raises(GapfitError, match="all zero"):
        fit_std_map(np.zeros(20), np.ones(20), np.ones(20))


def test_config_type_maps_need_several_configurations() -> None:
    """A config_type with enough values but one held-out configuration keeps the
    global map; one with MIN_CONFIGS configurations gets its own."""
    rng = np.random.default_rng(4)
    n = 600
    ct = np.array(["few"] * 300 + ["many"] * 300)
    std = rng.uniform(0.5, 2.0, n)
    error = std * rng.normal(size=n) * np.where(ct == "few", 3.0, 1.0)
    samples = {"forces": Samples(np.zeros(n), error, std, np.ones(n), ct)}
    data = {"config_types": {"few": 1, "many": MIN_CONFIGS}}
    cal = fit_calibration(samples, per_config_type=True, data=data)
    assert set(cal.per_config_type) == {"many"}
    assert cal.get("forces", "few") == cal.quantities["forces"]
    assert cal.get("forces", "many") != cal.quantities["forces"]


def test_coverage_analytic() -> None:
    s = np.array([0.1, 2.0, 0.5, 7.0])
    e = np.array([0.5, -1.5, 2.5, -3.5]) * s  # |e| / s = 0.5, 1.5, 2.5, 3.5
    # z = 1.0, 1.96, 3.0 for these central probabilities
    got = coverage(e, s, [0.682689, 0.95, 0.9973])
    np.testing.assert_allclose(got, [0.25, 0.5, 0.75])
    # exact normal quantiles: the observed coverage of every level is the level
    n = 10000
    z = ndtri((np.arange(n) + 0.5) / n)
    levels = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(coverage(z, np.ones(n), levels), levels, atol=1.5 / n)


def test_nll_is_the_gaussian_log_density() -> None:
    rng = np.random.default_rng(3)
    e, s = rng.normal(size=50), rng.uniform(0.1, 2.0, 50)
    assert np.isclose(nll(e, s), -norm.logpdf(e, scale=s).mean(), rtol=1e-12)


def test_spearman_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 8, 200), rng.integers(0, 8, 200)  # many ties
    assert np.isclose(spearman(x, y), spearmanr(x, y).statistic, rtol=1e-12)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    assert np.isclose(spearman(x, y), spearmanr(x, y).statistic, rtol=1e-12)
    # forces: per-atom norms of error and std
    e, s = rng.normal(size=(40, 3)), rng.uniform(0.1, 1.0, (40, 3))
    want = spearmanr(np.linalg.norm(e, axis=1), np.linalg.norm(s, axis=1)).statistic
    assert np.isclose(metrics("forces", e, s)["spearman"], want, rtol=1e-12)


# ---- a small EMT model, held-out and test data ---------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(10)
    train = [emt_labelled(cu_cell(rng), "bulk") for _ in range(10)]
    ase.io.write(root / "train.xyz", train)
    held = []
    for k in range(N_HELD):
        atoms = cu_cell(rng)
        if k % 2:  # a hotter config_type: larger errors and stds
            atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        held.append(emt_labelled(atoms, "hot" if k % 2 else "bulk"))
    ase.io.write(root / "held.xyz", held)
    ase.io.write(root / "test.xyz", [emt_labelled(cu_cell(rng), "test")])
    result = invoke(
        "fit",
        "--at-file",
        root / "train.xyz",
        "--gp-file",
        root / "model.npz",
        "--soap",
        SOAP,
        "--e0-method",
        "average",
        "--quiet",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return root


@pytest.fixture(scope="module")
def calibrated(data: Path) -> tuple[Path, str]:
    """``gapfit calibrate --per-config-type`` into a new file; (path, stdout)."""
    out = data / "calibrated.npz"
    before = (data / "model.npz").read_bytes()
    result = invoke(
        "calibrate",
        "--gp-file",
        data / "model.npz",
        data / "held.xyz",
        "--output",
        out,
        "--per-config-type",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert (data / "model.npz").read_bytes() == before  # --output: input untouched
    return out, result.stdout


def test_cli_calibrate_prints_before_after(calibrated) -> None:
    path, out = calibrated
    assert "before/after on" in out and f"calibrated model written to {path}" in out
    for q in ("energy", "forces", "virial"):
        assert f"{q} scale " in out
        rows = [line.split() for line in out.splitlines() if line.startswith(q)]
        assert [r[1] for r in rows] == ["DTC", "calibrated"], rows
        assert [int(r[2]) for r in rows] == [
            {"energy": 1, "forces": 96}.get(q, 6) * N_HELD
        ] * 2
    assert "config_type hot: forces" in out
    assert not list(path.parent.glob(".*.tmp"))
    info = invoke("info", "--gp-file", path)
    assert info.exit_code == 0 and "forces scale " in info.stdout, info.output


def test_calibration_is_stored_and_fits_the_held_out_set(data, calibrated) -> None:
    cal = Model.load(calibrated[0]).calibration
    assert set(cal.quantities) == {"energy", "forces", "virial"}
    assert cal.data["n_configs"] == N_HELD and len(cal.data["sha256"]) == 64
    # 6 energies per config_type are too few for their own map, 576 forces are not
    assert set(cal.per_config_type) == {"bulk", "hot"}
    assert set(cal.per_config_type["hot"]) == {"forces", "virial"}
    # the Python API gives the same global maps, and the maximum-likelihood map is
    # at least as likely as the DTC stds (scale 1, floor 0, one of its candidates)
    result = calibrate(Model.load(data / "model.npz"), data / "held.xyz")
    table = uncertainty_table(result.samples)
    for q, p in result.model.calibration.quantities.items():
        assert np.isclose(p.scale, cal.quantities[q].scale, rtol=1e-6), q
        assert table[q]["calibrated"]["nll"] <= table[q]["DTC"]["nll"], q
    assert 0.85 <= table["forces"]["calibrated"]["coverage_95"] <= 1.0


def test_calibrated_predictions(data, calibrated) -> None:
    raw = Model.load(data / "model.npz")
    model = Model.load(calibrated[0])
    cal = model.calibration
    frames = read_frames(data / "held.xyz")[:2]  # a bulk and a hot config
    for f, r, c in zip(
        frames,
        raw.predict(frames, std=True),
        model.predict(frames, std=True),
        strict=True,
    ):
        n, volume = len(f.numbers), abs(np.linalg.det(f.cell))
        for key in ("energy_std", "energies_std", "forces_std", "stress_std"):
            np.testing.assert_array_equal(c[f"{key}_raw"], r[key], err_msg=key)
        pe, pf = cal.get("energy", f.config_type), cal.get("forces", f.config_type)
        pv = cal.get("virial", f.config_type)
        assert pf == cal.per_config_type[f.config_type]["forces"]
        # floors per local term (sqrt(N) b for totals); relative terms c |y| for
        # forces and virials, none for energies (module docstring)
        assert np.isclose(
            c["energy_std"], np.hypot(pe.scale * r["energy_std"], pe.floor * n**0.5)
        )
        for key, p, floor in (
            ("forces", pf, pf.floor),
            ("virial", pv, pv.floor * n**0.5),
        ):
            want = np.sqrt(
                (p.scale * r[f"{key}_std"]) ** 2 + floor**2 + (p.relative * r[key]) ** 2
            )
            np.testing.assert_allclose(c[f"{key}_std"], want, err_msg=key)
        np.testing.assert_allclose(
            c["stress_std"],
            c["virial_std"][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] / volume,
        )
        assert (c["forces_std"] != r["forces_std"]).all()
        np.testing.assert_array_equal(c["forces"], r["forces"])  # means unchanged


def test_calibrated_model_round_trip(data, calibrated, tmp_path: Path) -> None:
    model = Model.load(calibrated[0])
    model.save(tmp_path / "again.npz")
    again = Model.load(tmp_path / "again.npz")
    assert again.calibration == model.calibration
    frames = read_frames(data / "test.xyz")
    for a, b in zip(
        model.predict(frames, std=True), again.predict(frames, std=True), strict=True
    ):
        for key in ("energy_std", "forces_std", "stress_std", "forces_std_raw"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_calculator_returns_calibrated_stds(data, calibrated) -> None:
    model = Model.load(calibrated[0])
    atoms = ase.io.read(data / "held.xyz", index=1)  # config_type hot
    atoms.calc = GAPCalculator(model)
    atoms.get_forces()
    res = atoms.calc.results
    p = model.calibration.get("forces", "hot")
    np.testing.assert_allclose(
        res["forces_std"], calibrated_std(res["forces_std_raw"], p, 1.0, res["forces"])
    )
    (raw,) = Model.load(data / "model.npz").predict([atoms], std=True)
    np.testing.assert_array_equal(res["forces_std_raw"], raw["forces_std"])
    for key in ("energy_std", "energies_std", "stress_std"):
        assert key in res and key + "_raw" in res, key


def test_default_output_replaces_gp_file(data, tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    shutil.copy(data / "model.npz", model)
    result = invoke("calibrate", "--gp-file", model, data / "held.xyz")
    assert result.exit_code == 0, (result.output, result.exception)
    assert Model.load(model).calibration is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def _with_calibration(src: Path, out: Path, change) -> None:
    with np.load(src, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    meta = json.loads(str(members["meta"]))
    change(meta["calibration"])
    members["meta"] = np.array(json.dumps(meta))
    np.savez(out, **members)


@pytest.mark.parametrize(
    "change,word",
    [
        (lambda c: c["quantities"]["forces"].update(scale=-1.0), "scale -1.0"),
        (lambda c: c["quantities"]["energy"].update(floor=float("nan")), "floor nan"),
        (lambda c: c["quantities"]["virial"].pop("floor"), "quantities.virial"),
        (lambda c: c["quantities"]["forces"].update(relative=-0.1), "relative -0.1"),
        (lambda c: c["quantities"]["energy"].update(relative=0.1), "relative 0.1;"),
        (lambda c: c["quantities"].update(hessian={}), "expected a map"),
        (lambda c: c.update(method="isotonic"), "method 'isotonic'"),
        (lambda c: c.update(version=99), "version 99"),
        (lambda c: c["per_config_type"].update(hot=[1, 2]), "per_config_type.hot"),
    ],
)
def test_corrupt_calibration_is_rejected(
    data, calibrated, tmp_path: Path, change, word: str
) -> None:
    bad = tmp_path / "bad.npz"
    _with_calibration(calibrated[0], bad, change)
    with pytest.raises(GapfitError, match="calibration") as err:
        Model.load(bad)
    assert word in str(err.value) and str(bad) in str(err.value)
    out = tmp_path / "pred.xyz"
    result = invoke("predict", "--gp-file", bad, data / "test.xyz", "-o", out)
    fails_cleanly(result, "calibration", word)
    assert not out.exists()


def test_calibration_meta_round_trip() -> None:
    cal = Calibration(
        {"forces": StdMap(2.0, 0.01, 0.002, 100)},
        {"hot": {"forces": StdMap(3.0, 0.0, 0.0, 50)}},
        {"n_configs": 4},
    )
    assert Calibration.from_meta(json.loads(json.dumps(cal.to_meta())), "x") == cal
    assert cal.get("forces", "hot").scale == 3.0
    assert cal.get("forces", "cold").scale == 2.0
    assert cal.get("energy", "hot") is None


def test_calibrate_needs_labels(data, tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.xyz"
    ase.io.write(unlabelled, bulk("Cu", "fcc", a=3.61, cubic=True))
    out = tmp_path / "cal.npz"
    result = invoke("calibrate", "--gp-file", data / "model.npz", unlabelled, "-o", out)
    fails_cleanly(result, "calibration needs", "held-out")
    assert not out.exists()


def test_eval_plot_writes_pngs(data, calibrated, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = invoke(
        "eval", "--gp-file", calibrated[0], data / "test.xyz", "--plot", plots
    )
    assert result.exit_code == 0, (result.output, result.exception)
    names = {
        "parity_energy.png",
        "parity_forces.png",
        "parity_virial.png",
        "calibration_coverage.png",
        "calibration_error_vs_std.png",
    }
    assert {p.name for p in plots.iterdir()} == names
    for name in names:
        png = (plots / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
    out = result.stdout
    assert "predicted stds of" in out and "cov95" in out
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith("forces")]
    assert rows == [["forces", "DTC"], ["forces", "calibrated"]]


def test_eval_std_json_with_a_partial_calibration(data, tmp_path: Path) -> None:
    """Calibrated on 4 held-out configs, forces (384 values) and virials (24) get a
    map while the energies (4 < MIN_VALUES) keep their DTC std; ``eval --std-json``
    reports both stds of every quantity."""
    held = tmp_path / "held4.xyz"
    ase.io.write(held, ase.io.read(data / "held.xyz", ":4"))
    model = tmp_path / "partial.npz"
    result = invoke(
        "calibrate", "--gp-file", data / "model.npz", held, "--output", model
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "note: energy not calibrated" in result.stdout
    js = tmp_path / "stds.json"
    result = invoke("eval", "--gp-file", model, data / "test.xyz", "--std-json", js)
    assert result.exit_code == 0, (result.output, result.exception)
    table = json.loads(js.read_text())
    assert {q: set(rows) for q, rows in table.items()} == {
        q: {"DTC", "calibrated"} for q in ("energy", "forces", "virial")
    }
    assert table["energy"]["DTC"] == table["energy"]["calibrated"]
    assert table["forces"]["DTC"]["nll"] != table["forces"]["calibrated"]["nll"]
    # the stored coverage is that of the calibrated force stds of a direct prediction
    frames = read_frames(data / "test.xyz")
    preds = Model.load(model).predict(frames, std=True)
    ratio = np.concatenate(
        [
            np.ravel(np.abs(p["forces"] - f.forces) / p["forces_std"])
            for f, p in zip(frames, preds, strict=True)
        ]
    )
    want = np.mean(ratio <= ndtri(0.975))
    assert table["forces"]["calibrated"]["coverage_95"] == pytest.approx(want)
    assert table["forces"]["calibrated"]["n"] == ratio.size
