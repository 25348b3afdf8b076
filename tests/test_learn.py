"""Active learning (gapfit.learn: gapfit.learner, gapfit.pool_mode, gapfit.otf_mode;
gapfit.labeller): pool mode, on-the-fly MD, labeller failures, resume after a kill,
the CLI and the example, on small seeded EMT Cu data.

The tests share one SOAP setting and one cell size (``emt_cells``), so that the jitted
kernels compile once for the whole file.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import ase.io
import numpy as np
import pytest
import scipy.stats
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from click.testing import CliRunner
from emt_cells import CAPACITY, SOAP, cu_cells

import gapfit.neighbours
from gapfit import GAP, GapfitError, heldout
from gapfit.assembly import chunk_batch, padded_batches
from gapfit.calculator import GAPCalculator
from gapfit.calibration import fit_std_map, without_calibration
from gapfit.cli import main
from gapfit.crossval import calibrate_cv
from gapfit.data import as_frames
from gapfit.labeller import LabelFailure, label, make_labeller
from gapfit.learn import Learner, learn_otf, learn_pool
from gapfit.learner import SCALE_MIN_FRAMES, _std_ratio
from gapfit.model import Model, chunk_indices
from gapfit.neighbours import padded_stream
from gapfit.otf_mode import (
    FLOOR_RISE,
    TAIL_Z,
    _calibrate,
    _few_frames_widening,
    _over,
    _std_floor,
    _std_scale,
)
from gapfit.pool_mode import _PoolRun
from gapfit.selection import unit_soap
from gapfit.sparse_set import force_residuals
from gapfit.update import refit
from gapfit.workdir import read_xyz_text

EXAMPLE = Path(__file__).parents[1] / "examples" / "learn_emt.py"
POOL = {
    "n_seed": 2,
    "batch_size": 3,
    "budget": 8,
    "seed": 5,
    "strategy": "uncertainty",
    "sparse_per_label": 12,  # the 24 sparse slots fill in two steps, so the last
    "sparse_tol": 1e-8,  # step is a rank update
    "progress": False,
}


def gap() -> GAP:
    return GAP(soap=SOAP, e0_method="average")


class TestEMT(EMT):
    """EMT that counts the structures it labels, fails on structures whose
    config_type says so (bad_raise, bad_nan, bad_unconverged), and raises
    KeyboardInterrupt (a kill) on its ``kill_at``-th structure."""

    __test__ = False

    def __init__(self, kill_at: int | None = None) -> None:
        super().__init__()
        self.structures = 0
        self.kill_at = kill_at

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if "positions" in system_changes:  # a new structure, not its stress
            self.structures += 1
            if self.structures == self.kill_at:
                raise KeyboardInterrupt
        how = atoms.info.get("config_type")
        if how == "bad_raise":
            raise RuntimeError("SCF exploded")
        super().calculate(atoms, properties, system_changes)
        if how == "bad_nan":
            self.results["forces"][3, 1] = np.nan
        if how == "bad_unconverged":
            warnings.warn("SCF did not converge in 100 iterations", stacklevel=1)


def pool_structures() -> list:
    """10 distinct cells, each three times: pool[i], pool[i + 10] and pool[i + 20]
    are the same structure."""
    return cu_cells(10, seed=11, labelled=False, rattle=0.12) * 3


def _picks(events: list) -> list:
    return [e["picked"] for e in events]


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    events: list = []
    workdir = tmp_path_factory.mktemp("pool") / "run"
    learner = learn_pool(
        workdir, "emt", pool_structures(), gap(), callback=events.append, **POOL
    )
    return learner, events


def test_labeller_names_and_failures():
    assert type(make_labeller("emt")) is EMT
    assert type(make_labeller("ase.calculators.emt:EMT")) is EMT
    lj = make_labeller("lj", '{"sigma": 2.3, "epsilon": 0.4}')
    assert isinstance(lj, LennardJones) and lj.parameters.sigma == 2.3
    own = TestEMT()
    assert make_labeller(own) is own
    for spec, kwargs, match in [
        ("nope", None, "emt, lj or module:Class"),
        ("no_such_module_xyz:Calc", None, "cannot import"),
        ("ase.calculators.emt:Nope", None, "has no 'Nope'"),
        ("emt", "{bad", "not JSON"),
        ("emt", "[1, 2]", "JSON object"),
        ("ase.atoms:Atoms", None, "not an ASE calculator"),
    ]:
        with pytest.raises(GapfitError, match=match):
            make_labeller(spec, kwargs)

    (cell,) = cu_cells(1, seed=2, labelled=False)
    done = label(TestEMT(), cell)
    reference = cell.copy()
    reference.calc = EMT()
    assert np.allclose(done.get_forces(), reference.get_forces())
    assert np.allclose(done.get_stress(), reference.get_stress())
    assert done.calc is not None and cell.calc is None  # the input is untouched
    for how, reason in [
        ("bad_raise", "RuntimeError: SCF exploded"),
        ("bad_nan", "non-finite forces"),
        ("bad_unconverged", "not converged"),
    ]:
        bad = cell.copy()
        bad.info["config_type"] = how
        result = label(TestEMT(), bad)
        assert isinstance(result, LabelFailure) and reason in result.reason
    squashed = cell.copy()
    squashed.positions[1] = squashed.positions[0] + 0.1  # rejected by gapfit.data
    assert "rejected" in label(EMT(), squashed).reason


def test_pool_mode_diverse_deterministic(pool_run, tmp_path):
    learner, events = pool_run
    picks = _picks(events)
    assert [len(p) for p in picks] == [2, 3, 3]  # seeds, then batches
    for batch in picks:  # no structure twice in a batch (copies are i mod 10)
        assert len({i % 10 for i in batch}) == len(batch)
    labelled = learner.state["labelled"]
    assert len({i % 10 for i in labelled}) == len(labelled) == 8
    assert learner.state["done"] == "label budget 8 reached"
    assert learner.n_sparse == learner.capacity["soap"]  # 24 slots filled: said so
    assert "24 SOAP sparse points (all slots" in learner.summary()
    assert [a.info["source"] for a in learner.labelled] == [
        f"pool:{i}" for i in labelled
    ]

    again: list = []
    twin = learn_pool(
        tmp_path / "twin",
        "emt",
        pool_structures(),
        gap(),
        callback=again.append,
        **POOL,
    )
    assert _picks(again) == picks
    w = np.asarray(learner.model.posterior.weights)
    assert np.array_equal(np.asarray(twin.model.posterior.weights), w)

    # the baseline: random batches, same seeds and model
    rand = learn_pool(
        tmp_path / "random",
        "emt",
        pool_structures(),
        gap(),
        **{**POOL, "strategy": "random"},
    )
    assert rand.state["labelled"][:2] == labelled[:2]
    assert len(set(rand.state["labelled"])) == 8 and rand.state["labelled"] != labelled

    # the loop's model (rank updates, refits) equals one full refit on its data
    events = [e["event"] for e in learner.log]
    assert "update" in events and "refit" in events
    full = refit(learner.model, learner.frames, chunk_atoms=1)
    assert (
        np.abs(np.asarray(full.posterior.weights) - w).max() <= 1e-8 * np.abs(w).max()
    )

    files = learner.workdir.path
    on_disk = read_xyz_text((files / "labelled.xyz").read_text())
    assert len(on_disk) == 8
    reference = on_disk[5].copy()
    reference.calc = EMT()
    assert np.allclose(on_disk[5].get_forces(), reference.get_forces(), atol=1e-7)
    log = [json.loads(x) for x in (files / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "stop"
    assert (files / "model.npz").is_file() and (files / "curve.csv").is_file()
    # held out: each batch predicted before its labels (seeds: no model yet); the
    # second batch's (a model of 5 labels) calibrate model.npz during the run
    assert [a.info.get("gap_n_labels") for a in on_disk] == [None] * 2 + [2] * 3 + [
        5
    ] * 3
    assert np.all(on_disk[5].arrays["gap_forces_std"] > 0)
    during = heldout.calibration(on_disk, learner.frames, learner.std_units, 3)
    assert during.data["n_configs"] == 3
    # at the end: 5-fold cross-validation of all 8 labels by the final model
    final = Model.load(files / "model.npz").calibration
    assert final.data["n_configs"] == 8
    assert final.data["held_out"].startswith("5-fold cross-validation")
    want = calibrate_cv(learner.model, learner.frames, 5).model.calibration
    assert final.quantities["forces"] == want.quantities["forces"]


def test_streamed_batches_are_the_padded_batches(monkeypatch):
    """Pool descriptors stream their chunks beyond ``HELD_ATOMS``: the same padded
    batches, one at a time."""
    frames = as_frames(cu_cells(5, seed=3, labelled=False), require=())
    frames[2] = as_frames([bulk("Cu", "fcc", a=3.61, cubic=True)], require=())[0]
    chunks = chunk_indices([len(f.numbers) for f in frames], 40)
    held = padded_batches(frames, chunks, (29,), 4.0)
    monkeypatch.setattr(gapfit.neighbours, "HELD_ATOMS", 0)
    build = partial(chunk_batch, frames, species=(29,), cutoff=4.0)
    _, _, streamed = padded_stream(build, chunks, 5 * 32)
    assert isinstance(streamed, Iterator) and len(chunks) == 4
    for a, b in zip(held, streamed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)


def test_pool_mixed_strategy_halves_each_batch(pool_run, tmp_path):
    """``strategy="mixed"``: each batch is the most uncertain structures and random
    ones, half each (batches of 3: 1 + 2, then 2 + 1); the random ones drawn as the
    random strategy draws, from the rest of the pool."""
    uncertain = _picks(pool_run[1])
    events: list = []
    run = learn_pool(
        tmp_path / "mixed",
        "emt",
        pool_structures(),
        gap(),
        callback=events.append,
        **{**POOL, "strategy": "mixed"},
    )
    seeds, first, second = _picks(events)
    assert seeds == uncertain[0] and len(first) == len(second) == 3
    assert first[0] == uncertain[1][0]  # the same model: the same most uncertain
    rest = np.setdiff1d(np.setdiff1d(np.arange(30), seeds), first[:1])
    drawn = np.random.default_rng([POOL["seed"], 1]).choice(rest, 2, replace=False)
    assert first[1:] == [int(i) for i in drawn]
    rest = np.setdiff1d(np.setdiff1d(np.arange(30), seeds + first), second[:2])
    drawn = np.random.default_rng([POOL["seed"], 2]).choice(rest, 1, replace=False)
    assert second[2:] == [int(i) for i in drawn]
    assert len({i % 10 for i in second[:2]}) == 2  # the uncertain half is diverse
    assert run.settings["strategy"] == "mixed"
    with pytest.raises(GapfitError, match="mixed, tournament, uncertainty, random"):
        learn_pool(tmp_path / "bad", "emt", pool_structures(), strategy="best")


def test_pool_tournament_strategy_picks_the_most_uncertain_of_each_draw(tmp_path):
    """``strategy="tournament"``: each pick is the most uncertain of
    ``tournament_size`` structures drawn at random (the random strategy's generator)
    from the unlabelled pool; a tournament of one is the random strategy."""
    pool = pool_structures()
    first = {**POOL, "budget": 5}  # the seeds and one batch of 3
    events: list = []
    run = learn_pool(
        tmp_path / "t4",
        "emt",
        pool,
        gap(),
        callback=events.append,
        **{**first, "strategy": "tournament"},
        tournament_size=4,
    )
    seeds, batch = _picks(events)
    assert run.settings["tournament_size"] == 4
    # the scores the batch was drawn by: those of the model of the seeds alone
    after_seeds = learn_pool(
        tmp_path / "seeds", "emt", pool, gap(), **{**POOL, "budget": 2}
    )
    assert after_seeds.state["labelled"] == seeds
    saved = read_xyz_text(after_seeds.workdir.read_text("pool.xyz"))
    u, _ = _PoolRun(after_seeds, saved).uncertainty()
    left = np.flatnonzero(np.isfinite(u))
    drawn = np.random.default_rng([POOL["seed"], 1]).choice(left, 12, replace=False)
    groups = drawn.reshape(3, 4)
    assert batch == [int(g[np.argmax(u[g])]) for g in groups]
    assert batch != [int(g[0]) for g in groups]  # the score chose, not the draw

    picks = {}
    for name, extra in [("random", {}), ("tournament", {"tournament_size": 1})]:
        got: list = []
        learn_pool(
            tmp_path / name,
            "emt",
            pool,
            gap(),
            callback=got.append,
            **{**first, "strategy": name},
            **extra,
        )
        picks[name] = _picks(got)
    assert picks["tournament"] == picks["random"]
    with pytest.raises(GapfitError, match="at least 1"):
        learn_pool(
            tmp_path / "bad", "emt", pool, strategy="tournament", tournament_size=0
        )


def test_pool_scores_and_target_std(tmp_path):
    """Both scores run and stop at a target std in their unit (eV/atom); the energy
    score picks differently; an unknown score is an error that names the valid ones."""
    picks, reasons = {}, {}
    for score in ("environments", "energy"):
        run = learn_pool(
            tmp_path / score, "emt", pool_structures(), gap(), score=score, **POOL
        )
        picks[score] = run.state["labelled"]
        stop = learn_pool(
            tmp_path / f"{score}_target",
            "emt",
            pool_structures(),
            gap(),
            score=score,
            target_std=10.0,
            **POOL,
        )
        assert len(stop.state["labelled"]) == POOL["n_seed"]  # the seeds only
        reasons[score] = stop.state["done"]
    assert picks["environments"][:2] == picks["energy"][:2]  # same seeds
    assert picks["environments"] != picks["energy"]
    assert reasons["environments"].startswith("largest environments std")
    assert reasons["energy"].startswith("largest energy std")
    with pytest.raises(GapfitError, match="environments, energy"):
        learn_pool(tmp_path / "bad", "emt", pool_structures(), gap(), score="nope")


def test_failing_labeller_is_skipped(tmp_path):
    pool = cu_cells(6, seed=21, labelled=False)
    for i, how in ((1, "bad_raise"), (3, "bad_nan"), (4, "bad_unconverged")):
        pool[i].info["config_type"] = how
    learner = learn_pool(
        tmp_path / "run",
        TestEMT(),
        pool,
        gap(),
        n_seed=2,
        batch_size=2,
        budget=10,
        seed=3,
        progress=False,
    )
    assert learner.state["done"] == "pool exhausted"
    assert sorted(learner.state["failed"]) == [1, 3, 4]
    assert sorted(learner.state["labelled"]) == [0, 2, 5]
    skipped = {e["source"]: e["reason"] for e in learner.log if e["event"] == "skipped"}
    assert len(skipped) == 3  # each tried once, never again
    assert "RuntimeError: SCF exploded" in skipped["pool:1"]
    assert "non-finite forces" in skipped["pool:3"]
    assert "not converged" in skipped["pool:4"]
    on_disk = read_xyz_text(learner.workdir.read_text("labelled.xyz"))
    assert sorted(a.info["source"] for a in on_disk) == ["pool:0", "pool:2", "pool:5"]
    assert learner.model.info["data"]["n_configs"] == 3


def test_isolated_atom_e0(tmp_path):
    learner = learn_pool(
        tmp_path / "run",
        "emt",
        cu_cells(4, seed=41, labelled=False),
        GAP(soap=SOAP, e0_method="isolated"),
        n_seed=2,
        budget=3,
        progress=False,
    )
    sources = [a.info["source"] for a in learner.labelled]
    assert sources[2] == "isolated:Cu" and len(sources) == 3
    atom = learner.labelled[2].copy()
    atom.calc = EMT()
    assert learner.model.e0[29] == pytest.approx(atom.get_potential_energy())
    assert learner.model.info["settings"]["e0_method"] == "isolated"


class NoIsolatedEMT(EMT):
    """EMT that fails on a lone atom (as a periodic DFT code given no cell may)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if len(atoms) == 1:
            raise RuntimeError("no cell for a lone atom")
        super().calculate(atoms, properties, system_changes)


def test_isolated_atom_failure_falls_back_to_average_e0(tmp_path):
    """A labeller that fails on the isolated atom does not stop the run: e0 comes
    from the average energy per atom instead, logged, and kept on resume."""
    pool = cu_cells(5, seed=43, labelled=False)
    learner = learn_pool(
        tmp_path / "run",
        NoIsolatedEMT(),
        pool,
        GAP(soap=SOAP, e0_method="isolated"),
        n_seed=2,
        budget=3,
        progress=False,
    )
    assert learner.state["done"] == "label budget 3 reached"
    skipped = [e for e in learner.log if e["event"] == "skipped"]
    assert [e["source"] for e in skipped] == ["isolated:Cu"]
    assert "no cell for a lone atom" in skipped[0]["reason"]
    (fallback,) = [e for e in learner.log if e["event"] == "e0_method"]
    assert fallback["method"] == "average" and "Cu" in fallback["reason"]
    seeds = learner.labelled[:2]
    average = np.mean([a.get_potential_energy() / len(a) for a in seeds])
    assert learner.model.e0[29] == pytest.approx(average, rel=1e-12)
    assert learner.model.info["settings"]["e0_method"] == "average"
    resumed, _ = Learner.load(tmp_path / "run", NoIsolatedEMT())
    assert resumed.gap.e0_method == "average"


def test_otf_start_failure_is_an_error_an_isolated_atom_failure_is_not(tmp_path):
    start = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    kw = {"sampler": "md", "steps": 2, "temperature": 300.0, "progress": False}
    gap_isolated = GAP(soap=SOAP, e0_method="isolated")
    bad = start.copy()
    bad.info["config_type"] = "bad_raise"
    with pytest.raises(GapfitError, match=r"start structure \(RuntimeError: SCF"):
        learn_otf(tmp_path / "bad", TestEMT(), bad, gap_isolated, **kw)
    learner = learn_otf(tmp_path / "ok", NoIsolatedEMT(), start, gap_isolated, **kw)
    assert [a.info["source"] for a in learner.labelled][0] == "start"
    assert learner.model.info["settings"]["e0_method"] == "average"


def test_reoptimising_after_the_isolated_atom(tmp_path):
    """The std rescaling of a re-optimisation is measured on a frame with force stds:
    the isolated atom labelled last has none (its 0/0 once made every later held-out
    std NaN and the run's calibration fail)."""
    learner = learn_pool(
        tmp_path / "run",
        "emt",
        cu_cells(6, seed=42, labelled=False),
        GAP(soap=SOAP, e0_method="isolated", optimise_hyperparameters=True),
        n_seed=2,
        batch_size=2,
        budget=5,
        progress=False,
    )
    assert [e["n_labels"] for e in learner.log if e["event"] == "reoptimised"] == [5]
    assert learner.labelled[2].info["source"] == "isolated:Cu"
    assert np.isfinite(learner.std_units) and learner.std_units > 0
    assert learner.std_units != 1.0  # the new delta and sigmas did change the stds
    assert learner.calibration() is not None


def test_pool_sparse_points_bring_the_force_residuals_to_the_target(tmp_path):
    """Pool mode adds sparse points for the labelled structures' forces until no
    force component's Nyström residual std is above ``sparse_force_std``; with None,
    by local-energy residual (another set)."""
    pool = cu_cells(6, seed=44, labelled=False)
    kw = {"n_seed": 2, "batch_size": 2, "budget": 4, "progress": False}
    target = 0.2  # eV/Å: reached before the 24 slots are full
    learner = learn_pool(
        tmp_path / "forces", "emt", pool, gap(), sparse_force_std=target, **kw
    )
    model, frames = learner.model, learner.frames
    assert 0 < learner.n_sparse < CAPACITY
    env = unit_soap(learner.gap, learner.species, frames[:1])
    r_F = force_residuals(model, frames, env.X_hat["soap"][:1], env.species[:1])[0]
    assert r_F.max() <= target**2
    other = learn_pool(
        tmp_path / "energies", "emt", pool, gap(), sparse_force_std=None, **kw
    )
    assert other.n_sparse != learner.n_sparse


def test_scheduled_refit_reoptimises_hyperparameters(tmp_path):
    """With ``optimise_hyperparameters`` the refit after ``refit_every`` labels
    re-chooses delta and sigmas: stored in the model and in its settings."""
    settings = GAP(soap=SOAP, e0_method="average", optimise_hyperparameters=True)
    learner = learn_pool(
        tmp_path / "run",
        "emt",
        cu_cells(8, seed=51, labelled=False),
        settings,
        n_seed=2,
        batch_size=2,
        budget=6,
        refit_every=2,
        progress=False,
    )
    record = learner.model.info["hyperparameters"]
    assert record["observations"]["energy"] == len(learner.labelled) == 6
    final = record["final"]
    assert final["delta"]["soap"] != 1.0
    assert learner.model.info["settings"]["soap"]["delta"] == final["delta"]["soap"]
    assert learner.model.info["settings"]["default_sigma"] == final["default_sigma"]


def test_pool_reoptimises_early_then_every_refit_every(tmp_path):
    settings = GAP(soap=SOAP, e0_method="average", optimise_hyperparameters=True)
    learner = learn_pool(
        tmp_path / "run",
        "emt",
        cu_cells(18, seed=52, labelled=False),
        settings,
        n_seed=4,
        batch_size=2,
        budget=16,
        refit_every=6,
        progress=False,
    )
    at = [e["n_labels"] for e in learner.log if e["event"] == "reoptimised"]
    assert at == [4, 8, 14]  # doubling intervals 4, 4, then at most 6


def test_pool_resume_after_kill(pool_run, tmp_path):
    reference, _ = pool_run
    workdir = tmp_path / "run"
    # structures 1-2 are the seeds; the kill hits the 2nd of the next batch of 3
    with pytest.raises(KeyboardInterrupt):
        learn_pool(workdir, TestEMT(kill_at=4), pool_structures(), gap(), **POOL)
    pending = read_xyz_text((workdir / "pending.xyz").read_text())
    assert len(pending) == 1  # labelled before the kill, not yet in the model
    with pytest.raises(GapfitError, match="already holds"):
        learn_pool(workdir, "emt", pool_structures(), gap(), **POOL)

    calc = TestEMT()
    resumed = learn_pool(workdir, calc, resume=True, progress=False)
    assert calc.structures == 8 - 3  # 2 seeds and the pending label were kept
    assert resumed.state["labelled"] == reference.state["labelled"]
    assert resumed.state["done"] == reference.state["done"]
    w = np.asarray(reference.model.posterior.weights)
    assert np.abs(np.asarray(resumed.model.posterior.weights) - w).max() <= (
        1e-10 * np.abs(w).max()
    )
    assert [e["event"] for e in resumed.log].count("resumed") == 1


def _otf(workdir, settings_gap=None, **kw):
    records: list = []
    test = cu_cells(2, seed=8)
    start = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    settings = {"steps": 12, "temperature": 1200.0, "std_threshold": 0.1, "seed": 2}
    learner = learn_otf(
        workdir,
        "emt",
        start,
        settings_gap or gap(),
        test,
        sampler="md",
        checkpoint_every=4,
        progress=False,
        callback=records.append,
        **{**settings, **kw},
    )
    return learner, records


def test_otf_md_labels_above_threshold(tmp_path):
    learner, records = _otf(tmp_path / "md")
    assert [r["step"] for r in records] == list(range(12))
    labelled = [r["step"] for r in records if r["labelled"]]
    assert len(labelled) >= 2
    for r in records:  # labelled exactly when the (scaled) std passed 0.1 eV/Å
        assert r["labelled"] == (r["max_std"] > 0.1)
        scaled = r["std_scale"] * np.max(r["forces_std"])
        assert r["max_std"] == pytest.approx(scaled)
    sources = [a.info["source"] for a in learner.labelled]
    assert sources == ["start"] + [f"md:{k}" for k in labelled]
    assert len(learner.curve) == 1 + len(labelled)
    assert learner.curve[-1]["f_rmse"] < learner.curve[0]["f_rmse"]
    assert (learner.workdir.path / "curve.png").stat().st_size > 1000

    # killed at step 7 by the callback, resumed: the same trajectory and labels
    def kill(event):
        if event["step"] == 7:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        learn_otf(
            tmp_path / "md2",
            "emt",
            bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2),
            gap(),
            sampler="md",
            steps=12,
            temperature=1200.0,
            std_threshold=0.1,
            seed=2,
            checkpoint_every=4,
            progress=False,
            callback=kill,
        )
    resumed = learn_otf(tmp_path / "md2", None, resume=True, progress=False)
    assert [a.info["source"] for a in resumed.labelled] == sources
    assert np.allclose(
        resumed.labelled[-1].positions, learner.labelled[-1].positions, atol=1e-12
    )
    final = [
        np.load(r.workdir.path / "checkpoint.npz")["sampler.positions"]
        for r in (learner, resumed)
    ]
    assert np.array_equal(final[0], final[1])

    # stopped after 6 steps, then extended to 12: the same run as 12 steps at once
    short, _ = _otf(tmp_path / "md3", steps=6)
    assert short.state["done"] == "6 steps done"
    for bad, match in (({"steps": 3}, "at least 6"), ({"temperature": 1.0}, "only")):
        with pytest.raises(GapfitError, match=match):
            learn_otf(short.workdir.path, None, resume=True, extend=bad)
    longer = learn_otf(
        short.workdir.path, None, resume=True, progress=False, extend={"steps": 12}
    )
    assert [a.info["source"] for a in longer.labelled] == sources
    assert longer.state["done"] == "12 steps done" and longer.settings["steps"] == 12
    (extended,) = [e for e in longer.log if e["event"] == "extended"]
    assert extended["steps"] == 12
    final = np.load(longer.workdir.path / "checkpoint.npz")["sampler.positions"]
    assert np.array_equal(
        final, np.load(learner.workdir.path / "checkpoint.npz")["sampler.positions"]
    )


