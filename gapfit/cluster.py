"""A dask cluster for gapfit: the client, shares of an extxyz file, predictions.

``dask_client`` connects to a running scheduler or starts a local cluster of worker
processes (one thread each; on Linux each is pinned to its own share of this
process's cores, so that XLA's thread pools do not oversubscribe them). Work on a
file is split into *shares*: consecutive configurations, read by a worker itself with
``read_frames(path, index="a:b")`` (the file must be readable at the same path on
every worker), made of the serial fit's chunks (``model.chunk_indices``).
``predict_file`` predicts a file share by share and gathers the frames and
predictions in file order. The fit is ``gapfit.distributed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from dask.distributed import Client, LocalCluster

from gapfit.data import Frame, LabelKeys, check_species, config_sizes, read_frames
from gapfit.errors import GapfitError
from gapfit.model import Model, chunk_indices
from gapfit.soap import SoapSpec

RETRIES = 2  # reruns of a task that raised (a lost worker's tasks are rerun anyway)
SHARES_PER_WORKER = 2  # smaller shares: better balance and cheaper reruns, more reads


@contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    timeout: float | None = None,
) -> Iterator[Client]:
    """A dask client of the scheduler at ``scheduler`` (``tcp://host:8786``), or of a
    new local cluster of ``n_workers`` processes (one thread each); closed on exit.

    Args:
        timeout: seconds to wait for the scheduler (default: dask's
            ``distributed.comm.timeouts.connect``).

    Raises:
        GapfitError: both or neither given, or the scheduler cannot be reached.
    """
    if bool(scheduler) == bool(n_workers):
        raise GapfitError(
            "give either a dask scheduler address (--dask-scheduler tcp://host:8786) "
            "or a number of local worker processes (--dask-workers N), not both."
        )
    if scheduler:
        wait = {} if timeout is None else {"timeout": timeout}
        try:
            client = Client(scheduler, set_as_default=False, **wait)
        except (OSError, TimeoutError) as err:
            raise GapfitError(
                f"could not reach the dask scheduler at {scheduler} ({err}). Check "
                f"the address, start one (`dask scheduler`, then `dask worker "
                f"{scheduler}` on each machine), or use --dask-workers N for worker "
                "processes on this machine."
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if n_workers < 1:
        raise GapfitError(f"--dask-workers {n_workers}: give at least 1 worker.")
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        env=worker_env(),
    )
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(n_workers)
        pin_workers(client)
        yield client
    finally:
        client.close()
        cluster.close()


def worker_env() -> dict[str, str]:
    """Environment of local worker processes: on a GPU, JAX would take 75 % of the
    device's memory in each process (the second worker then runs out), so local
    workers allocate as they go unless the user set ``XLA_PYTHON_CLIENT_PREALLOCATE``
    or ``XLA_PYTHON_CLIENT_MEM_FRACTION`` themselves."""
    keys = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")
    if any(k in os.environ for k in keys):
        return {}
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def pin_threads(cores: Sequence[int]) -> None:
    """Restrict every thread of this process to ``cores`` (Linux; nothing elsewhere).

    Threads started later inherit the mask, and XLA sizes its CPU thread pool by the
    schedulable cores when it starts, so a worker pinned before its first JAX call
    runs ``len(cores)`` compute threads instead of one per core of the machine.
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # the thread ended meanwhile
            pass


def pin_workers(client: Client) -> None:
    """Pin the workers of a local cluster to disjoint shares of this process's cores
    (round robin; shared when there are more workers than cores; nothing where
    affinity is not available).

    A worker that dask restarts after a crash runs unpinned: slower where the cores
    are oversubscribed, never wrong."""
    if not hasattr(os, "sched_getaffinity"):
        return
    workers = sorted(client.scheduler_info()["workers"])
    cores = sorted(os.sched_getaffinity(0))
    shares = {
        w: cores[k :: len(workers)] or [cores[k % len(cores)]]
        for k, w in enumerate(workers)
    }
    for w, share in shares.items():
        client.run(pin_threads, share, workers=[w])


def host_constants(specs: Iterable[object]) -> None:
    """Compute the SOAP specs' constants in this process, before the specs travel.

    They come from LAPACK (``scipy.linalg.sqrtm``), whose last bits depend on the BLAS
    thread count (dask's nanny sets OMP/OPENBLAS_NUM_THREADS=1): computed here and
    pickled with the specs, they give the workers the descriptors of a serial run to
    the bit, and so the same rounded keys and leverage scores.
    """
    for spec in specs:
        if isinstance(spec, SoapSpec):
            spec.constants  # noqa: B018  (a cached property: computed once, here)


def n_workers(client: Client) -> int:
    """Workers of the cluster, waiting up to 30 s for a first one to join."""
    if not client.scheduler_info()["workers"]:
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            raise GapfitError(
                "the dask cluster has no workers (none joined within 30 s); start "
                "some with `dask worker <scheduler address>`."
            ) from None
    return len(client.scheduler_info()["workers"])


@dataclass(frozen=True)
class Share:
    """Configurations ``start:stop`` of a file in chunks (config indices relative to
    ``start``); its environments are atoms ``atom_start:atom_start + n_atoms``."""

    start: int
    stop: int
    chunks: tuple[tuple[int, ...], ...]
    atom_start: int
    n_atoms: int

    def within(
        self, rows: np.ndarray, offset: int = 0, n: int | None = None
    ) -> np.ndarray:
        """Sorted global atom ``rows`` in this share's atoms ``offset:offset + n``,
        as indices relative to ``offset``."""
        lo = self.atom_start + offset
        hi = self.atom_start + (self.n_atoms if n is None else offset + n)
        return rows[np.searchsorted(rows, lo) : np.searchsorted(rows, hi)] - lo


def plan_shares(sizes: Sequence[int], chunk_atoms: int, n_shares: int) -> list[Share]:
    """The serial fit's chunks (``chunk_indices(sizes, chunk_atoms)``) in at most
    ``n_shares`` consecutive groups of about equal numbers of atoms."""
    chunks = chunk_indices(sizes, chunk_atoms)
    atoms = np.array([sum(sizes[k] for k in c) for c in chunks])
    before = np.cumsum(atoms) - atoms  # atoms before each chunk
    owner = before * n_shares // max(int(atoms.sum()), 1)
    shares = []
    for s in np.unique(owner):
        group = [chunks[i] for i in np.flatnonzero(owner == s)]
        first = group[0][0]
        shares.append(
            Share(
                start=first,
                stop=group[-1][-1] + 1,
                chunks=tuple(tuple(k - first for k in c) for c in group),
                atom_start=int(sum(sizes[:first])),
                n_atoms=int(sum(sizes[k] for c in group for k in c)),
            )
        )
    return shares


def _predict(
    model: Model,
    path: str,
    share: Share,
    keys: LabelKeys,
    require: tuple[str, ...],
    std: bool | str,
    batch_atoms: int,
) -> tuple[list[Frame], list[dict]]:
    frames = read_frames(path, keys, require, index=f"{share.start}:{share.stop}")
    check_species(frames, model.species)
    wheres = [f.where for f in frames]
    return frames, model.predict(
        frames, std=std, wheres=wheres, batch_atoms=batch_atoms
    )


def predict_file(
    model: Model,
    path: str | os.PathLike,
    client: Client,
    keys: LabelKeys = LabelKeys(),
    require: tuple[str, ...] = (),
    std: bool | str = False,
    batch_atoms: int = 2048,
) -> tuple[list[Frame], list[dict]]:
    """``read_frames(path, keys, require)`` and ``model.predict(frames, std)`` of an
    extxyz file, each worker reading and predicting consecutive configurations;
    frames and predictions come back in file order."""
    path = os.path.abspath(path)
    shares = plan_shares(
        config_sizes(path), batch_atoms, SHARES_PER_WORKER * n_workers(client)
    )
    host_constants(t.spec for t in model.terms)
    shared = client.scatter(model, broadcast=True, hash=False)
    parts = client.gather(
        [
            client.submit(
                _predict,
                shared,
                path,
                s,
                keys,
                require,
                std,
                batch_atoms,
                pure=False,
                retries=RETRIES,
            )
            for s in shares
        ]
    )
    return [f for p in parts for f in p[0]], [r for p in parts for r in p[1]]
