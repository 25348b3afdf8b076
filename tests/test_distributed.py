"""A fit and predictions on a 2-worker dask cluster equal the serial ones
(gapfit.distributed, gapfit.cluster); the TSQR reduction equals a one-shot QR
(gapfit.tsqr)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import ase.io
import dask
import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from click.testing import CliRunner, Result
from jax.experimental.compilation_cache import compilation_cache

from gapfit import GAP, Model
from gapfit.cli import main
from gapfit.cluster import dask_client, predict_file, worker_env
from gapfit.data import read_frames
from gapfit.errors import GapfitError
from gapfit.sparse_gp import fold
from gapfit.sparsify import (
    choose_sparse,
    cur_basis,
    distinct_rows,
    leverage_scores,
    normalise_rows,
    row_keys,
    select_sparse,
)
from gapfit.tsqr import RowFactor, stack_qr, tree_reduce

# n_sparse 15 per species < the distinct environments of each (so CUR scores and
# draws are used); 4 two-body points per pair type keep K_mm well conditioned; the
# first 2-body term's are gap_fit's random ones, among the distinct distances of
# every worker, and its length scales gap_fit's theta_fac, one per pair type.
SOAP = "cutoff=4.0 n_max=2 l_max=2 n_sparse=15 sparse_method=cur_points"
PAIR = "cutoff=4.0 n_sparse=4 sparse_method=random theta_fac=0.5"
# a second SOAP and 2-body term (several terms of one kind), of Au centres and of
# Cu-Au pairs alone (gap_fit's add_species=F): each SOAP term's sparse set is chosen
# over the workers, among its own species' environments
SHORT_SOAP = (
    "cutoff=3.0 cutoff_transition_width=0.5 n_max=2 l_max=3 n_sparse=10 "
    "add_species=F n_species=2 species_Z={29 79} Z=79"
)
SHORT_PAIR = "cutoff=3.0 n_sparse=4 add_species=F Z1=29 Z2=79"
SETTINGS = {
    "soap": [SOAP, SHORT_SOAP],
    "distance_2b": [PAIR, SHORT_PAIR],
    "chunk_atoms": 64,
    "rnd_seed": 3,
}


def labelled(atoms: Atoms, config_type: str) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.info["config_type"] = config_type
    return atoms


def cu_au_cell(rng: np.random.Generator) -> Atoms:
    """A rattled 32-atom fcc cell, 40 % of the sites Au."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)
    atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    isolated = [
        labelled(Atoms(s, [[5.0] * 3], cell=[10.0] * 3, pbc=True), "isolated_atom")
        for s in ("Cu", "Au")
    ]
    path = tmp_path_factory.mktemp("distributed") / "train.xyz"
    cells = [labelled(cu_au_cell(rng), "bulk") for _ in range(10)]
    ase.io.write(path, isolated + cells)
    return path


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A JAX compilation cache shared by this process and the workers, which load
    the kernels compiled for the serial fit instead of compiling them again: this
    keeps the module within its time budget and changes no number."""
    names = {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    old = {k: os.environ.get(k) for k in names}
    options = {
        "jax_compilation_cache_dir": names["JAX_COMPILATION_CACHE_DIR"],
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        # no size limit: the limit's LRU bookkeeping races between the processes
        "jax_compilation_cache_max_size": -1,
    }
    old_options = {k: getattr(jax.config, k) for k in options}
    os.environ.update(names)  # inherited by the workers, which start after this
    for k, v in options.items():
        jax.config.update(k, v)
    # this process's cache was set up at its first compile (by an earlier test, in
    # the default directory): without a reset it keeps writing there, the workers
    # find nothing and compile everything again (the module took 160 s, not 60)
    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v
    for k, v in old_options.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def client(compile_cache):
    with dask_client(n_workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def fits(train: Path, compile_cache, client) -> tuple[GAP, GAP]:
    return GAP(**SETTINGS).fit(train), GAP(**SETTINGS).fit(train, client=client)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_same_predictions(ref: list[dict], got: list[dict], tol: float) -> None:
    for key in ("energy", "forces", "virial"):
        worst = max(
            np.abs(np.asarray(a[key]) - b[key]).max()
            for a, b in zip(ref, got, strict=True)
        )
        assert worst <= tol, (key, worst)


def test_tsqr_equals_one_shot_qr() -> None:
    # reference: numpy's QR of all rows at once; R is unique up to row signs
    rng = np.random.default_rng(4)
    A = rng.normal(size=(300, 12)) @ np.diag(np.logspace(0, -6, 12))
    ref = np.linalg.qr(A, mode="r")
    for cuts in ([], [37, 100, 180, 250], [10, 20, 30, 40, 290]):  # 1, 5, 6 blocks
        blocks = np.split(A, cuts)
        R = tree_reduce(
            [np.asarray(fold(np.zeros((12, 12)), B[:, :-1], B[:, -1])) for B in blocks],
            stack_qr,
        )
        signs = np.sign(np.diag(R)) * np.sign(np.diag(ref))
        np.testing.assert_allclose(R * signs[:, None], ref, rtol=0, atol=1e-12)


def test_row_factor_equals_one_shot_qr() -> None:
    # blocks of 97 rows folded 242 at a time; a fold runs asynchronously, so a host
    # buffer refilled after it is handed over would corrupt R (it did, by ~10 %)
    A = np.random.default_rng(5).normal(size=(3000, 120))
    factor = RowFactor(120, 2 * 121)
    for block in np.array_split(A, 31):
        factor.add(block)
    R = factor.factor()
    assert np.abs(R[:, -1]).max() == 0.0 and np.abs(R[-1]).max() == 0.0  # [A | 0]
    np.testing.assert_allclose(R[:-1, :-1].T @ R[:-1, :-1], A.T @ A, atol=1e-9)


def test_selection_from_parts_equals_select_sparse() -> None:
    # the distributed fit's steps on three parts of the rows (keys, candidates, TSQR
    # factor, basis, scores per part, one seeded choice) against select_sparse on all
    rng = np.random.default_rng(7)
    X = rng.normal(size=(400, 9)) @ np.diag(np.logspace(0, -8, 9))
    X[350:] = X[:50] * 3.0  # duplicates (same x̂) across parts
    Z = rng.integers(0, 2, 400)
    Z[350:] = Z[:50]
    parts = np.split(np.arange(400), [120, 260])
    X_hat = normalise_rows(X)
    keys = np.concatenate([row_keys(X_hat[i]) for i in parts])
    candidates = distinct_rows(Z, keys)
    scores = {}
    for z, rows in candidates.items():
        blocks = [X_hat[np.intersect1d(rows, i)] for i in parts]
        factors = [RowFactor(9, 20) for _ in blocks]
        for f, B in zip(factors, blocks, strict=True):
            f.add(B)
        R = tree_reduce([f.factor() for f in factors], stack_qr)
        basis = cur_basis(R[:9, :9], rows.size, 20)
        scores[z] = np.concatenate([leverage_scores(B, basis) for B in blocks])
    for seed in range(5):
        np.testing.assert_array_equal(
            choose_sparse(candidates, 20, "cur_points", seed, scores),
            select_sparse(X, Z, 20, "cur_points", seed),
        )


def test_fit_equals_serial(fits: tuple[GAP, GAP], train: Path) -> None:
    serial, dist = fits
    s, d = serial.model_, dist.model_
    assert s.term("soap").sparse_counts() == {"Cu": 15, "Au": 15}
    assert s.term("soap_2").sparse_counts() == {"Cu": 0, "Au": 10}
    assert set(s.term("distance_2b_2").sparse_type) == {1}  # Cu-Au pairs alone
    assert [t.name for t in d.terms] == [t.name for t in s.terms]
    # the same sparse sets, to the bit: same environments, same 2-body distances
    for name in ("soap", "soap_2"):
        np.testing.assert_array_equal(
            d.term(name).sparse_species, s.term(name).sparse_species
        )
        np.testing.assert_array_equal(d.term(name).sparse_X, s.term(name).sparse_X)
    for name in ("distance_2b", "distance_2b_2"):
        np.testing.assert_array_equal(d.term(name).sparse_r, s.term(name).sparse_r)
        assert d.term(name).kernel == s.term(name).kernel
    assert len(set(s.term("distance_2b").kernel.theta)) == 3  # one per pair type
    assert d.e0 == s.e0
    w_s, w_d = np.asarray(s.posterior.weights), np.asarray(d.posterior.weights)
    assert np.abs(w_d - w_s).max() <= 1e-8 * np.abs(w_s).max()
    frames = read_frames(train)
    assert_same_predictions(s.predict(frames), d.predict(frames), 1e-8)
    assert d.info["data"] == s.info["data"]
    all_s, all_d = serial.training_errors_["all"], dist.training_errors_["all"]
    for q in ("energy", "forces", "virial"):
        assert all_d[q]["rmse"] == pytest.approx(all_s[q]["rmse"], rel=1e-6)
    workers = d.info["distributed"]["worker_peak_rss_gib"]
    assert len(workers) == 2 and all(0.05 < v < 8.0 for v in workers.values())
    assert dist.worker_memory_gib_ == workers


def test_fit_with_a_baseline_equals_serial(train: Path, client) -> None:
    """The workers subtract the baseline as one process does (e0 from the residual
    energies, rows of the residual labels); predictions add it back."""
    lj = {"baseline": "lj", "baseline_kwargs": {"sigma": 2.3, "epsilon": 0.4}}
    serial = GAP(**SETTINGS, **lj).fit(train)
    dist = GAP(**SETTINGS, **lj).fit(train, client=client)
    assert dist.model_.e0 == pytest.approx(serial.model_.e0, abs=1e-10)
    w_s, w_d = (np.asarray(g.model_.posterior.weights) for g in (serial, dist))
    assert np.abs(w_d - w_s).max() <= 1e-8 * np.abs(w_s).max()
    frames = read_frames(train)
    assert_same_predictions(
        serial.model_.predict(frames), dist.model_.predict(frames), 1e-8
    )
    errors = (g.training_errors_["all"]["forces"]["rmse"] for g in (serial, dist))
    assert next(errors) == pytest.approx(next(errors), rel=1e-6)


def test_3_body_fit_and_predictions_equal_serial(train: Path, client) -> None:
    """A 3-body term (gap_fit's angle_3b, theta_fac lengths per triplet type) with a
    SOAP term: the workers' distinct triplets give the serial sparse triplets and
    lengths to the bit; weights and predictions agree, on the cluster as here."""
    settings = {
        "soap": "cutoff=3.0 cutoff_transition_width=0.5 n_max=2 l_max=2 n_sparse=8",
        "angle_3b": "cutoff=3.0 cutoff_transition_width=0.5 n_sparse=12 theta_fac=0.5",
        "chunk_atoms": 64,
        "rnd_seed": 3,
    }
    s = GAP(**settings).fit(train).model_
    d = GAP(**settings).fit(train, client=client).model_
    a, b = s.term("angle_3b"), d.term("angle_3b")
    np.testing.assert_array_equal(b.sparse_d, a.sparse_d)
    np.testing.assert_array_equal(b.sparse_type, a.sparse_type)
    assert b.kernel == a.kernel and len(set(a.kernel.theta)) == 6  # one per type
    w_s, w_d = np.asarray(s.posterior.weights), np.asarray(d.posterior.weights)
    assert np.abs(w_d - w_s).max() <= 1e-6 * np.abs(w_s).max()
    frames = read_frames(train)
    assert_same_predictions(s.predict(frames), d.predict(frames), 1e-8)
    _, preds = predict_file(s, train, client, batch_atoms=64)
    assert_same_predictions(s.predict(read_frames(train, require=())), preds, 1e-10)


def test_predict_equals_serial(fits: tuple[GAP, GAP], train: Path, client) -> None:
    model = fits[0].model_
    frames, preds = predict_file(model, train, client, batch_atoms=64)
    ref_frames = read_frames(train, require=())
    assert [f.where for f in frames] == [f.where for f in ref_frames]
    assert_same_predictions(model.predict(ref_frames, batch_atoms=64), preds, 1e-10)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU affinity needs Linux and at least 2 cores",
)
def test_local_workers_are_pinned_to_disjoint_cores(client) -> None:
    # every thread of each worker, including those its JAX computations started
    def affinity() -> list[set[int]]:
        import jax.numpy as jnp

        jnp.ones((200, 200)) @ jnp.ones((200, 200))
        tasks = os.listdir("/proc/self/task")
        return [os.sched_getaffinity(int(t)) for t in tasks]

    per_worker = list(client.run(affinity).values())
    assert len(per_worker) == 2
    cores = []
    for threads in per_worker:
        assert all(t == threads[0] for t in threads)  # one mask for the process
        cores.append(threads[0])
    assert cores[0] and cores[1] and not cores[0] & cores[1]
    assert cores[0] | cores[1] <= os.sched_getaffinity(0)


def test_local_workers_allocate_gpu_memory_as_they_go(client) -> None:
    # JAX's default (75 % of a GPU's memory per process) lets only one worker run
    def setting() -> str | None:
        return os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")

    expected = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    assert list(client.run(setting).values()) == [expected, expected]


def test_a_users_gpu_memory_setting_is_left_to_the_workers(monkeypatch) -> None:
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert worker_env() == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.3")
    assert worker_env() == {}  # inherited as set


def test_fps_is_refused_on_a_cluster(train: Path, client) -> None:
    gap = GAP(soap=SOAP.replace("cur_points", "fps"))
    with pytest.raises(GapfitError, match="fps"):
        gap.fit(train, client=client)
    gap = GAP(soap=SOAP + " config_type_n_sparse=bulk:5")
    with pytest.raises(GapfitError, match="config_type_n_sparse is not offered"):
        gap.fit(train, client=client)


def test_cli_fit_and_predict_on_dask(fits, train: Path, client, tmp_path: Path) -> None:
    model = tmp_path / "model.npz"
    fit = invoke(
        *("fit", "--at-file", train, "--gp-file", model),
        *("--soap", SOAP, "--soap", SHORT_SOAP),
        *("--distance-2b", PAIR, "--distance-2b", SHORT_PAIR),
        *("--chunk-atoms", 64, "--rnd-seed", 3, "--quiet"),
        *("--dask-workers", 2),
    )
    assert fit.exit_code == 0, (fit.output, fit.exception)
    assert "dask: 2 workers" in fit.output and "worker peak RSS" in fit.output
    w = np.asarray(Model.load(model).posterior.weights)
    w_serial = np.asarray(fits[0].model_.posterior.weights)
    assert np.abs(w - w_serial).max() <= 1e-8 * np.abs(w_serial).max()

    out = tmp_path / "pred.xyz"
    address = client.scheduler.address
    args = ("predict", "--gp-file", model, train, "-o", out, "--no-std")
    pred = invoke(*args, "--dask-scheduler", address)
    assert pred.exit_code == 0, (pred.output, pred.exception)
    written = ase.io.read(out, ":")
    ref = Model.load(model).predict(read_frames(train, require=()))
    energies = [a.get_potential_energy() for a in written]
    np.testing.assert_allclose(energies, [r["energy"] for r in ref], rtol=0, atol=1e-8)


class _Unpicklable(EMT):
    """EMT holding a lock: pickle refuses it, as it does many C-backed calculators."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def test_learn_labels_on_the_cluster_as_here(client, tmp_path: Path) -> None:
    """A pool run whose batches are labelled on the workers (the CLI's
    --dask-scheduler), each structure in its own directory, picks, labels and fits
    exactly as the run labelled here."""
    from emt_cells import SOAP as LEARN_SOAP
    from emt_cells import cu_cells

    from gapfit.learn import learn_pool

    pool = cu_cells(8, seed=5, labelled=False)
    run = {"n_seed": 2, "batch_size": 2, "budget": 4, "progress": False}
    gap = GAP(soap=LEARN_SOAP, e0_method="average")
    here = learn_pool(tmp_path / "here", "emt", pool, gap, **run)
    with pytest.raises(GapfitError, match="cannot be sent to the dask workers"):
        learn_pool(tmp_path / "lock", _Unpicklable(), pool, gap, client=client, **run)

    pool_file = tmp_path / "pool.xyz"
    ase.io.write(pool_file, pool)
    address = client.scheduler.address
    result = invoke(
        "learn", "--pool", pool_file, "--labeller", "emt", "--soap", LEARN_SOAP,
        "--e0-method", "average", "--n-seed", 2, "--batch-size", 2, "--budget", 4,
        "--workdir", tmp_path / "there", "--quiet", "--dask-scheduler", address,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    there = ase.io.read(tmp_path / "there" / "labelled.xyz", ":")
    sources = [a.info["source"] for a in here.labelled]
    assert [a.info["source"] for a in there] == sources
    for a, b in zip(here.labelled, there, strict=True):
        assert a.get_potential_energy() == pytest.approx(
            b.get_potential_energy(), 1e-12
        )
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-12)
    dirs = sorted(p.name for p in (tmp_path / "there" / "labels").iterdir())
    assert dirs == sorted(s.replace(":", "_") for s in sources)
    model = Model.load(tmp_path / "there" / "model.npz")
    p, q = (m.predict(pool[-2:]) for m in (here.model, model))
    for a, b in zip(p, q, strict=True):
        assert abs(a["energy"] - b["energy"]) < 1e-9


def test_fit_survives_a_killed_worker(fits, train: Path, client) -> None:
    # last of the tests on the module's cluster: it leaves one worker (the nanny
    # restarts the other in the background)
    victim = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    killed, done = threading.Event(), threading.Event()

    def kill_during_solve() -> None:
        while not done.is_set():
            busy = client.processing(workers=[victim]).get(victim, ())
            if any(str(key).startswith("_solve") for key in busy):
                os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of a task
                killed.set()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_during_solve)
    watcher.start()
    try:
        again = GAP(**SETTINGS).fit(train, client=client)
    finally:
        done.set()
        watcher.join()
    assert killed.is_set()
    w, w_again = (np.asarray(g.model_.posterior.weights) for g in (fits[1], again))
    assert np.abs(w_again - w).max() <= 1e-8 * np.abs(w).max()
    np.testing.assert_array_equal(
        again.model_.term("soap").sparse_X, fits[1].model_.term("soap").sparse_X
    )


def test_unreachable_scheduler_is_a_clear_error(train: Path, tmp_path: Path) -> None:
    with pytest.raises(GapfitError, match="could not reach the dask scheduler"):
        with dask_client("tcp://127.0.0.1:9", timeout=0.5):
            pass
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        result = invoke(
            *("fit", "--at-file", train, "--gp-file", tmp_path / "m.npz"),
            *("--dask-scheduler", "tcp://127.0.0.1:9"),
        )
    assert result.exit_code == 2
    assert "Error: could not reach the dask scheduler at tcp://127.0.0.1:9" in (
        result.output
    )
    assert not (tmp_path / "m.npz").exists()
