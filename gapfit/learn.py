"""Active learning: label what the model is least sure about, update it, repeat.

A ``Learner`` holds one run (labelled frames, the model, the log, the learning curve)
and checkpoints it after every step in a work directory (``gapfit.workdir``), so that
``resume`` continues after a kill. Every frame is predicted (mean and DTC stds) just
before it is labelled; that held-out prediction is kept with it (``gapfit.heldout``),
and the saved ``model.npz`` carries the std calibration (``gapfit.calibration``)
fitted to those of models of at least ``SCALE_MIN_FRAMES`` labels, so that the run's
model predicts calibrated stds; the loop itself works with the DTC stds. Labels come
from any ASE calculator (``gapfit.labeller``); a structure it fails on is skipped with
the reason in the log.

The model is a sparse GAP with the settings of a ``GAP`` (SOAP, optional 2-body,
sigmas, jitter). e0 comes from the first labelled frames (``e0_method`` average,
least_squares, explicit ``e0``, or isolated: the labeller then labels one isolated
atom per element first); 2-body sparse points are chosen from the first frames as in
``GAP.fit`` and spread again over all labelled distances whenever a label widens their
range (``sparse_set.widened_pairs``; then a full refit). The SOAP sparse set grows
from the labelled frames' environments, at most ``sparse_per_label`` per labelled
frame and the SOAP ``n_sparse`` per element: in pool mode (and for the start structure
on the fly) those of largest local-energy Nyström residual
(``sparse_set.choose_sparse``), each above ``sparse_tol delta^2``; on the fly those
that bring the labelled frame's force-component residual stds, times the scale ``a``
below, to ``SPARSE_STD_TARGET x std_threshold`` (``sparse_set.force_sparse``: the
force stds are nearly all residual there, which labels cannot lower). The set is held
at that capacity by padding, so the kernels compile once per run. New frames are
folded into the QR factor (``update.update``) unless sparse points were added, or
every ``refit_every`` labels (counted whatever refits new sparse points forced; the
first after 4, 8, 16, ... labels, ``Learner._refit_interval``), by a full
refit (``update.refit``); both give the same model to rounding. With the ``GAP``'s
``optimise_hyperparameters``, each of those scheduled refits also re-chooses every
term's delta and the sigmas by the evidence on all labelled frames
(``update.reoptimised``, starting from the current values).

Pool mode (``learn_pool``): ``n_seed`` random pool structures are labelled first. Each
step scores every unlabelled structure (``score``, ``gapfit.selection``): by default
``environments``, the root of its summed local-energy DTC variances
(``selection.local_energy_variance``), or ``energy``, the DTC std of its energy
(``selection.energy_variance``). It stops at the label ``budget``, when no structure's
score per atom (the RMS local-energy std, or the energy std per atom; eV/atom) is
above ``target_std`` or when the pool is used up, and otherwise labels a diverse batch
of the most uncertain (``selection.diverse_batch``).

On-the-fly mode (``learn_otf``): the start structure is labelled first; a sampler
(Langevin MD or FIRE relaxation, ``gapfit.samplers``) moves it with the GAP's forces,
whose stds come from the same call. When the largest force-component std of a step,
times a scale ``a``, exceeds ``std_threshold`` (eV/Å, absolute), that frame is
labelled and added, and the sampler continues from it with the updated model, unless
fewer than ``min_interval`` steps have passed since the last label (as FLARE's
``min_steps_with_model``: consecutive MD frames are near-duplicates, so labelling
each of them spends the budget on one configuration). Where the species of an atom
has no sparse slot left, a label cannot lower its force stds (along MD they are
nearly all Nyström residual, which only new sparse points lower); those the label
left above the threshold (scaled) become a floor (``_std_floor``), and a later step
is labelled for such a component only once its std is ``FLOOR_RISE`` times that
floor (``_over``): otherwise the next frames, whose errors that label has just made
small, are labelled one after the other while their stds stay where they were.

The DTC std has no noise and an amplitude set by the hand-chosen ``delta``; ``a``
puts it in the units of the errors: ``a^2 = mean (e / s)^2`` over the force
components of all frames labelled so far, with the errors ``e`` and stds ``s``
predicted just before each was labelled (held out; the maximum-likelihood scale of
``e ~ N(0, a^2 s^2)``, as in std scaling, Laves et al., MIDL 2020), widened for the
few frames it rests on (``_few_frames_widening``: with the scale estimated from n
frames an error is Student-t, not Gaussian, in units of ``a s``, so ``a`` is widened
until an error beyond ``TAIL_Z`` = 3 scaled stds is as rare as for a Gaussian: 1.84
times at 5 frames, 1.32 at 10, 1.07 at 40; without it, 2-body + SOAP runs of 6-8
labels missed by 3.4 scaled stds; the sparse points' target uses ``a`` unwidened),
and at least 1 until ``SCALE_MIN_FRAMES`` such frames are in (the first ones were
predicted by models of one or two labels, whose error-to-std ratio says little of the
next model's). A scheduled re-optimisation of delta and the sigmas changes the stds'
amplitude: the mean of ``(e / s)^2`` is then divided by the squared ratio of the new
to the old RMS force std on the previous labelled frame (one both models were fitted
to), so that ``a`` stays in the units of the current stds; every frame keeps its
weight (when the rescaled history counted as one frame, the next few held-out frames
set ``a`` alone: in one run it fell from 0.15 to 0.06 within three labels, about
calibrated on average, and then far too narrow for the errors' tails).
The force std a step predicts (``step_std`` of the callback's step event, eV/Å) adds
to ``a s`` the floor ``b`` and relative term ``c`` of the held-out calibration so far:
``u^2 = (a s)^2 + b^2 + (c f)^2`` (``step_force_std``; ``f`` the predicted force). These
are the errors the DTC std does not see (the model's misfit to the labeller where its
environments are well covered), which no label lowers, so the labels' rule looks at
``a s`` alone; without them, in two of seven 2-body + SOAP runs, components of
smallest std had errors of 3.0-3.3 ``a s`` on unlabelled steps.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.data
import ase.io
import numpy as np
import scipy.stats
from ase.calculators.calculator import BaseCalculator
from tqdm.auto import tqdm

from gapfit import heldout
from gapfit.calculator import GAPCalculator
from gapfit.calibration import (
    MIN_CONFIGS,
    Calibration,
    calibrated_std,
    config_type_of,
    describe,
    with_calibration,
    without_calibration,
)
from gapfit.crossval import ISOLATED, calibrate_cv
from gapfit.curve import curve_csv, format_curve, plot_curve, test_errors
from gapfit.data import Frame, atomic_number, frames_from_atoms
from gapfit.errors import GapfitError
from gapfit.fit import GAP, _specs
from gapfit.hyperparameters import optimise_mode
from gapfit.labeller import LabelFailure, label, make_labeller, parse_kwargs
from gapfit.model import Model, atomic_write
from gapfit.neighbours import species_index
from gapfit.samplers import MDSampler, RelaxSampler, atoms_from_arrays, sampler_arrays
from gapfit.selection import (
    SCORES,
    diverse_batch,
    energy_prior,
    energy_variance,
    local_energy_variance,
    unit_mean_soap,
    unit_soap,
)
from gapfit.sparse_set import (
    PAD,
    choose_sparse,
    compact,
    force_sparse,
    free_slots,
    padded,
    prior_model,
    widened_pairs,
    with_sparse,
)
from gapfit.update import refit, reoptimised, update
from gapfit.workdir import Workdir, read_xyz_text, xyz_text

GAP_KEYS = (
    "soap",
    "distance_2b",
    "default_sigma",
    "config_type_sigma",
    "sigma_per_atom",
    "e0",
    "e0_method",
    "sparse_jitter",
    "rnd_seed",
    "descriptor_backend",
    "optimise_hyperparameters",
)
Callback = Callable[[dict], None]
SPARSE_STD_TARGET = 0.5  # on the fly: a labelled frame's residual std over threshold
SCALE_MIN_FRAMES = 3  # on the fly: held-out frames before the std scale may shrink
TAIL_Z = 3.0  # on the fly: errors beyond TAIL_Z scaled stds as rare as for a Gaussian
FLOOR_RISE = 1.2  # on the fly: rise over a std its label could not lower, to label
CV_FOLDS = 5  # pool mode: folds of the final model's cross-validated calibration


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
        self.progress = progress
        self.callback = callback
        self.gap = _gap(settings["gap"])
        soap, pair = self.gap._settings()
        if soap is None:
            raise GapfitError(
                "active learning needs a SOAP term (its uncertainty drives the "
                "choices); give --soap (the 2-body term may come with it)."
            )
        self.species = tuple(settings["species"])
        self.specs = _specs(soap, pair, self.species)
        self.capacity = int(soap["n_sparse"]) * len(self.species)
        self.model: Model | None = None
        self.labelled: list[ase.Atoms] = []
        self.frames: list[Frame] = []
        self.pending: dict[str, ase.Atoms] = {}
        self.log: list[dict] = []
        self.curve: list[dict] = []
        self.state: dict = {}
        self.shape = [0, 0, 0]  # padded batch shape floor: one compilation
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
        progress: bool = True,
        callback: Callback | None = None,
    ) -> Learner:
        """A new run in ``workdir`` (refused if it holds one); ``inputs`` are copied
        there as extxyz (``{"pool.xyz": [...], "test.xyz": [...]}``)."""
        calc = make_labeller(labeller, settings.get("labeller_kwargs"))
        w = Workdir(workdir)
        w.create()
        for name, images in inputs.items():
            w.write_text(name, xyz_text(images))
        learner = cls(w, settings, calc, progress, callback)
        learner._event("start", mode=settings["mode"])
        return learner

    @classmethod
    def load(
        cls,
        workdir: str | os.PathLike,
        labeller: str | BaseCalculator | None = None,
        progress: bool = True,
        callback: Callback | None = None,
    ) -> tuple[Learner, dict[str, np.ndarray]]:
        """The run of ``workdir`` as of its last checkpoint, and the sampler's
        arrays. ``labeller`` defaults to the one named when the run started."""
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
        learner.shape = state["shape"]
        learner.since_refit = state["since_refit"]
        committed = {a.info.get("source") for a in learner.labelled}
        learner.pending = {
            a.info["source"]: a
            for a in read_xyz_text(w.read_text("pending.xyz"))
            if a.info.get("source") not in committed
        }
        learner._event("resumed", n_labels=len(learner.labelled))
        return learner, sampler

    # ---- labelling and learning ---------------------------------------------------
    def label(
        self, structures: Sequence[ase.Atoms], sources: Sequence[str]
    ) -> list[tuple[int, ase.Atoms]]:
        """Label the structures; returns ``(index, labelled copy)`` of those that
        succeeded. Failures are logged with their reason. Labels from before a kill
        (``pending.xyz``) are reused."""
        out = []
        for k, (atoms, source) in enumerate(zip(structures, sources, strict=True)):
            if source in self.pending:
                out.append((k, self.pending[source]))
                continue
            t0 = time.perf_counter()
            result = label(self.labeller, atoms)
            seconds = round(time.perf_counter() - t0, 4)
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
        return out

    def add(
        self,
        new: Sequence[ase.Atoms],
        X_hat: np.ndarray | None = None,
        s: np.ndarray | None = None,
        force_target: float | None = None,
    ) -> str:
        """Add labelled structures to the model: new sparse points from their
        environments (unit SOAP ``X_hat (n, F)``, species index ``s (n,)``, computed
        here if not given), then a refit or a rank update. Returns how: "update",
        "refit" or "reoptimised" (a refit with delta and the sigmas chosen again).

        The sparse points: with ``force_target`` (eV^2/Å^2), those that bring every
        force component's Nyström residual variance down to it
        (``sparse_set.force_sparse``), else those of largest local-energy residual
        (``sparse_set.choose_sparse``); at most ``sparse_per_label`` per structure."""
        if not new:
            return "none"
        t0 = time.perf_counter()
        frames = frames_from_atoms(new, require=("energy", "forces"), source="label")
        if self.model is None:
            self.model = prior_model(self.gap, self.species, frames, self.capacity)
        if X_hat is None:
            X_hat, s, _ = unit_soap(self.gap, self.species, frames)
        settings = self.settings
        n_max = settings["sparse_per_label"] * len(new)
        if force_target is None:
            pick = choose_sparse(self.model, X_hat, s, n_max, settings["sparse_tol"])
        else:
            pick = force_sparse(
                self.model, frames, X_hat, s, n_max, force_target, self.shape
            )
        everything = self.frames + frames
        # one frame per chunk: batches of one shape per frame size, one compilation
        kw = {"chunk_atoms": 1, "shape": self.shape}
        model = with_sparse(self.model, X_hat[pick], s[pick]) if len(pick) else None
        model = widened_pairs(model or self.model, self.gap, frames) or model
        mode = optimise_mode(self.gap.optimise_hyperparameters)
        due = self.since_refit + len(new) >= self._refit_interval()
        if due and mode:  # the scheduled refit re-chooses delta and sigmas
            before = self.model
            self.model = reoptimised(model or before, everything, mode, **kw)
            how = "reoptimised"
            if self.frames:  # the stds' new unit, on a frame both were fitted to
                ratio = _std_ratio(before, self.model, self.frames[-1], self.shape)
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
            new_sparse=len(pick),
            n_sparse=self.n_sparse,
            seconds=round(time.perf_counter() - t0, 4),
        )
        return how

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
                info={"config_type": "isolated_atom"},
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
        """Real (not padding) SOAP sparse points of the model."""
        term = self.model.term("soap") if self.model is not None else None
        return 0 if term is None else int(np.sum(term.sparse_species != PAD))

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
            if self.n_sparse >= self.capacity
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


def _source(isolated: ase.Atoms) -> str:
    return f"isolated:{ase.data.chemical_symbols[int(isolated.numbers[0])]}"


def _base_settings(
    mode: str,
    labeller: str | BaseCalculator,
    labeller_kwargs: str | dict | None,
    gap: GAP | None,
    species: Sequence[int],
    **extra: Any,
) -> dict:
    return {
        "mode": mode,
        "labeller": labeller if isinstance(labeller, str) else None,
        "labeller_kwargs": parse_kwargs(labeller_kwargs),
        "gap": gap_settings(gap),
        "species": sorted({int(z) for z in species}),
        **extra,
    }


# ---- pool mode ----------------------------------------------------------------------
def learn_pool(
    workdir: str | os.PathLike,
    labeller: str | BaseCalculator | None,
    pool: str | os.PathLike | Sequence[ase.Atoms] | None = None,
    gap: GAP | None = None,
    test: str | os.PathLike | Sequence[ase.Atoms] | None = None,
    *,
    n_seed: int = 2,
    batch_size: int = 2,
    budget: int = 40,
    target_std: float | None = None,
    n_candidates: int | None = None,
    strategy: str = "uncertainty",
    score: str = "environments",
    sparse_per_label: int = 20,
    sparse_tol: float = 1e-6,
    refit_every: int = 20,
    seed: int = 1,
    labeller_kwargs: str | dict | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callback | None = None,
) -> Learner:
    """Pool-mode active learning (see the module docstring).

    Args:
        workdir: directory of the run's outputs and checkpoint.
        labeller: ASE calculator, or ``emt``, ``lj``, ``module:Class``
            (``gapfit.labeller``) with ``labeller_kwargs``; on resume None means the
            one named at the start.
        pool: unlabelled structures (file or Atoms); not needed on resume.
        gap: model settings (a ``GAP``; its SOAP ``n_sparse`` is the most sparse
            points per element); default ``GAP(e0_method="average")``.
        test: labelled structures for the learning curve (optional).
        n_seed: random pool structures labelled first (on the EMT Cu pool of
            ``benchmarks/bench_learn.py`` 2 gave lower test errors than 1 or 4 at
            every label count from 8 to 80: uncertainty picks better than chance).
        batch_size: structures labelled per step. budget: labels in all.
        target_std: stop when no unlabelled structure's score per atom is above
            this (eV/atom; see the module docstring).
        n_candidates: most uncertain structures the diverse batch is chosen from
            (default ``max(10 batch_size, 20)``).
        strategy: "uncertainty" (the module docstring) or "random": random batches
            with the same model, seeds and stops (the baseline of learning curves).
        score: "environments" or "energy" (the module docstring).
        sparse_per_label, sparse_tol, refit_every: see the module docstring.
        seed: seed of the first structures. resume: continue the run in ``workdir``.
        progress: progress bar. callback: called with an event dict after each step;
            an exception it raises stops the run (the checkpoint stays).

    Returns:
        The ``Learner`` (``learner.model``, ``learner.labelled``, ``learner.curve``).
    """
    if strategy not in ("uncertainty", "random"):
        raise GapfitError(f"strategy {strategy!r}: use 'uncertainty' or 'random'.")
    if score not in SCORES:
        raise GapfitError(f"score {score!r}: use one of {', '.join(SCORES)}.")
    if resume:
        learner, _ = Learner.load(workdir, labeller, progress, callback)
    else:
        if pool is None:
            raise GapfitError("learn_pool needs a pool of structures (pool=...).")
        images = read_structures(pool, "pool")
        species = {int(z) for a in images for z in a.numbers}
        settings = _base_settings(
            "pool",
            labeller,
            labeller_kwargs,
            gap,
            species,
            n_seed=n_seed,
            batch_size=batch_size,
            budget=budget,
            target_std=target_std,
            n_candidates=n_candidates or max(10 * batch_size, 20),
            strategy=strategy,
            score=score,
            sparse_per_label=sparse_per_label,
            sparse_tol=sparse_tol,
            refit_every=refit_every,
            seed=seed,
        )
        inputs = {"pool.xyz": [_bare(a) for a in images]}
        if test is not None:
            inputs["test.xyz"] = read_structures(test, "test set")
        learner = Learner.create(
            workdir, settings, labeller, inputs, progress, callback
        )
        learner.state = {"labelled": [], "failed": [], "step": 0}
    # the saved copy (positions to 1e-8 Å), as on resume: the same labels either way
    images = read_xyz_text(learner.workdir.read_text("pool.xyz"))
    _PoolRun(learner, images).run()
    return learner


def _bare(atoms: ase.Atoms) -> ase.Atoms:
    """Geometry, pbc and config_type only (pool structures carry no labels)."""
    out = ase.Atoms(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
    )
    if "config_type" in atoms.info:
        out.info["config_type"] = atoms.info["config_type"]
    return out


class _PoolRun:
    """The steps of pool mode over cached pool descriptors."""

    def __init__(self, learner: Learner, images: list[ase.Atoms]) -> None:
        self.learner = learner
        self.images = images
        frames = frames_from_atoms(images, require=(), source="pool")
        self.X_hat, self.s, self.owner = unit_soap(learner.gap, learner.species, frames)
        self.S_hat = unit_mean_soap(self.X_hat, self.owner, len(images))
        self.n_atoms = np.array([len(a) for a in images])
        # runs from before the score was a setting used the energy score
        self.score = learner.settings.get("score", "energy")
        if self.score == "energy":
            kernel = learner.specs["soap"][1]
            self.prior = energy_prior(kernel, self.X_hat, self.s, self.owner)

    def run(self) -> None:
        L, st, cfg = self.learner, self.learner.state, self.learner.settings
        if "done" in st:
            return
        bar = tqdm(
            total=cfg["budget"],
            initial=len(L.labelled),
            unit="label",
            desc="learn (pool)",
            disable=not L.progress,
        )
        if not L.labelled:
            rng = np.random.default_rng(cfg["seed"])
            n = min(cfg["n_seed"], len(self.images))
            seeds = np.sort(rng.choice(len(self.images), n, replace=False))
            self.step([int(i) for i in seeds], L.isolated_atoms(), None, bar)
        while True:
            if len(L.labelled) >= cfg["budget"]:
                reason = f"label budget {cfg['budget']} reached"
                break
            u, per_atom = self.uncertainty()
            if not np.isfinite(u).any():
                reason = "pool exhausted"
                break
            largest = float(per_atom.max())
            if cfg["target_std"] is not None and largest <= cfg["target_std"]:
                reason = f"largest {self.score} std {largest:.3g} eV/atom <= target"
                break
            n_pick = min(cfg["batch_size"], cfg["budget"] - len(L.labelled))
            if cfg["strategy"] == "random":  # the baseline: same model, random picks
                rng = np.random.default_rng([cfg["seed"], st["step"]])
                left = np.flatnonzero(np.isfinite(u))
                batch = rng.choice(left, min(n_pick, len(left)), replace=False)
            else:
                kernel = L.specs["soap"][1]
                batch = diverse_batch(
                    u, self.S_hat, kernel, n_pick, cfg["n_candidates"], st["labelled"]
                )
            if len(batch) == 0:
                reason = "no candidate differs from the labelled structures"
                break
            self.step([int(i) for i in batch], [], largest, bar)
        bar.close()
        L.finish(reason)

    def uncertainty(self) -> tuple[np.ndarray, np.ndarray]:
        """Each pool structure's score (eV) and score per atom (eV/atom; the module
        docstring); -inf for labelled and failed ones."""
        model, n = self.learner.model, len(self.images)
        if self.score == "environments":
            var = local_energy_variance(model, self.X_hat, self.s)
            u = np.sqrt(np.bincount(self.owner, np.maximum(var, 0.0), n))
            per_atom = u / np.sqrt(self.n_atoms)  # RMS local-energy std
        else:
            var = energy_variance(model, self.X_hat, self.s, self.owner, self.prior)
            u = np.sqrt(np.maximum(var, 0.0))
            per_atom = u / self.n_atoms
        st = self.learner.state
        u[st["labelled"] + st["failed"]] = -np.inf
        per_atom[st["labelled"] + st["failed"]] = -np.inf
        return u, per_atom

    def step(
        self, picks: list[int], extra: list[ase.Atoms], max_std, bar: tqdm
    ) -> None:
        L, st = self.learner, self.learner.state
        structures = [self.images[i] for i in picks] + extra
        sources = [f"pool:{i}" for i in picks] + [_source(a) for a in extra]
        done = L.label(structures, sources)
        ok = [picks[k] for k, _ in done if k < len(picks)]
        st["failed"] += sorted(set(picks) - set(ok))
        st["labelled"] += ok
        new = [a for _, a in done]
        if L.model is not None and new:  # held out: predicted before the labels
            preds = L.model.predict(new, std=True, shape=L.shape)  # one compilation
            for atoms, pred in zip(new, preds, strict=True):
                heldout.record(atoms, pred, len(L.labelled), L.std_units)
        mask = np.isin(self.owner, ok)
        # pool environments come from the cache; isolated atoms are no candidates
        L.add(new, self.X_hat[mask], self.s[mask])
        st["step"] += 1
        row = L.record(step=st["step"], max_std=max_std)
        L.checkpoint()
        bar.update(len(new))
        bar.set_postfix(
            {k: f"{row[k]:.3g}" for k in ("max_std", "f_rmse") if row.get(k)}
        )
        if L.callback is not None:
            L.callback({"event": "step", "mode": "pool", "picked": picks, "row": row})


# ---- on-the-fly mode ----------------------------------------------------------------
def _scale_estimate(state: dict) -> float:
    """``sqrt(mean (e / s)^2)`` over the force components of every labelled frame,
    errors ``e`` and DTC stds ``s`` predicted just before it was labelled (held out):
    the maximum-likelihood amplitude of ``e ~ N(0, a^2 s^2)``; 1 before the first."""
    n = state["z2_n"]
    return float(np.sqrt(state["z2_sum"] / n)) if n else 1.0


def _few_frames_widening(n: int) -> float:
    """How much wider a scale estimated from ``n`` held-out frames must be for an
    error beyond ``TAIL_Z`` scaled stds to be as rare as for a known Gaussian scale:
    the quantile of Student's t with ``n`` degrees of freedom (one per frame: the
    components of a frame share its configuration) at the two-sided tail of
    ``TAIL_Z`` standard deviations, over ``TAIL_Z``. 5 frames: 1.84, 10: 1.32, 40:
    1.07; 1 for none."""
    if n < 1:
        return 1.0
    tail = scipy.stats.norm.sf(TAIL_Z)
    return float(scipy.stats.t.isf(tail, n) / TAIL_Z)


def _std_scale(state: dict, widened: bool = True) -> float:
    """Scale ``a`` of the force stds: ``_scale_estimate``, ``widened`` for the few
    frames it rests on (``_few_frames_widening``; the labels' rule: no error past
    ``TAIL_Z`` scaled stds), and at least 1 until it rests on ``SCALE_MIN_FRAMES``
    held-out frames (the first frames' stds come from models of one or two labels,
    whose error-to-std ratio says little of the next)."""
    n = state.get("z2_frames", 0)
    a = _scale_estimate(state) * (_few_frames_widening(n) if widened else 1.0)
    return a if n >= SCALE_MIN_FRAMES else max(a, 1.0)


def step_force_std(
    pred: dict, scale: float, cal: Calibration | None, config_type: str
) -> np.ndarray:
    """The force stds ``(N, 3)`` (eV/Å) a step predicts, ``u^2 = (a s)^2 + b^2 +
    (c f)^2``: the DTC stds ``s`` times the loop's scale ``a``, with the floor ``b``
    and relative term ``c`` of the held-out calibration so far (``Learner.calibration``;
    ``a s`` before it exists), for the predicted forces ``f``. ``b`` and ``c`` are the
    errors no label lowers, so the labels' rule (``_over``) looks at ``a s`` alone."""
    p = None if cal is None else cal.get("forces", config_type)
    if p is None:
        return scale * pred["forces_std"]
    p = dataclasses.replace(p, scale=scale)
    return calibrated_std(pred["forces_std"], p, 1.0, pred["forces"])


