"""One active-learning run, shared by pool mode (``gapfit.pool_mode``) and on-the-fly
mode (``gapfit.otf_mode``).

A ``Learner`` holds one run (labelled frames, the model, the log, the learning curve)
and checkpoints it after every step in a work directory (``gapfit.workdir``), so that
``resume`` continues after a kill. Every frame is predicted (mean and DTC stds) just
before it is labelled; that held-out prediction is kept with it (``gapfit.heldout``),
and the saved ``model.npz`` carries the std calibration (``gapfit.calibration``)
fitted to those of models of at least ``SCALE_MIN_FRAMES`` labels, so that the run's
model predicts calibrated stds; the loop itself works with the DTC stds. Labels come
from any ASE calculator (``gapfit.labeller``); a structure it fails on is skipped with
the reason in the log.

The model is a sparse GAP with the settings of a ``GAP`` (one or more SOAP terms and
optional 2-body terms, each over every element or one, as gap_fit's per-element ``Z=``
and per-pair ``Z1``/``Z2`` terms; an optional 3-body term; sigmas, jitter). e0 comes
from the first labelled frames (``e0_method`` average, least_squares, explicit ``e0``,
or isolated: the labeller then labels one isolated atom per element first, and if it
fails on one, e0 is by average, logged); each 2-body term's sparse points are chosen
from the first frames as in ``GAP.fit`` and spread again over all labelled distances
whenever a label widens their range (``sparse_set.widened_pairs``; then a full refit),
3-body ones likewise chosen again among all labelled triplets
(``sparse_set.widened_triplets``). Each SOAP term's sparse set grows from the labelled
frames' environments that it covers, at most ``sparse_per_label`` per labelled frame and
its ``n_sparse`` per element: in pool mode those that most lower the labelled
structures' force-component residual variances, until none is above
``sparse_force_std^2`` (with several SOAP terms, each term's residual above its even
share of it; ``sparse_set.force_sparse``; ``gapfit.pool_mode``), or with it None, and
for the start structure on the fly, those of largest local-energy Nyström residual
(``sparse_set.choose_sparse``), each above ``sparse_tol delta^2``; on the fly those that
bring the labelled frame's force-component residual stds, times the std scale ``a`` of
``gapfit.otf_mode``, to ``SPARSE_STD_TARGET x std_threshold``
(``sparse_set.force_sparse``: the force stds are nearly all residual there, which labels
cannot lower). Each term's set is held at its capacity by padding, so the kernels
compile once per run. New frames are folded into the QR factor (``update.update``)
unless sparse points were added, or every ``refit_every`` labels (counted whatever
refits new sparse points forced; the first after 4, 8, 16, ... labels,
``Learner._refit_interval``), by a full refit (``update.refit``); both give the same
model to rounding. With the ``GAP``'s ``optimise_hyperparameters``, each of those
scheduled refits also re-chooses every term's delta and the sigmas by the evidence on
all labelled frames (``update.reoptimised``, starting from the current values).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.data
import ase.io
import numpy as np
from ase.calculators.calculator import BaseCalculator

from gapfit import heldout
from gapfit.calibration import (
    MIN_CONFIGS,
    Calibration,
    describe,
    with_calibration,
    without_calibration,
)
from gapfit.crossval import ISOLATED, calibrate_cv
from gapfit.curve import curve_csv, format_curve, plot_curve, test_errors
from gapfit.data import Frame, atomic_number, frames_from_atoms
from gapfit.errors import GapfitError
from gapfit.fit import GAP, term_specs
from gapfit.hyperparameters import optimise_mode
from gapfit.labeller import LabelFailure, label, make_labeller, parse_kwargs
from gapfit.model import Model, atomic_write
from gapfit.neighbours import NO_SHAPE
from gapfit.selection import Environments, covers, soap_terms, unit_soap
from gapfit.sparse_set import (
    PAD,
    capacities,
    choose_sparse,
    compact,
    force_sparse,
    padded,
    prior_model,
    widened_pairs,
    widened_triplets,
    with_sparse,
)
from gapfit.update import refit, reoptimised, update
from gapfit.workdir import Workdir, read_xyz_text, xyz_text

if TYPE_CHECKING:  # dask is imported only where labels go to a cluster
    from dask.distributed import Client

GAP_KEYS = (
    "soap",
    "distance_2b",
    "angle_3b",
    "default_sigma",
    "config_type_sigma",
    "sigma_per_atom",
    "e0",
    "e0_method",
    "sparse_jitter",
    "rnd_seed",
    "descriptor_backend",
    "baseline",
    "baseline_kwargs",
    "optimise_hyperparameters",
)
Callback = Callable[[dict], None]
SCALE_MIN_FRAMES = 3  # held-out frames before the std scale may shrink
EXTENDABLE = {"otf": ("steps", "budget"), "pool": ("budget", "target_std")}
MODE_NAMES = {"otf": "on-the-fly", "pool": "pool-mode"}
CV_FOLDS = 5  # folds of the final model's cross-validated calibration


def gap_settings(gap: GAP | None) -> dict:
    """The JSON-able settings of a ``GAP`` (its ``__init__`` arguments that shape the
    model); defaults for active learning: e0 from the average energy per atom."""
    gap = gap if gap is not None else GAP(e0_method="average")
    out = {k: getattr(gap, k) for k in GAP_KEYS if hasattr(gap, k)}
    out["default_sigma"] = [float(x) for x in out["default_sigma"]]
    out["config_type_sigma"] = {
        k: [float(x) for x in v] for k, v in (out["config_type_sigma"] or {}).items()
    }
    if out["e0"] is not None:
        out["e0"] = {str(atomic_number(z)): float(v) for z, v in out["e0"].items()}
    return out


def _gap(settings: dict) -> GAP:
    kwargs = dict(settings)
    if kwargs.get("e0") is not None:
        kwargs["e0"] = {int(z): v for z, v in kwargs["e0"].items()}
    return GAP(**kwargs)


def read_structures(source: str | os.PathLike | Sequence[ase.Atoms], what: str) -> list:
    """Structures from a file (any ASE format) or a sequence of Atoms; ``what``
    names them in error messages."""
    if isinstance(source, str | os.PathLike):
        if not Path(source).is_file():
            raise GapfitError(f"{what} file {source} does not exist; check the path.")
        try:
            images = ase.io.read(source, index=":")
        except Exception as err:  # ASE's readers raise many types on bad input
            raise GapfitError(
                f"{what} file {source} could not be read ({type(err).__name__}: "
                f"{err}); give extxyz or another ASE-readable format."
            ) from None
        return list(images)
    images = list(source)
    if not images:
        raise GapfitError(f"the {what} is empty; give at least one structure.")
    return images


class Learner:
    """One active-learning run: labelled frames, model, log and learning curve,
    checkpointed in a work directory (see the module docstring).

    Attributes:
        model: the current model (SOAP sparse set padded to capacity; ``compact`` it
            to drop the padding, as in the saved ``model.npz``).
        labelled: labelled structures (Atoms with the labels in a
            SinglePointCalculator, ``info["source"]`` naming where they came from).
        log: events (dicts with ``event``), curve: learning-curve rows
            (``gapfit.curve``), state: the mode's JSON-able state.
    """

    def __init__(
        self,
        workdir: Workdir,
        settings: dict,
        labeller: BaseCalculator,
        progress: bool = True,
        callback: Callback | None = None,
    ) -> None:
        self.workdir = workdir
        self.settings = settings
        self.labeller = labeller
        # what dask workers build the labeller from: its name and kwargs where it
        # has one (create, load), else the object; client: None labels here
        self.labeller_spec: tuple[str | BaseCalculator, dict | None] = (labeller, None)
        self.client: Client | None = None
        self.progress = progress
        self.callback = callback
        self.gap = _gap(settings["gap"])
        named = self.gap._term_settings()
        soaps = {n: settings for n, (kind, settings) in named.items() if kind == "soap"}
        if not soaps:
            raise GapfitError(
                "active learning needs a SOAP term (its uncertainty drives the "
                "choices); give --soap (the 2-body term may come with it)."
            )
        for name, soap in soaps.items():
            if soap["config_type_n_sparse"] is not None:
                raise GapfitError(
                    f"config_type_n_sparse (term {name}) does not apply to active "
                    "learning: the loop chooses the sparse points as labels come in, "
                    "up to n_sparse per element; give n_sparse instead."
                )
        self.species = tuple(settings["species"])
        self.specs = term_specs(named, self.species)
        self.capacity = capacities(self.gap, self.species)
        self.model: Model | None = None
        self.labelled: list[ase.Atoms] = []
        self.frames: list[Frame] = []
        self.pending: dict[str, ase.Atoms] = {}
        self.log: list[dict] = []
        self.curve: list[dict] = []
        self.state: dict = {}
        self.shape = list(NO_SHAPE)  # padded batch shape floor: one compilation
        self._calibration: tuple[tuple, Calibration | None] = ((), None)
        self.since_refit = 0
        test = read_xyz_text(workdir.read_text("test.xyz"))
        self.test = (
            frames_from_atoms(test, require=("energy", "forces"), source="test")
            if test
            else []
        )

    # ---- creation and resume ------------------------------------------------------
    @classmethod
    def create(
        cls,
        workdir: str | os.PathLike,
        settings: dict,
        labeller: str | BaseCalculator,
        inputs: dict[str, Sequence[ase.Atoms]],
        test: str | os.PathLike | Sequence[ase.Atoms] | None = None,
        progress: bool = True,
        callback: Callback | None = None,
    ) -> Learner:
        """A new run in ``workdir`` (refused if it holds one); ``inputs`` are copied
        there as extxyz (``{"pool.xyz": [...]}``), and the labelled structures
        ``test`` (file or Atoms; optional) as ``test.xyz`` for the learning curve."""
        calc = make_labeller(labeller, settings.get("labeller_kwargs"))
        if test is not None:
            inputs = {**inputs, "test.xyz": read_structures(test, "test set")}
        w = Workdir(workdir)
        w.create()
        for name, images in inputs.items():
            w.write_text(name, xyz_text(images))
        learner = cls(w, settings, calc, progress, callback)
        learner.labeller_spec = (labeller, settings.get("labeller_kwargs"))
        learner._event("start", mode=settings["mode"])
        return learner

    @classmethod
    def load(
        cls,
        workdir: str | os.PathLike,
        labeller: str | BaseCalculator | None = None,
        progress: bool = True,
        callback: Callback | None = None,
        extend: Mapping[str, Any] | None = None,
    ) -> tuple[Learner, dict[str, np.ndarray]]:
        """The run of ``workdir`` as of its last checkpoint, and the sampler's
        arrays. ``labeller`` defaults to the one named when the run started;
        ``extend`` gives new values of the run's stops (``Learner.extend``)."""
        w = Workdir(workdir)
        state, labelled, log, model_bytes, sampler = w.load()
        settings = state["settings"]
        if labeller is None:
            if settings.get("labeller") is None:
                raise GapfitError(
                    f"the run in {workdir} was labelled by a calculator object; pass "
                    "it again (labeller=...) to resume."
                )
            labeller = settings["labeller"]
        calc = make_labeller(labeller, settings.get("labeller_kwargs"))
        learner = cls(w, settings, calc, progress, callback)
        learner.labeller_spec = (labeller, settings.get("labeller_kwargs"))
        learner.labelled = read_xyz_text(labelled)
        learner.frames = frames_from_atoms(
            learner.labelled, require=("energy", "forces"), source="labelled.xyz"
        )
        if learner.labelled:
            atomic_write(w.file("model.npz"), model_bytes)  # the committed model
            # the loop predicts with DTC stds; model.npz carries the calibration
            model = without_calibration(Model.load(w.file("model.npz")))
            learner.model = padded(model, learner.capacity)
        learner.log = log
        learner.curve = state["curve"]
        learner.state = state["mode_state"]
        # a run saved before batches held triplets has a 3-field shape
        learner.shape = [*state["shape"], *NO_SHAPE][: len(NO_SHAPE)]
        learner.since_refit = state["since_refit"]
        committed = {a.info.get("source") for a in learner.labelled}
        learner.pending = {
            a.info["source"]: a
            for a in read_xyz_text(w.read_text("pending.xyz"))
            if a.info.get("source") not in committed
        }
        learner._event("resumed", n_labels=len(learner.labelled))
        if extend:
            learner.extend(extend)
        return learner, sampler

    def extend(self, changes: Mapping[str, Any]) -> None:
        """Move the run's stops (``EXTENDABLE`` of its mode: on the fly ``steps``
        and ``budget``, None for no label limit; pool ``budget`` and
        ``target_std`` eV/atom), so that a run that stopped goes on from its last
        checkpoint as if started with these values. Logged as an ``extended``
        event; every other setting stays as the run started.

        Raises:
            GapfitError: a setting the mode cannot change, or a stop the run has
                already passed (fewer steps or labels than done).
        """
        mode, cfg = self.settings["mode"], self.settings
        allowed = EXTENDABLE[mode]
        fixed = sorted(set(changes) - set(allowed))
        if fixed:
            raise GapfitError(
                f"{', '.join(fixed)}: a resumed {MODE_NAMES[mode]} run can change only "
                f"{' and '.join(allowed)}; the other settings stay as the run "
                "started (state.json). Start a new run to change them."
            )
        done = {"budget": len(self.labelled), "steps": self.state.get("step", 0)}
        for key, n in done.items():
            value = changes.get(key, n)
            if value is None and key == "budget" and mode == "otf":
                continue  # no label limit
            if not isinstance(value, int | np.integer) or value < n:
                noun = {"budget": "labels", "steps": "steps"}[key]
                raise GapfitError(
                    f"{key} {value}: the run has {n} {noun} already; give a whole "
                    f"number of at least {n}."
                )
        changes = {k: int(v) if k in done else v for k, v in changes.items()}
        cfg.update(changes)
        self.state.pop("done", None)
        self._event("extended", **changes)

    # ---- labelling and learning ---------------------------------------------------
    def label(
        self, structures: Sequence[ase.Atoms], sources: Sequence[str]
    ) -> list[tuple[int, ase.Atoms]]:
        """Label the structures; returns ``(index, labelled copy)`` of those that
        succeeded, in the order given. Failures are logged with their reason. Labels
        from before a kill (``pending.xyz``) are reused. With a dask ``client`` the
        structures are labelled at once on its workers (``gapfit.remote_labels``)."""
        pairs = list(zip(structures, sources, strict=True))
        out = [
            (k, self.pending[s]) for k, (_, s) in enumerate(pairs) if s in self.pending
        ]
        todo = [(k, a, s) for k, (a, s) in enumerate(pairs) if s not in self.pending]
        for k, result, seconds in self._labels(todo):
            source = pairs[k][1]
            if isinstance(result, LabelFailure):
                self._event("skipped", source=source, reason=result.reason)
                continue
            result.info["source"] = source
            (result,) = read_xyz_text(xyz_text([result]))  # exactly what is saved
            self.pending[source] = result
            self.workdir.write_text(
                "pending.xyz", xyz_text(list(self.pending.values()))
            )
            self._event("labelled", source=source, seconds=seconds)
            out.append((k, result))
        return sorted(out, key=lambda pair: pair[0])

    def _labels(
        self, todo: Sequence[tuple[int, ase.Atoms, str]]
    ) -> Iterator[tuple[int, ase.Atoms | LabelFailure, float]]:
        """``(index, labelled copy or failure, seconds)`` of each of ``todo``
        (index, structure, source): here one by one, or on the dask cluster."""
        if self.client is not None:
            from gapfit.remote_labels import label_on_cluster  # imports dask

            root = self.workdir.file("labels")
            yield from label_on_cluster(self.client, self.labeller_spec, todo, root)
            return
        for k, atoms, _ in todo:
            t0 = time.perf_counter()
            result = label(self.labeller, atoms)
            yield k, result, round(time.perf_counter() - t0, 4)

    def add(
        self,
        new: Sequence[ase.Atoms],
        env: Environments | None = None,
        force_target: float | None = None,
    ) -> str:
        """Add labelled structures to the model: new sparse points of each SOAP term
        from their environments (``env``, computed here if not given), then a refit
        or a rank update. Returns how: "update", "refit" or "reoptimised" (a refit
        with delta and the sigmas chosen again).

        The sparse points: with ``force_target`` (eV^2/Å^2), those that bring every
        force component's Nyström residual variance down to it (its even share per
        SOAP term; ``sparse_set.force_sparse``), else those of largest local-energy
        residual (``sparse_set.choose_sparse``); at most ``sparse_per_label`` per
        structure and SOAP term, among the environments the term covers."""
        if not new:
            return "none"
        t0 = time.perf_counter()
        frames = frames_from_atoms(new, require=("energy", "forces"), source="label")
        if self.model is None:
            self._e0_fallback(frames)
            self.model = prior_model(self.gap, self.species, frames, self.capacity)
        if env is None:
            env = unit_soap(self.gap, self.species, frames)
        n_max = self.settings["sparse_per_label"] * len(new)
        model, n_new = None, 0
        for term in soap_terms(self.model):
            rows = np.flatnonzero(covers(term.spec, env.species))
            X, s = env.X_hat[term.name][rows], env.species[rows]
            if force_target is None:
                tol = self.settings["sparse_tol"]
                pick = choose_sparse(model or self.model, X, s, n_max, tol, term.name)
            else:
                share = force_target / len(self.capacity)
                pick = force_sparse(
                    model or self.model,
                    frames,
                    X,
                    s,
                    n_max,
                    share,
                    self.shape,
                    term.name,
                )
            if len(pick):
                model = with_sparse(model or self.model, X[pick], s[pick], term.name)
                n_new += len(pick)
        everything = self.frames + frames
        # one frame per chunk: batches of one shape per frame size, one compilation
        kw = {"chunk_atoms": 1, "shape": self.shape}
        model = (
            widened_pairs(model or self.model, self.gap, frames, everything) or model
        )
        wide = widened_triplets(model or self.model, self.gap, frames, everything)
        model = wide or model
        mode = optimise_mode(self.gap.optimise_hyperparameters)
        due = self.since_refit + len(new) >= self._refit_interval()
        if due and mode:  # the scheduled refit re-chooses delta and sigmas
            before = self.model
            self.model = reoptimised(model or before, everything, mode, **kw)
            how = "reoptimised"
            # the stds' new unit, on the last frame both were fitted to that has
            # force stds (not an isolated atom, labelled after the first structures)
            frame = next((f for f in reversed(self.frames) if len(f.numbers) > 1), None)
            if frame is not None:
                ratio = _std_ratio(before, self.model, frame, self.shape)
                self.state["std_units"] = self.std_units * ratio
                self._event("std_rescaled", ratio=ratio)
        elif model is not None or due:
            self.model, how = refit(model or self.model, everything, **kw), "refit"
        else:
            self.model, how = update(self.model, frames, **kw), "update"
        # scheduled every refit_every labels, whatever refits new sparse points forced
        self.since_refit = 0 if due else self.since_refit + len(new)
        self.frames = everything
        self.labelled += list(new)
        for atoms in new:
            self.pending.pop(atoms.info["source"], None)
        self._event(
            how,
            n_new=len(new),
            n_labels=len(self.labelled),
            new_sparse=n_new,
            n_sparse=self.n_sparse,
            seconds=round(time.perf_counter() - t0, 4),
        )
        return how

    def _e0_fallback(self, frames: Sequence[Frame]) -> None:
        """With ``e0_method`` isolated and no isolated-atom label for some element in
        the first ``frames`` (the labeller failed on it; logged as skipped): e0 by
        "average" instead, logged and kept in the settings (a resumed run agrees),
        so that the run goes on."""
        have = {
            int(f.numbers[0])
            for f in frames
            if len(f.numbers) == 1 and f.config_type == ISOLATED
        }
        needed = [int(a.numbers[0]) for a in self.isolated_atoms()]
        missing = [z for z in needed if z not in have]
        if not missing:
            return
        self.settings["gap"]["e0_method"] = "average"
        self.gap = _gap(self.settings["gap"])
        names = ", ".join(ase.data.chemical_symbols[z] for z in missing)
        self._event(
            "e0_method",
            method="average",
            reason=f"no isolated-atom label for {names} (the labeller failed on it)",
        )

    def _refit_interval(self) -> int:
        """Labels from one scheduled refit to the next: ``refit_every``, the first
        ones sooner, after 4, 8, 16, ... labels (doubling, at most ``refit_every``
        apart): the hand-set delta and sigmas are furthest off while the labels are
        few, and a re-optimisation is cheapest then."""
        every = self.settings["refit_every"]
        return min(every, max(4, len(self.labelled) - self.since_refit))

    def isolated_atoms(self) -> list[ase.Atoms]:
        """One isolated atom per element (for ``e0_method="isolated"``; else none)."""
        if self.gap.e0_method != "isolated":
            return []
        given = {int(z) for z in (self.gap.e0 or {})}
        return [
            ase.Atoms(
                numbers=[z],
                positions=[[0.0, 0.0, 0.0]],
                info={"config_type": ISOLATED},
            )
            for z in self.species
            if z not in given
        ]

    @property
    def std_units(self) -> float:
        """The DTC stds' unit relative to the first model's: the product of the
        ratios of new to old stds at each re-optimisation (``gapfit.heldout``)."""
        return float(self.state.get("std_units", 1.0))

    def calibration(self) -> Calibration | None:
        """The std calibration saved with ``model.npz`` (the loop itself predicts
        with the DTC stds), or None with too few frames: fitted to the held-out
        predictions of the labelled frames (``gapfit.heldout``); at the end of a
        pool run, to their ``CV_FOLDS``-fold cross-validated predictions by the
        final model (``crossval``) instead."""
        units = self.std_units
        final = self.settings["mode"] == "pool" and "done" in self.state
        key = (len(self.labelled), units, final)
        if self._calibration[0] != key:
            cal = self._cross_validated() if final else None
            if cal is None:
                cal = heldout.calibration(
                    self.labelled, self.frames, units, SCALE_MIN_FRAMES
                )
            self._calibration = (key, cal)
        return self._calibration[1]

    def _cross_validated(self) -> Calibration | None:
        """The calibration by ``CV_FOLDS``-fold cross-validation of the labelled
        frames (fewer folds with fewer frames), or None with too few values."""
        n = sum(f.config_type != ISOLATED for f in self.frames)
        if n < MIN_CONFIGS:
            return None
        try:
            result = calibrate_cv(self.model, self.frames, min(CV_FOLDS, n))
        except GapfitError:  # too few values of every quantity
            return None
        return result.model.calibration

    @property
    def n_sparse(self) -> int:
        """Real (not padding) SOAP sparse points of the model, over its SOAP terms."""
        terms = soap_terms(self.model) if self.model is not None else []
        return sum(int(np.sum(t.sparse_species != PAD)) for t in terms)

    # ---- records and checkpoints --------------------------------------------------
    def record(self, **values: Any) -> dict:
        """Add a learning-curve row (with test errors when a test set is given)."""
        row = {"n_labels": len(self.labelled), "n_sparse": self.n_sparse, **values}
        if self.test and self.model is not None:
            row.update(test_errors(self.model, self.test))
        self.curve.append(row)
        return row

    def checkpoint(self, sampler: dict[str, np.ndarray] | None = None) -> None:
        """Write the outputs and the checkpoint (``Workdir.save``)."""
        w = self.workdir
        if self.model is not None:
            model, cal = compact(self.model), self.calibration()
            (with_calibration(model, cal) if cal else model).save(w.file("model.npz"))
        model_bytes = w.file("model.npz").read_bytes() if self.model else b""
        if self.curve:
            w.write_text("curve.csv", curve_csv(self.curve))
        state = {
            "settings": self.settings,
            "mode_state": self.state,
            "curve": self.curve,
            "shape": self.shape,
            "since_refit": self.since_refit,
            "n_labels": len(self.labelled),
        }
        w.save(state, xyz_text(self.labelled), self.log, model_bytes, sampler)

    def finish(self, reason: str, sampler: dict[str, np.ndarray] | None = None) -> None:
        """Log why the run stopped and checkpoint."""
        self.state["done"] = reason
        self._event("stop", reason=reason, n_labels=len(self.labelled))
        self.checkpoint(sampler)
        if self.test and self.curve:  # once: a plot costs about a second
            plot_curve(self.curve, self.workdir.file("curve.png"))

    def summary(self) -> str:
        """The learning curve as a table and the stop reason."""
        lines = [format_curve(self.curve)] if self.curve else []
        full = (
            " (all slots: later labels could only update the weights; a larger SOAP "
            "n_sparse lets them add sparse points)"
            if self.n_sparse >= sum(self.capacity.values())
            else ""
        )
        cal = self.calibration()
        if cal is not None:
            lines.append(f"model.npz stds: {describe(cal)}")
        lines.append(
            f"{len(self.labelled)} labelled frames, {self.n_sparse} SOAP sparse "
            f"points{full}; stopped: {self.state.get('done', 'not finished')}; "
            f"outputs in {self.workdir.path}"
        )
        return "\n".join(lines)

    # ---- internals ----------------------------------------------------------------
    def _event(self, event: str, **fields: Any) -> None:
        self.log.append({"event": event, "time": round(time.time(), 3), **fields})


