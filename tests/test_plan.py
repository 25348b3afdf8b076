"""The dry run: plan fields agree with direct counts, memory follows the model's
terms, nothing is computed, and ``gapfit fit --dry-run`` writes nothing."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from click.testing import CliRunner, Result

import gapfit.kernels
import gapfit.soap
from gapfit import GAP, GapfitError
from gapfit.cli import main
from gapfit.model import chunk_indices
from gapfit.neighbours import bucket, make_batch
from gapfit.plan import COMPILE_S, FIXED_S

SOAP = "cutoff=4.0 cutoff_transition_width=1.0 n_max=3 l_max=2 n_sparse=30"
PAIR = "cutoff=4.0 cutoff_transition_width=1.0 delta=1.0 theta_uniform=1.0 n_sparse=8"


def labelled(atoms: Atoms, config_type: str = "bulk") -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    atoms.info["config_type"] = config_type
    return atoms


def cu_cell(rng: np.random.Generator, repeat: int) -> Atoms:
    """A strained, rattled cubic fcc Cu cell (4 repeat^3 atoms)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    eps = rng.normal(0.0, 0.02, (3, 3))
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True
    )
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    rng = np.random.default_rng(3)
    isolated = Atoms("Cu", positions=[[10.0, 10.0, 10.0]], cell=[20.0] * 3, pbc=True)
    out = [labelled(isolated, "isolated_atom")]
    out += [labelled(cu_cell(rng, 2 if k % 3 else 3)) for k in range(8)]
    return out


@pytest.fixture(scope="module")
def train(frames, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "train.xyz"
    ase.io.write(path, frames)
    return path


def invoke(*args: str) -> Result:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def test_counts_match_a_direct_count(frames, train):
    plan = GAP(soap=SOAP, distance_2b=PAIR, chunk_atoms=200).plan(train)
    assert plan.n_configs == len(frames)
    assert plan.n_atoms == sum(len(a) for a in frames)
    # reference: ASE's own neighbour list (full list, periodic images), not vesin
    assert plan.n_pairs == sum(len(neighbor_list("i", a, 4.0)) for a in frames)
    assert plan.n_sparse == {"distance_2b": 8, "soap": 30}
    assert plan.M == 38
    assert plan.n_features == 3 * 4 // 2 * 3  # (S N)(S N + 1)/2 (L + 1)

    chunks = chunk_indices([len(a) for a in frames], 200)
    shapes = set()
    for c in chunks:
        b = make_batch([frames[k] for k in c], (29,), 4.0)
        shapes.add((len(b.species), len(b.D), len(b.config_mask)))
    # the fit pads every chunk to the elementwise largest shape (one compilation)
    common = tuple(max(s[k] for s in shapes) for k in range(3))
    assert plan.n_chunks == len(chunks)
    assert plan.chunk_shapes == (common,)
    assert plan.largest_chunk == common


def test_a_soap_term_of_one_element_counts_its_own_pairs(frames):
    """A SOAP term of Au centres runs over the pairs out of Au atoms alone, in
    tables of one slot per Au atom as wide as the most pairs out of one
    (``terms.row_pairs``): the plan counts those pairs (as ASE's neighbour list
    does) and its per-pair work for the padded tables. The training errors' time
    less the descriptors' (the measured neighbour-list time cancels; the compile
    and per-chunk allowances are the same) scales with that work, so against a
    term over every centre (all pairs, padded) it is in the ratio of the two."""
    rng = np.random.default_rng(5)
    cells = [f.copy() for f in frames[1:4]]
    for at in cells:
        at.numbers[rng.choice(len(at), len(at) // 4, replace=False)] = 79
    cells = [labelled(at) for at in cells]
    au = SOAP + " add_species=F n_species=2 species_Z={29 79} Z=79"
    plans = [
        GAP(soap=s, e0_method="average", chunk_atoms=10**6).plan(cells)
        for s in (au, SOAP)
    ]
    assert [len(p.chunk_shapes) for p in plans] == [1, 1]  # one chunk
    centres = [at.numbers[neighbor_list("i", at, 4.0)] for at in cells]
    out_of_au = [
        np.bincount(neighbor_list("i", at, 4.0)[c == 79]).max()
        for at, c in zip(cells, centres, strict=True)
    ]
    n_au = sum(int(np.sum(at.numbers == 79)) for at in cells)
    everything = np.concatenate(centres)
    assert plans[0].own_pairs == {"soap": int(np.sum(everything == 79))}
    assert plans[1].own_pairs == {} and plans[1].n_pairs == len(everything)
    assert "pairs of soap" in plans[0].table()
    padded = bucket(n_au, 1) * bucket(max(out_of_au), 4)
    LM = 3**2  # l_max 2
    fixed = LM * (COMPILE_S["mean"] - COMPILE_S["descriptors"]) + FIXED_S["chunk"]
    work = [
        p.stage_seconds["training_errors"] - p.stage_seconds["descriptors"] - fixed
        for p in plans
    ]
    all_pairs = plans[1].largest_chunk[1]
    assert padded < all_pairs
    assert work[0] == pytest.approx(padded / all_pairs * work[1], rel=1e-9)


def test_frames_in_memory_give_the_same_plan(frames, train):
    gap = GAP(soap=SOAP, distance_2b=PAIR, chunk_atoms=200)
    a, b = gap.plan(train), gap.plan(frames)
    assert (a.n_pairs, a.chunk_shapes, a.peak_bytes) == (
        b.n_pairs,
        b.chunk_shapes,
        b.peak_bytes,
    )


def test_soap_sparse_points_are_bounded_by_the_atoms(train):
    plan = GAP(soap=SOAP.replace("n_sparse=30", "n_sparse=100000")).plan(train)
    assert plan.n_sparse == {"soap": plan.n_atoms}


def test_breakdown_adds_up_and_stages_never_decrease(train):
    plan = GAP(soap=SOAP, distance_2b=PAIR).plan(train)
    assert sum(plan.breakdown.values()) == pytest.approx(plan.peak_bytes, abs=8)
    stages = list(plan.stage_bytes.values())
    assert stages == sorted(stages)
    assert stages[-1] == plan.peak_bytes
    assert plan.seconds == pytest.approx(sum(plan.stage_seconds.values()))
    assert plan.seconds > 0


def test_memory_grows_with_n_sparse(train):
    small, large = (
        GAP(soap=SOAP.replace("n_sparse=30", f"n_sparse={m}"), chunk_atoms=200).plan(
            train
        )
        for m in (20, 200)
    )
    assert large.M == 200 > small.M == 20
    # O(M^2) factors and the (B, 3, M), (A, 3, M) rows of the solve grow with M;
    # nothing that depends on the chunks alone changes
    assert large.peak_bytes > small.peak_bytes
    assert large.stage_bytes["solve"] > small.stage_bytes["solve"]
    assert large.stage_bytes["descriptors"] == small.stage_bytes["descriptors"]


def test_memory_grows_with_chunk_atoms(train):
    small, large = (GAP(soap=SOAP, chunk_atoms=n).plan(train) for n in (100, 1000))
    assert large.n_chunks < small.n_chunks
    assert large.largest_chunk[1] > small.largest_chunk[1]  # more pairs per chunk
    # the peak is the training errors' mean program (compiled last), whose buffers
    # grow with the pairs of the largest chunk (fewer distinct chunk shapes may keep
    # less compiled code, so the total need not grow)
    key = "training_errors transient"
    assert small.peak_stage == large.peak_stage == "training_errors"
    assert large.breakdown[key] > 1.5 * small.breakdown[key]


def test_plan_computes_no_descriptor_or_kernel(train, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the plan computed a descriptor or kernel")

    for name in ("coefficients", "power_spectrum", "soap"):
        monkeypatch.setattr(gapfit.soap, name, forbidden)
    monkeypatch.setattr(gapfit.kernels, "kernel_block", forbidden)
    plan = GAP(soap=SOAP, distance_2b=PAIR).plan(train)
    assert plan.peak_bytes > 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"soap": SOAP + " sparse_method=kmeans"}, ["kmeans"]),
        ({"soap": SOAP.replace("n_max=3", "n_mx=3")}, ["n_mx"]),
        ({"soap": SOAP, "default_sigma": (0.001, 0.05)}, ["default_sigma"]),
    ],
)
def test_plan_validates_the_settings(train, kwargs, words):
    with pytest.raises(GapfitError) as err:
        GAP(**kwargs).plan(train)
    for word in words:
        assert word in str(err.value)