def _std_ratio(
    old: Model, new: Model, frame: Frame, shape: Sequence[int] = (0, 0, 0)
) -> float:
    """RMS force std of ``new`` over that of ``old`` on ``frame`` (a frame both were
    fitted to; its batch padded to at least ``shape``): how much a re-optimisation of
    delta and the sigmas changed the stds (the loop's models are uncalibrated: DTC
    stds)."""
    (a,), (b,) = (m.predict([frame], std=True, shape=shape) for m in (old, new))
    return float(np.sqrt(np.mean(b["forces_std"] ** 2) / np.mean(a["forces_std"] ** 2)))


def _std_floor(
    std: np.ndarray, scale: float, threshold: float, full: np.ndarray
) -> list | None:
    """The DTC force stds ``(N, 3)`` (eV/Å, raw) of a frame just labelled, as
    updated by its label, of the atoms whose species has no sparse slot left
    (``full (N,)``) where they are still above ``threshold`` once scaled: further
    labels cannot lower them (the Nyström residual, nearly all the DTC std along MD,
    only new sparse points lower). None if there are none; a list for the JSON
    state."""
    floor = np.where(full[:, None] & (scale * std > threshold), std, 0.0)
    return floor.ravel().tolist() if floor.any() else None


def _over(std: np.ndarray, scale: float, threshold: float, state: dict) -> bool:
    """Whether a step's force stds ``(N, 3)`` (eV/Å, raw) call for a label: some
    component's scaled std is above ``threshold`` and, where the last label left that
    component's std above it (``_std_floor``), at least ``FLOOR_RISE`` times that
    std."""
    over = scale * std.ravel() > threshold
    floor = state.get("std_floor")
    if floor is not None:
        over &= std.ravel() > FLOOR_RISE * np.asarray(floor)
    return bool(over.any())