def test_otf_min_interval_spaces_the_labels(tmp_path):
    # a threshold of 0 would label every step; min_interval 4 allows steps 4 and 8
    learner, records = _otf(tmp_path / "md", std_threshold=0.0, min_interval=4)
    labelled = [r["step"] for r in records if r["labelled"]]
    assert labelled == [4, 8]
    assert all(r["max_std"] > 0.0 for r in records[1:])  # all were above it
    assert [a.info["source"] for a in learner.labelled] == ["start", "md:4", "md:8"]
    with pytest.raises(GapfitError, match="min_interval 0"):
        _otf(tmp_path / "bad", min_interval=0)


def test_std_ratio_follows_delta_and_sigmas():
    """Doubling delta and every sigma (the jitter, a variance, times 4) doubles every
    posterior std exactly: the ratio with which on-the-fly mode rescales its
    held-out (e / s)^2."""
    cells = cu_cells(3, seed=9)
    kw = {"e0_method": "average"}
    base = GAP(soap=SOAP, default_sigma=(0.002, 0.05, 0.05), sparse_jitter=1e-8, **kw)
    double = GAP(
        soap=SOAP + " delta=2.0",
        default_sigma=(0.004, 0.1, 0.1),
        sparse_jitter=4e-8,
        **kw,
    )
    one, two = (g.fit(cells[:2]).model_ for g in (base, double))
    frame = as_frames(cells[2:])[0]
    assert _std_ratio(one, two, frame) == pytest.approx(2.0, rel=1e-6)
    assert _std_ratio(one, one, frame) == pytest.approx(1.0, rel=1e-12)


