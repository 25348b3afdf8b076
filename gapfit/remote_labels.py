"""Labels on a dask cluster: an active-learning step's structures labelled at once.

Labelling (DFT, tight binding) is what an active-learning run spends its time on, and
a pool step's batch of structures are independent. ``label_on_cluster`` sends each to
a worker of a ``dask.distributed`` client (``gapfit.cluster.dask_client``: a local
cluster's workers are pinned to disjoint cores) and yields the results as they
finish. A named labeller (``emt``, ``module:Class`` with keyword arguments) is built
once per worker thread; a calculator object travels as dask serialises it (one that
cannot be is refused). Each structure is labelled in its own directory
``<directory>/<source>`` (the calculator's ``directory``, for calculators that write
files), so concurrent labels never share input or output files.
``gapfit.labeller.label`` does the labelling, so failures are the same
``LabelFailure``s as in one process; a worker that dies is retried by
dask, and one that keeps dying fails that structure only.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ase
from ase.calculators.calculator import BaseCalculator
from dask.distributed import Client, as_completed

from gapfit.cluster import RETRIES
from gapfit.errors import GapfitError
from gapfit.labeller import LabelFailure, label, named_calculator

Labeller = tuple[str | BaseCalculator, dict[str, Any] | None]  # spec, kwargs


def _label_task(
    labeller: Labeller, atoms: ase.Atoms, directory: str
) -> tuple[ase.Atoms | LabelFailure, float]:
    """One structure's label (or failure) and its wall time in s, on a worker."""
    spec, kwargs = labeller  # a name is built once per worker thread
    calc = named_calculator(spec, kwargs) if isinstance(spec, str) else spec
    with contextlib.suppress(AttributeError):  # no (settable) directory: no files
        calc.directory = directory
    t0 = time.perf_counter()
    result = label(calc, atoms)
    return result, time.perf_counter() - t0


def label_directory(root: Path, source: str) -> str:
    """The directory of one structure's label: ``root/<source>``, with characters
    other than letters, digits, ``.``, ``_`` and ``-`` as ``_``."""
    return str(root / re.sub(r"[^A-Za-z0-9._-]", "_", source))


def label_on_cluster(
    client: Client,
    labeller: Labeller,
    todo: Sequence[tuple[int, ase.Atoms, str]],
    root: Path,
) -> Iterator[tuple[int, ase.Atoms | LabelFailure, float]]:
    """Label ``todo`` (index, structure, source) on the workers of ``client``, each
    in ``label_directory(root, source)``; yields ``(index, labelled copy or
    LabelFailure, seconds)`` in the order they finish.

    Raises:
        GapfitError: a labeller object that dask cannot serialise, or a named
            labeller that a worker cannot build (e.g. its module is not installed
            there).
    """
    try:  # dask serialises the arguments here
        futures = {
            client.submit(
                _label_task,
                labeller,
                atoms,
                label_directory(root.absolute(), source),
                pure=False,
                retries=RETRIES,
            ): k
            for k, atoms, source in todo
        }
    except TypeError as err:  # "Could not serialize object ..."
        raise GapfitError(
            f"the labeller {type(labeller[0]).__name__} cannot be sent to the dask "
            f"workers ({err}); name it instead (--labeller module:Class with "
            "--labeller-kwargs, or labeller='module:Class' with labeller_kwargs=...), "
            "or label without dask."
        ) from None
    for future in as_completed(futures, loop=client.loop):
        try:
            result, seconds = future.result()
        except GapfitError:  # the labeller itself: every structure would fail
            for f in futures:
                f.cancel()
            raise
        except Exception as err:  # a worker that kept dying, lost connection, ...
            result = LabelFailure(f"on the dask cluster: {type(err).__name__}: {err}")
            seconds = 0.0
        yield futures[future], result, round(seconds, 4)