def _calibrate(state: dict, forces: np.ndarray, pred: dict) -> None:
    """Add a labelled frame's held-out force errors to the std scale."""
    z2 = ((forces - pred["forces"]) / np.maximum(pred["forces_std"], 1e-12)) ** 2
    state["z2_sum"] += float(z2.sum())
    state["z2_n"] += int(z2.size)
    state["z2_frames"] = state.get("z2_frames", 0) + 1


def learn_otf(
    workdir: str | os.PathLike,
    labeller: str | BaseCalculator | None,
    start: str | os.PathLike | ase.Atoms | None = None,
    gap: GAP | None = None,
    test: str | os.PathLike | Sequence[ase.Atoms] | None = None,
    *,
    sampler: str = "md",
    steps: int = 1000,
    temperature: float = 300.0,
    timestep: float = 2.0,
    friction: float = 0.01,
    fmax: float = 0.05,
    std_threshold: float = 0.1,
    budget: int | None = None,
    min_interval: int = 1,
    sparse_per_label: int = 20,
    sparse_tol: float = 1e-6,
    refit_every: int = 20,
    checkpoint_every: int = 10,
    seed: int = 1,
    labeller_kwargs: str | dict | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callback | None = None,
) -> Learner:
    """On-the-fly active learning along MD or a relaxation (module docstring).

    Args:
        workdir, labeller, gap, test, sparse_per_label, sparse_tol, refit_every,
            labeller_kwargs, resume, progress: as for ``learn_pool``.
        start: the starting structure (file: its last image, or Atoms).
        sampler: "md" (Langevin) or "relax" (FIRE on the positions).
        steps: sampler steps. temperature: K. timestep: fs. friction: 1/fs.
        fmax: the relaxation stops below this largest force (eV/Å).
        std_threshold: label a frame whose largest force-component std exceeds this
            (eV/Å, absolute).
        budget: at most this many labels (then the sampler goes on unlabelled).
        min_interval: at least this many steps from one label to the next (1: any
            step may be labelled).
        checkpoint_every: checkpoint every this many steps (and after each label).
        seed: seed of the velocities and the thermostat's random forces.
        callback: called after every step with ``{"event": "step", "step", "atoms",
            "max_std", "std_scale", "step_std", "labelled", "forces", "forces_std"}``
            (the prediction that drove the step: ``a max s``, ``a``, ``u``, the mean
            and the DTC stds; module docstring); an exception it raises stops the run.
    """
    if sampler not in ("md", "relax"):
        raise GapfitError(f"sampler {sampler!r} is unknown; use 'md' or 'relax'.")
    if min_interval < 1:
        raise GapfitError(
            f"min_interval {min_interval}: give at least 1 (step) between labels."
        )
    if resume:
        learner, arrays = Learner.load(workdir, labeller, progress, callback)
        atoms = atoms_from_arrays(arrays)
    else:
        if start is None:
            raise GapfitError("learn_otf needs a start structure (start=...).")
        atoms = _bare(
            start
            if isinstance(start, ase.Atoms)
            else read_structures(start, "start")[-1]
        )
        settings = _base_settings(
            "otf",
            labeller,
            labeller_kwargs,
            gap,
            atoms.numbers,
            sampler=sampler,
            steps=steps,
            temperature=temperature,
            timestep=timestep,
            friction=friction,
            fmax=fmax,
            std_threshold=std_threshold,
            budget=budget,
            min_interval=min_interval,
            sparse_per_label=sparse_per_label,
            sparse_tol=sparse_tol,
            refit_every=refit_every,
            checkpoint_every=checkpoint_every,
            seed=seed,
        )
        inputs = {"start.xyz": [atoms]}
        if test is not None:
            inputs["test.xyz"] = read_structures(test, "test set")
        learner = Learner.create(
            workdir, settings, labeller, inputs, progress, callback
        )
        learner.state = {
            "step": 0,
            "rng": None,
            "z2_sum": 0.0,
            "z2_n": 0,
            "z2_frames": 0,
            "std_floor": None,
            "last_label": 0,  # the start structure
        }
        (atoms,) = read_xyz_text(learner.workdir.read_text("start.xyz"))  # as saved
    _OTFRun(learner, atoms, fresh=not resume).run()
    return learner