def test_std_scale_may_shrink_the_stds_only_after_enough_frames():
    """Held-out frames with errors a tenth of their stds: the scale, their estimate
    0.1 widened for so few frames, is at least 1 until SCALE_MIN_FRAMES frames are
    in, then below; one frame with errors twice the stds raises it at once."""
    state = {"z2_sum": 0.0, "z2_n": 0, "z2_frames": 0}
    std = np.full((4, 3), 0.02)
    assert _std_scale(state) == 1.0
    for n in range(SCALE_MIN_FRAMES):
        want = max(1.0, 0.1 * _few_frames_widening(n))
        assert _std_scale(state) == pytest.approx(want, rel=1e-12)
        _calibrate(state, 0.1 * std, {"forces": np.zeros((4, 3)), "forces_std": std})
    widen = _few_frames_widening(SCALE_MIN_FRAMES)
    assert 0.1 * widen < 1.0
    assert _std_scale(state) == pytest.approx(0.1 * widen, rel=1e-12)
    assert _std_scale(state, widened=False) == pytest.approx(0.1, rel=1e-12)
    loud = {"z2_sum": 0.0, "z2_n": 0, "z2_frames": 0}
    _calibrate(loud, 2.0 * std, {"forces": np.zeros((4, 3)), "forces_std": std})
    assert _std_scale(loud) == pytest.approx(2.0 * _few_frames_widening(1), rel=1e-12)