def test_plan_refuses_a_2_body_term_without_pairs(tmp_path):
    far = Atoms("Cu2", positions=[[0, 0, 0], [9, 9, 9]], cell=[20.0] * 3, pbc=True)
    with pytest.raises(GapfitError, match="no pair of atoms closer"):
        GAP(distance_2b=PAIR, e0_method="average").plan([labelled(far)])


def test_cli_dry_run_prints_the_plan_and_writes_nothing(train, tmp_path):
    model = tmp_path / "model.npz"
    result = invoke(
        "fit",
        "--at-file",
        train,
        "--gp-file",
        model,
        "--soap",
        SOAP,
        "--distance-2b",
        PAIR,
        "--dry-run",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    for words in ("configs", "atoms", "pairs", "sparse points soap", "chunks"):
        assert words in result.output
    assert "predicted peak RSS" in result.output
    assert "predicted wall time" in result.output
    assert not model.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_with_gap_fit_arguments(train, tmp_path):
    model = tmp_path / "gap.xml"
    result = invoke(
        "fit",
        f"at_file={train}",
        f"gp_file={model}",
        "gap={soap cutoff=4.0 n_max=3 l_max=2 n_sparse=30}",
        "--dry-run",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "predicted peak RSS" in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_fails_cleanly_on_bad_data(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("not an xyz file\n")
    result = invoke(
        "fit", "--at-file", bad, "--gp-file", tmp_path / "m.npz", "--dry-run"
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("Error: ")
    assert not (tmp_path / "m.npz").exists()


def test_fit_records_peak_rss_per_stage(frames, tmp_path):
    model = tmp_path / "model.npz"
    train = tmp_path / "train.xyz"
    ase.io.write(train, frames[:4])
    result = invoke(
        "fit",
        "--at-file",
        train,
        "--gp-file",
        model,
        "--soap",
        "cutoff=3.0 cutoff_transition_width=1.0 n_max=2 l_max=1 n_sparse=10",
        "--quiet",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    line = next(s for s in result.output.splitlines() if s.startswith("peak RSS:"))
    for stage in ("read", "descriptors", "sparsify", "solve", "training_errors"):
        assert f"{stage} " in line
    info = invoke("info", "--gp-file", model)
    assert "fit peak RSS:" in info.output