class _OTFRun:
    """The steps of on-the-fly mode."""

    def __init__(self, learner: Learner, atoms: ase.Atoms, fresh: bool) -> None:
        self.learner = learner
        self.atoms = atoms
        self.fresh = fresh

    def run(self) -> None:
        L, st, cfg = self.learner, self.learner.state, self.learner.settings
        if "done" in st:
            return
        atoms = self.atoms
        if not L.labelled:
            isolated = L.isolated_atoms()
            new = L.label(
                [atoms, *isolated], ["start", *(_source(a) for a in isolated)]
            )
            if len(new) < 1 + len(isolated):
                reasons = [e["reason"] for e in L.log if e["event"] == "skipped"]
                raise GapfitError(
                    f"the labeller failed on the start structure or an isolated atom "
                    f"({'; '.join(reasons)}); fix the labeller settings or the "
                    "structure."
                )
            L.add([a for _, a in new])
            L.record(step=0, max_std=None)
        rng = np.random.default_rng(cfg["seed"])
        if st["rng"] is not None:
            rng.bit_generator.state = st["rng"]
        calc = GAPCalculator(L.model, std=True)
        atoms.calc = calc
        if cfg["sampler"] == "md":
            sampler = MDSampler(
                atoms,
                cfg["temperature"],
                cfg["timestep"],
                cfg["friction"],
                rng,
                self.fresh,
            )
        else:
            sampler = RelaxSampler(atoms, cfg["fmax"])
        bar = tqdm(
            total=cfg["steps"],
            initial=st["step"],
            unit="step",
            desc=f"learn ({cfg['sampler']})",
            disable=not L.progress,
        )
        reason = f"{cfg['steps']} steps done"
        while st["step"] < cfg["steps"]:
            step = st["step"]
            atoms.get_forces()  # mean and std in one call
            results = {k: np.copy(v) for k, v in calc.results.items()}
            pred = {k: results[k] for k in ("forces", "forces_std")}
            scale = _std_scale(st)
            step_std = step_force_std(
                pred, scale, L.calibration(), config_type_of(atoms)
            )
            max_std = scale * float(np.max(pred["forces_std"]))
            labelled = False
            budget = cfg["budget"]
            if (
                _over(pred["forces_std"], scale, cfg["std_threshold"], st)
                and (budget is None or len(L.labelled) < budget)
                and step - st.get("last_label", 0) >= cfg.get("min_interval", 1)
            ):
                new = L.label([atoms], [f"{cfg['sampler']}:{step}"])
                if new:
                    _calibrate(st, new[0][1].get_forces(), pred)
                    units = L.std_units
                    heldout.record(new[0][1], results, len(L.labelled), units)
                    st["last_label"] = step
                    # sparse points until the frame's scaled residual std is at most
                    # SPARSE_STD_TARGET x the threshold (labels cannot lower it)
                    target = (SPARSE_STD_TARGET * cfg["std_threshold"]) ** 2
                    # (the errors' scale, not widened: the widening guards the
                    # labels' rule; widened, the first labels' small targets took
                    # the most points each, and in SOAP-only runs the set was full
                    # by step 10, its points from frames near the start lattice:
                    # the stds of later frames rose and took every label by step 42)
                    a2 = _std_scale(st, widened=False) ** 2
                    raw = target / a2 if a2 > 0 else np.inf
                    how = L.add([a for _, a in new], force_target=raw)
                    if how == "reoptimised":
                        # the held-out (e / s)^2 so far were of the old stds
                        st["z2_sum"] /= (L.std_units / units) ** 2
                    calc.model = L.model
                    calc.reset()
                    atoms.get_forces()  # the updated model's, for the next step
                    species = species_index(atoms.numbers, L.model.species)
                    st["std_floor"] = _std_floor(
                        calc.results["forces_std"],
                        _std_scale(st),
                        cfg["std_threshold"],
                        free_slots(L.model)[species] <= 0,
                    )
                    labelled = True
                    L.record(step=step, max_std=max_std, std_scale=scale)
            if L.callback is not None:
                L.callback(
                    {
                        "event": "step",
                        "step": step,
                        "atoms": atoms,
                        "max_std": max_std,
                        "std_scale": scale,
                        "step_std": step_std,
                        "labelled": labelled,
                        **pred,
                    }
                )
            if sampler.converged():
                reason = f"relaxed: largest force below {cfg['fmax']} eV/Å"
                break
            sampler.step()
            st["step"] = step + 1
            st["rng"] = rng.bit_generator.state
            bar.update(1)
            bar.set_postfix(labels=len(L.labelled), max_std=f"{max_std:.3g}")
            if labelled or st["step"] % cfg["checkpoint_every"] == 0:
                L.checkpoint(sampler_arrays(atoms))
        bar.close()
        L.finish(reason, sampler_arrays(atoms))