def test_few_frames_widening_keeps_the_gaussian_tail_odds():
    """A scale estimated from n held-out values, widened: a new error lies beyond
    TAIL_Z scaled stds as often as beyond TAIL_Z stds of the true scale (Monte
    Carlo); unwidened, 11 times as often at n = 5. The widening falls to 1."""
    rng = np.random.default_rng(0)
    n, trials = 5, 400_000
    held = rng.normal(0.0, 0.3, (trials, n))
    a = np.sqrt(np.mean(held**2, axis=1))
    new = np.abs(rng.normal(0.0, 0.3, trials))
    gaussian = 2 * scipy.stats.norm.sf(TAIL_Z)  # 0.0027
    widened = np.mean(new > TAIL_Z * a * _few_frames_widening(n))
    assert widened == pytest.approx(gaussian, rel=0.1)
    assert np.mean(new > TAIL_Z * a) > 8 * gaussian
    steps = [_few_frames_widening(k) for k in (1, 2, 5, 10, 40, 1000)]
    assert steps == sorted(steps, reverse=True) and steps[-1] < 1.01
    assert _few_frames_widening(0) == 1.0


def test_std_floor_holds_back_only_stds_a_label_could_not_lower():
    """After a label, the components still above the threshold (scaled) whose atom's
    species has no sparse slot left set a floor; a later step is labelled only for a
    component above the threshold and, where a floor is, FLOOR_RISE times above it."""
    std = np.array([[0.2, 0.01, 0.01], [0.3, 0.01, 0.01]])
    full = np.array([True, False])
    floor = _std_floor(std, 0.5, 0.05, full)
    assert floor == [0.2, 0.0, 0.0, 0.0, 0.0, 0.0]  # atom 1: a slot is left
    assert _std_floor(std, 0.5, 0.05, np.zeros(2, bool)) is None
    assert _std_floor(std, 0.1, 0.05, full) is None  # scaled, none is over
    state = {"std_floor": floor}
    later = np.array([[0.2, 0.01, 0.01], [0.05, 0.01, 0.01]])
    assert not _over(later, 0.5, 0.05, state)  # atom 0 as labelled, atom 1 under
    assert _over(later * [[FLOOR_RISE + 0.01], [1.0]], 0.5, 0.05, state)
    assert _over(later + [[0.0, 0.0, 0.0], [0.0, 0.1, 0.0]], 0.5, 0.05, state)
    assert _over(later, 0.5, 0.05, {"std_floor": None})
    assert not _over(later, 0.1, 0.05, {})


