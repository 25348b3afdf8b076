"""On-the-fly active learning: label the frames of MD or a relaxation driven by the
model where its force stds pass a threshold.

``learn_otf``: the start structure is labelled first; a sampler (Langevin MD or FIRE
relaxation, ``gapfit.samplers``) moves it with the GAP's forces, whose stds come from
the same call. When the largest force-component std of a step,
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

The run's labels, model updates and checkpoints: ``gapfit.learner``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ase
import numpy as np
import scipy.stats
from ase.calculators.calculator import BaseCalculator
from tqdm.auto import tqdm

from gapfit import heldout
from gapfit.calculator import GAPCalculator
from gapfit.calibration import Calibration, calibrated_std, config_type_of
from gapfit.errors import GapfitError
from gapfit.fit import GAP
from gapfit.learner import (
    SCALE_MIN_FRAMES,
    Callback,
    Learner,
    bare_structure,
    base_settings,
    isolated_source,
    read_structures,
)
from gapfit.neighbours import species_index
from gapfit.samplers import MDSampler, RelaxSampler, atoms_from_arrays, sampler_arrays
from gapfit.sparse_set import free_slots
from gapfit.workdir import read_xyz_text

if TYPE_CHECKING:  # dask is imported only where labels go to a cluster
    from dask.distributed import Client

SPARSE_STD_TARGET = 0.5  # a labelled frame's residual std over threshold
TAIL_Z = 3.0  # errors beyond TAIL_Z scaled stds as rare as for a Gaussian
FLOOR_RISE = 1.2  # rise over a std its label could not lower, to label


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
    extend: Mapping[str, Any] | None = None,
    client: Client | None = None,
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
        extend: on resume, new ``steps`` and ``budget`` (None: no label limit): the
            run goes on from its last checkpoint as if started with them
            (``Learner.extend``).
        client: a ``dask.distributed.Client``: the labeller runs on its workers
            (``gapfit.remote_labels``; the start structure and isolated atoms at
            once); None: in this process.
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
        learner, arrays = Learner.load(workdir, labeller, progress, callback, extend)
        atoms = atoms_from_arrays(arrays)
    else:
        if start is None:
            raise GapfitError("learn_otf needs a start structure (start=...).")
        atoms = bare_structure(
            start
            if isinstance(start, ase.Atoms)
            else read_structures(start, "start")[-1]
        )
        settings = base_settings(
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
        learner = Learner.create(
            workdir, settings, labeller, inputs, test, progress, callback
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
    learner.client = client
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
                [atoms, *isolated], ["start", *(isolated_source(a) for a in isolated)]
            )
            if not new or new[0][0] != 0:
                reason = next(
                    e["reason"]
                    for e in reversed(L.log)
                    if e["event"] == "skipped" and e["source"] == "start"
                )
                raise GapfitError(
                    f"the labeller failed on the start structure ({reason}); fix the "
                    "labeller settings or the structure."
                )
            L.add([a for _, a in new])  # without an isolated atom: e0 by average
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
