"""gap_fit run live, side by side with gapfit: the same data, recipe and machine.

Needs PyPI ``quippy-ase`` (the ``gap_fit`` binary and ``quippy.potential.Potential``,
an ASE calculator); ``bench_fit.py --peer`` uses it. The recipe is the gap_fit command
of shared/bench/peers.md (2-body + SOAP, or SOAP only), with the SOAP ``n_sparse``
given.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path


def gap_fit_command(
    train: Path, gp_file: Path, n_sparse: int, no_2b: bool = False
) -> list[str]:
    """gap_fit's argument list for the benchmark recipe."""
    soap = (
        "soap cutoff=5.0 cutoff_transition_width=1.0 n_max=8 l_max=6 atom_sigma=0.5 "
        "zeta=4 delta=1.0 covariance_type=dot_product sparse_method=cur_points "
        f"n_sparse={n_sparse} add_species=T"
    )
    pair = (
        "distance_2b cutoff=5.0 cutoff_transition_width=1.0 covariance_type=ard_se "
        "delta=1.0 theta_uniform=1.0 sparse_method=uniform n_sparse=20 add_species=T"
    )
    gap = soap if no_2b else f"{pair} : {soap}"
    return [
        "gap_fit",
        f"at_file={train}",
        f"gap={{{gap}}}",
        "default_sigma={0.001 0.05 0.05 0.0}",
        "sparse_jitter=1.0e-8",
        "e0_method=isolated",
        "energy_parameter_name=energy",
        "force_parameter_name=forces",
        "virial_parameter_name=virial",
        "config_type_parameter_name=config_type",
        "do_copy_at_file=F",
        "sparse_separate_file=T",
        "rnd_seed=1",
        f"gp_file={gp_file}",
    ]


def fit(
    train: Path, workdir: Path, n_sparse: int, no_2b: bool = False
) -> dict[str, float | str]:
    """Run gap_fit; returns ``gp_file``, ``fit_s`` (wall, s) and ``rss_gb`` (peak
    RSS of the gap_fit process, GiB, from GNU time when present, else the
    children's rusage)."""
    if shutil.which("gap_fit") is None:
        raise SystemExit("--peer needs gap_fit: pip install quippy-ase")
    workdir = workdir.resolve()  # gap_fit and GNU time run inside it
    workdir.mkdir(parents=True, exist_ok=True)
    # a copy: gap_fit writes an index (train.xyz.idx) beside the file it reads
    local = workdir / "train.xyz"
    shutil.copyfile(train, local)
    gp_file = workdir / "gap.xml"
    cmd = gap_fit_command(local, gp_file, n_sparse, no_2b)
    time_file = workdir / "gap_fit.time"
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        cmd = [str(gnu_time), "-f", "%M", "-o", str(time_file), *cmd]
    log = workdir / "gap_fit.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=os.environ
        )
    fit_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"gap_fit failed (exit {done.returncode}); see {log}")
    if time_file.exists():
        kib = float(time_file.read_text().split()[-1])
    else:
        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"gp_file": str(gp_file), "fit_s": fit_s, "rss_gb": kib / 1024**2}


def calculator(gp_file: str, variance: bool = False):
    """quippy's ASE calculator of a gap_fit model; with ``variance`` it also computes
    gap_fit's only uncertainty, the per-atom ``local_gap_variance`` (eV^2)."""
    from quippy.potential import Potential

    args = {"calc_args": "local_gap_variance"} if variance else {}
    return Potential(param_filename=gp_file, **args)