def test_otf_full_sparse_set_stops_labelling_unlowerable_stds(tmp_path):
    # threshold 0: every step is over it; once every slot is taken, a step is
    # labelled only where a std rose FLOOR_RISE times above what the last label left
    learner, records = _otf(tmp_path / "md", std_threshold=0.0)
    assert learner.n_sparse == CAPACITY
    held = [r["step"] for r in records[1:] if not r["labelled"]]
    assert held  # without the floor, all 11 steps would have been labelled
    assert learner.state["std_floor"] is not None
    assert len(learner.labelled) == 1 + 11 - len(held)

    # killed after the floor is set, resumed: the same labels and the same floor
    def kill(event):
        if event["step"] == 9:
            raise RuntimeError("killed")

    run = {"steps": 12, "temperature": 1200.0, "std_threshold": 0.0, "seed": 2}
    start = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    with pytest.raises(RuntimeError, match="killed"):
        learn_otf(
            tmp_path / "md2",
            "emt",
            start,
            gap(),
            checkpoint_every=4,
            progress=False,
            callback=kill,
            **run,
        )
    resumed = learn_otf(tmp_path / "md2", None, resume=True, progress=False)
    sources = [a.info["source"] for a in learner.labelled]
    assert [a.info["source"] for a in resumed.labelled] == sources
    assert resumed.state["std_floor"] == learner.state["std_floor"]