def isolated_source(isolated: ase.Atoms) -> str:
    """The ``source`` of an isolated atom's label: ``isolated:<symbol>``."""
    return f"isolated:{ase.data.chemical_symbols[int(isolated.numbers[0])]}"


def base_settings(
    mode: str,
    labeller: str | BaseCalculator,
    labeller_kwargs: str | dict | None,
    gap: GAP | None,
    species: Sequence[int],
    **extra: Any,
) -> dict:
    """A run's JSON-able settings: the mode, the labeller (by name; None for an
    object), its keyword arguments, the ``GAP``'s settings, the species and the
    mode's ``extra`` settings."""
    return {
        "mode": mode,
        "labeller": labeller if isinstance(labeller, str) else None,
        "labeller_kwargs": parse_kwargs(labeller_kwargs),
        "gap": gap_settings(gap),
        "species": sorted({int(z) for z in species}),
        **extra,
    }


def bare_structure(atoms: ase.Atoms) -> ase.Atoms:
    """Geometry, pbc and config_type only (pool and start structures carry no
    labels)."""
    out = ase.Atoms(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
    )
    if "config_type" in atoms.info:
        out.info["config_type"] = atoms.info["config_type"]
    return out


def _std_ratio(
    old: Model, new: Model, frame: Frame, shape: Sequence[int] = NO_SHAPE
) -> float:
    """RMS force std of ``new`` over that of ``old`` on ``frame`` (a frame both were
    fitted to; its batch padded to at least ``shape``): how much a re-optimisation of
    delta and the sigmas changed the stds (the loop's models are uncalibrated: DTC
    stds)."""
    (a,), (b,) = (m.predict([frame], std=True, shape=shape) for m in (old, new))
    return float(np.sqrt(np.mean(b["forces_std"] ** 2) / np.mean(a["forces_std"] ** 2)))