def test_otf_rescales_the_std_history_after_reoptimising(tmp_path):
    optimising = GAP(soap=SOAP, e0_method="average", optimise_hyperparameters=True)
    learner, records = _otf(
        tmp_path / "md",
        std_threshold=0.0,
        steps=5,
        refit_every=2,
        settings_gap=optimising,
    )
    events = [e["event"] for e in learner.log]
    assert "reoptimised" in events
    rescaled = [e for e in learner.log if e["event"] == "std_rescaled"]
    assert rescaled and all(e["ratio"] > 0.0 for e in rescaled)
    assert learner.model.info["settings"]["soap"]["delta"] != 1.0
    # rescaled, every held-out frame keeps its weight: 32 atoms x 3 components each
    held_out = sum(e["event"] == "labelled" for e in learner.log) - 1  # not start
    assert learner.state["z2_frames"] == held_out
    assert learner.state["z2_n"] == 96 * held_out
    # the stored held-out stds follow the same unit: the product of the ratios
    units = float(np.prod([e["ratio"] for e in rescaled]))
    assert learner.state["std_units"] == pytest.approx(units, rel=1e-12)
    atoms = learner.labelled[1]  # predicted before any re-optimisation
    assert atoms.info["gap_std_units"] == 1.0
    scaled = heldout.prediction(atoms, units)["forces_std"]
    assert np.allclose(scaled, units * atoms.arrays["gap_forces_std"], rtol=1e-12)


def test_otf_model_carries_the_held_out_calibration(tmp_path):
    # every step labelled (threshold 0): md:1 ... md:7 each held out before its label
    learner, records = _otf(tmp_path / "md", std_threshold=0.0, steps=8)
    by_step = {r["step"]: r for r in records}
    errors, stds = [], []
    for k, atoms in enumerate(learner.labelled[1:], start=1):
        r = by_step[int(atoms.info["source"].split(":")[1])]
        # stored: the prediction that drove the step, by the model of k labels
        assert np.array_equal(atoms.arrays["gap_forces"], r["forces"])
        assert np.array_equal(atoms.arrays["gap_forces_std"], r["forces_std"])
        assert atoms.info["gap_n_labels"] == k
        if k >= SCALE_MIN_FRAMES:
            errors.append(r["forces"] - atoms.get_forces())
            stds.append(r["forces_std"])
    assert len(errors) == 5
    saved = Model.load(tmp_path / "md" / "model.npz")
    assert saved.calibration.data["n_configs"] == 5
    expected = fit_std_map(
        np.concatenate(errors).ravel(),
        np.concatenate(stds).ravel(),
        np.ones(np.size(errors)),
        np.concatenate([r["forces"] for r in (by_step[k] for k in range(3, 8))]),
    )
    got = saved.calibration.quantities["forces"]
    assert (got.scale, got.floor, got.relative) == pytest.approx(
        (expected.scale, expected.floor, expected.relative), rel=1e-6, abs=1e-9
    )
    # each step's predicted stds: a s until three held-out frames (md:3-5) are in,
    # then with the floor and relative term of the map of those so far added
    for k in range(6):
        r = by_step[k]
        assert np.allclose(r["step_std"], r["std_scale"] * r["forces_std"], rtol=1e-12)
    r = by_step[7]
    so_far = fit_std_map(  # the held-out frames md:3-6
        np.concatenate(errors[:4]).ravel(),
        np.concatenate(stds[:4]).ravel(),
        np.ones(np.size(errors[:4])),
        np.concatenate([by_step[k]["forces"] for k in range(3, 7)]),
    )
    assert so_far.floor > 0
    want = np.sqrt(
        (r["std_scale"] * r["forces_std"]) ** 2
        + so_far.floor**2
        + (so_far.relative * r["forces"]) ** 2
    )
    assert np.allclose(r["step_std"], want, rtol=1e-6)
    assert "virial" in saved.calibration.quantities  # from the held-out stresses
    # the loop itself predicts with the DTC stds, before and after a resume
    assert learner.model.calibration is None
    assert Learner.load(tmp_path / "md")[0].model.calibration is None
    calc = GAPCalculator(saved)
    atoms = learner.labelled[-1].copy()
    atoms.calc = calc
    atoms.get_forces()
    raw = learner.model.predict([atoms], std=True)[0]["forces_std"]
    assert np.allclose(calc.results["forces_std_raw"], raw, rtol=1e-10)
    assert not np.allclose(calc.results["forces_std"], raw)


def test_held_out_prediction_is_model_predict():
    # the loop's model is uncalibrated: its calculator's stds are the DTC ones
    shipped = Model.load(Path(__file__).parents[1] / "potentials/cu_emt/model.npz")
    model = without_calibration(shipped)
    atoms = cu_cells(1, seed=3, labelled=False)[0]
    calc = GAPCalculator(model)
    atoms.calc = calc
    atoms.get_forces()
    stored = atoms.copy()
    heldout.record(stored, calc.results, n_labels=4, units=0.5)
    got = heldout.prediction(stored, units=1.0)
    want = model.predict([atoms], std=True)[0]
    for q in ("energy", "forces", "virial"):  # stds in units twice those stored
        assert np.allclose(got[q], want[q], rtol=1e-10, atol=1e-12), q
        assert np.allclose(got[q + "_std"], 2.0 * want[q + "_std"], rtol=1e-10), q


def test_otf_reoptimises_early_then_every_refit_every(tmp_path):
    # every step but the symmetric start labelled (threshold 0): start, md:1, ...
    optimising = GAP(soap=SOAP, e0_method="average", optimise_hyperparameters=True)
    learner, _ = _otf(
        tmp_path / "md",
        settings_gap=optimising,
        std_threshold=0.0,
        steps=20,
        refit_every=6,
        sparse_per_label=1,  # slots left to the end: no std floor holds a step back
    )
    at = [e["n_labels"] for e in learner.log if e["event"] == "reoptimised"]
    assert at == [4, 8, 14, 20]  # doubling intervals 4, 4, then at most 6


def test_cli_learn(tmp_path):
    ase.io.write(tmp_path / "pool.xyz", cu_cells(6, seed=31, labelled=False))
    ase.io.write(
        tmp_path / "start.xyz", bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    )
    workdir = str(tmp_path / "run")
    args = ["learn", "--labeller", "emt", "--soap", SOAP, "--quiet"]
    pool = [*args, "--pool", str(tmp_path / "pool.xyz"), "--workdir", workdir]
    runner = CliRunner()
    result = runner.invoke(
        main, [*pool, "--n-seed", "2", "--batch-size", "2", "--budget", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "4 labelled frames" in result.output and "label budget 4" in result.output
    for name in ("model.npz", "labelled.xyz", "log.jsonl", "curve.csv", "state.json"):
        assert (tmp_path / "run" / name).is_file()
    again = runner.invoke(main, pool)
    assert again.exit_code == 2 and "already holds" in again.output
    resumed = runner.invoke(
        main, ["learn", "--workdir", workdir, "--resume", "--quiet"]
    )
    assert resumed.exit_code == 0 and "label budget 4" in resumed.output
    resume = ["learn", "--workdir", workdir, "--resume", "--quiet"]
    more = runner.invoke(main, [*resume, "--budget", "6"])
    assert more.exit_code == 0, more.output
    assert "6 labelled frames" in more.output and "label budget 6" in more.output
    fixed = runner.invoke(main, [*resume, "--budget", "8", "--batch-size", "3"])
    assert fixed.exit_code == 2 and "--batch-size with --resume" in fixed.output
    assert "--budget and --target-std" in fixed.output

    md = [
        *args,
        "--md",
        str(tmp_path / "start.xyz"),
        "--workdir",
        str(tmp_path / "md"),
        "--steps",
        "3",
        "--temperature",
        "1200",
        "--baseline",
        "zbl",
        "--baseline-kwargs",
        '{"r_inner": 1.0, "r_outer": 1.8}',
    ]
    result = runner.invoke(main, md)
    assert result.exit_code == 0, result.output
    assert "3 steps done" in result.output
    core = Model.load(tmp_path / "md" / "model.npz").baseline
    assert (core.calculator, core.kwargs) == ("zbl", {"r_inner": 1.0, "r_outer": 1.8})
    swap = ["learn", "--workdir", str(tmp_path / "md"), "--resume", "--quiet"]
    swapped = runner.invoke(main, [*swap, "--baseline", "lj"])
    assert swapped.exit_code == 2 and "--baseline with --resume" in swapped.output

    rattled = runner.invoke(
        main,
        [
            *args,
            "--rattle",
            str(tmp_path / "start.xyz"),
            "--n-rattle",
            "5",
            "--workdir",
            str(tmp_path / "rattle"),
            "--n-seed",
            "2",
            "--budget",
            "3",
            "--strategy",
            "tournament",
            "--tournament-size",
            "3",
            "--sparse-force-std",
            "0",
        ],
    )
    assert rattled.exit_code == 0, rattled.output
    pool_file = tmp_path / "rattle" / "pool.xyz"
    assert len(read_xyz_text(pool_file.read_text())) == 5
    settings = json.loads((tmp_path / "rattle" / "state.json").read_text())["settings"]
    assert settings["strategy"] == "tournament" and settings["tournament_size"] == 3
    assert settings["sparse_force_std"] is None

    relax = runner.invoke(
        main,
        [
            *args,
            "--relax",
            str(tmp_path / "pool.xyz"),
            "--steps",
            "4",
            "--workdir",
            str(tmp_path / "relax"),
        ],
    )
    assert relax.exit_code == 0, relax.output
    log = (tmp_path / "relax" / "log.jsonl").read_text()
    assert '"source": "start"' in log and '"event": "stop"' in log

    both = runner.invoke(main, [*pool, "--md", str(tmp_path / "start.xyz")])
    assert both.exit_code == 2 and "exactly one of" in both.output
    bad = runner.invoke(
        main,
        [
            "learn",
            "--workdir",
            str(tmp_path / "x"),
            "--pool",
            str(tmp_path / "pool.xyz"),
            "--labeller",
            "emt",
            "--labeller-kwargs",
            "{oops",
        ],
    )
    assert bad.exit_code == 2 and "not JSON" in bad.output
    assert not (tmp_path / "x").exists()


def test_cli_learn_interrupted_says_how_to_resume(tmp_path, monkeypatch):
    import gapfit.learn

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gapfit.learn, "learn_pool", interrupted)
    ase.io.write(tmp_path / "pool.xyz", cu_cells(2, seed=31, labelled=False))
    workdir = str(tmp_path / "run")
    args = ["learn", "--labeller", "emt", "--pool", str(tmp_path / "pool.xyz")]
    result = CliRunner().invoke(main, [*args, "--workdir", workdir])
    assert result.exit_code == 130
    assert f"gapfit learn --workdir {workdir} --resume" in result.output


def test_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("learn_emt", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pool, md = example.main(tmp_path, n_pool=16, budget=6, md_steps=8, progress=False)
    assert len(pool.labelled) == 6 and pool.curve[-1]["f_rmse"] is not None
    assert len(md.labelled) >= 1 and md.state["done"] == "8 steps done"
    assert (tmp_path / "pool" / "curve.png").is_file()


def test_config_type_n_sparse_is_refused(tmp_path):
    """The loop chooses its own sparse points: per-type counts cannot apply."""
    by_type = GAP(soap=SOAP + " config_type_n_sparse=default:5", e0_method="average")
    with pytest.raises(GapfitError, match="does not apply to active learning"):
        learn_pool(tmp_path / "run", "emt", pool_structures(), by_type, budget=3)
