"""The estimator: ``GAP(...).fit(frames)`` orchestrates a streamed sparse-GP fit.

Stages (each timed, with progress bars): read and validate data -> e0 -> SOAP of every
environment and 2-body distances -> sparse points of each term -> per chunk of
configurations, kernel rows of energies, forces and virials folded into the QR ->
weights and posterior factors -> training errors. With ``optimise_hyperparameters``
the rows are folded per noise group instead, and each term's delta and the sigmas are
chosen by the evidence before the weights (``gapfit.hyperparameters``). Peak memory
is O(M^2 + chunk) plus the (n_env, F) descriptor matrix; ``GAP.plan`` predicts it
(``gapfit.plan``) and ``fit`` records the peak resident set size after each stage
(``memory_gib_``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from gapfit import __version__, gapstring
from gapfit.angle_3b import (
    ARDKernel,
    TripletSpec,
    batch_descriptors,
    distinct_triplets,
    theta_from_factor,
    triplet_sparse_points,
)
from gapfit.assembly import fitted_predictions, padded_batches, scaled_chunks
from gapfit.baseline import Baseline
from gapfit.blocks import batch_arrays, descriptors_jit
from gapfit.data import Frame, LabelKeys, Sigmas, as_frames, fit_e0, read_frames
from gapfit.distance_2b import (
    PairSpec,
    PairSummary,
    SEKernel,
    pair_type,
    theta_from_ranges,
)
from gapfit.dscribe_backend import check_backend, soap_values
from gapfit.errors import GapfitError
from gapfit.gapstring import ONE_ANGLE_3B, Settings
from gapfit.hyperparameters import optimise, optimise_mode
from gapfit.kernels import DotProductKernel, normalise
from gapfit.memory import peak_rss_gib, release_freed
from gapfit.model import Model, chunk_indices
from gapfit.neighbours import Batch
from gapfit.report import error_table
from gapfit.soap import SoapSpec
from gapfit.sparse_gp import empty_factor, finish, fold_whitened, prior_factor
from gapfit.sparsify import select_sparse, select_sparse_by_config_type
from gapfit.terms import PairTerm, SoapTerm, Term, TripletTerm, block_K_mm, term_name

if TYPE_CHECKING:
    from dask.distributed import Client

    from gapfit.plan import FitPlan


KINDS = ("distance_2b", "angle_3b", "soap")  # term kinds, in a model's term order


class GAP:
    """Sparse GAP (2-body + SOAP), scikit-learn style: settings here, ``fit(frames)``.

    Several terms of one kind are independent GPs whose local energies add, as in
    gap_fit's ``gap={soap ... : soap ...}``; the model names them ``soap``,
    ``soap_2``, ... (``distance_2b``, ``distance_2b_2``, ...) in the order given.

    Args:
        soap: gap_fit-style SOAP string or mapping (see ``gapstring.SOAP_DEFAULTS``),
            or a list of them for several SOAP terms (e.g. two cutoffs); None means
            SOAP defaults, or no SOAP term when ``distance_2b`` or ``angle_3b`` is
            given.
        distance_2b: gap_fit-style 2-body string or mapping (``DISTANCE_2B_DEFAULTS``),
            or a list of them; None: no 2-body term.
        angle_3b: gap_fit-style 3-body string or mapping (``ANGLE_3B_DEFAULTS``,
            ``gapfit.angle_3b``); None: no 3-body term.
        default_sigma: (energy eV/atom, force eV/Å, virial eV/atom[, hessian ignored]).
        config_type_sigma: config_type -> (energy, force, virial) sigmas.
        sigma_per_atom: energy/virial sigmas are per atom (gap_fit default T).
        e0: explicit isolated-atom energies {Z or symbol: eV}; override ``e0_method``.
        e0_method: "isolated", "average", "least_squares" or "explicit".
        sparse_jitter: added to the diagonal of K_mm (eV^2).
        rnd_seed: seed of the sparse-point selection.
        chunk_atoms: atoms per streamed chunk (a memory knob; the model does not
            depend on it).
        keys: label key names in the input files.
        descriptor_backend: "jax" (default) or "dscribe": who computes the SOAP
            values from which sparse points are chosen (dscribe needs weighting
            poly or none; kernel rows always use the JAX SOAP's derivatives).
        baseline: a potential under the GP (gap_fit's ``core_ip_args``): an ASE
            calculator named ``lj``, ``emt`` or ``module:Class``; the GP learns the
            labels minus its energy, forces and virial, and predictions add them
            (``gapfit.baseline``). None: no baseline.
        baseline_kwargs: the baseline calculator's keyword arguments (a dict or
            JSON text), stored in the model file.
        progress: show progress bars.
        optimise_hyperparameters: False; True: choose each term's ``delta`` and one
            factor on the sigmas of each quantity (energy, force, virial) by the
            evidence (``gapfit.hyperparameters``); ``"per_config_type"``: one factor
            per quantity and config_type. The model stores the final values.
    """

    def __init__(
        self,
        soap: Settings | Sequence[Settings] | None = None,
        distance_2b: Settings | Sequence[Settings] | None = None,
        angle_3b: str | Mapping[str, Any] | None = None,
        default_sigma: Sequence[float] = (0.001, 0.05, 0.05, 0.0),
        config_type_sigma: Mapping[str, Sequence[float]] | None = None,
        sigma_per_atom: bool = True,
        e0: Mapping[int, float] | None = None,
        e0_method: str = "isolated",
        sparse_jitter: float = 1e-8,
        rnd_seed: int = 1,
        chunk_atoms: int = 512,
        keys: LabelKeys = LabelKeys(),
        descriptor_backend: str = "jax",
        baseline: str | None = None,
        baseline_kwargs: Mapping[str, Any] | str | None = None,
        progress: bool = False,
        optimise_hyperparameters: bool | str = False,
    ) -> None:
        self.soap = soap
        self.distance_2b = distance_2b
        self.angle_3b = angle_3b
        self.default_sigma = default_sigma
        self.config_type_sigma = config_type_sigma
        self.sigma_per_atom = sigma_per_atom
        self.e0 = e0
        self.e0_method = e0_method
        self.sparse_jitter = sparse_jitter
        self.rnd_seed = rnd_seed
        self.chunk_atoms = chunk_atoms
        self.keys = keys
        self.descriptor_backend = descriptor_backend
        self.baseline = baseline
        self.baseline_kwargs = baseline_kwargs
        self.progress = progress
        self.optimise_hyperparameters = optimise_hyperparameters

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` arguments as set (scikit-learn's convention; ``deep``
        is accepted for its ``clone`` and changes nothing: no nested estimators)."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    # ------------------------------------------------------------------------------
    def fit(
        self,
        frames: str | os.PathLike | Sequence[ase.Atoms | Frame],
        client: Client | None = None,
    ) -> GAP:
        """Fit to labelled frames (a file path, ASE Atoms or ``Frame`` objects).

        With a ``dask.distributed.Client``, fit on its workers instead: ``frames``
        must then be the path of an extxyz file that every worker can read; the
        model equals the serial one (``gapfit.distributed``).
        """
        if client is not None:
            from gapfit.distributed import fit_on_cluster  # imports this module

            return fit_on_cluster(self, frames, client)
        timings: dict[str, float] = {}
        memory: dict[str, float] = {}
        t0 = time.perf_counter()
        named = self._term_settings()
        mode = optimise_mode(self.optimise_hyperparameters)
        for kind, settings in named.values():
            if kind == "soap":
                check_backend(self.descriptor_backend, settings["weighting"])
        baseline = Baseline.of(self.baseline, self.baseline_kwargs)
        frames = self._frames(frames)
        sigmas = self._sigmas()
        species = tuple(sorted({int(z) for f in frames for z in f.numbers}))
        e0 = self._e0(frames, species, baseline)
        specs = term_specs(named, species)
        cutoff = max(s.neighbour_cutoff for s, _ in specs.values())
        timings["read"] = time.perf_counter() - t0
        memory["read"] = peak_rss_gib()

        chunks = chunk_indices([len(f.numbers) for f in frames], self.chunk_atoms)
        t0 = time.perf_counter()
        batches = padded_batches(
            frames, chunks, species, cutoff, triplet_cutoff=triplet_cutoff(specs)
        )
        data = self._descriptors(specs, frames, chunks, batches)
        timings["descriptors"] = time.perf_counter() - t0
        memory["descriptors"] = peak_rss_gib()

        t0 = time.perf_counter()
        terms = [
            self._term(name, *specs[name], settings, *data.pop(name), frames)
            for name, (_, settings) in named.items()
        ]
        K_mm = block_K_mm(terms)
        timings["sparsify"] = time.perf_counter() - t0
        memory["sparsify"] = peak_rss_gib()

        t0 = time.perf_counter()
        model = Model(tuple(terms), species, None, e0, baseline=baseline)
        if mode is None:
            L = prior_factor(K_mm, self.sparse_jitter)  # fails before the pass
            R_aug = empty_factor(len(K_mm))
            for A, b in scaled_chunks(
                model, frames, chunks, batches, sigmas, self.progress
            ):
                R_aug = fold_whitened(R_aug, A, b, L)
            model.posterior = finish(R_aug, L)
            timings["solve"] = time.perf_counter() - t0
            memory["solve"] = peak_rss_gib()
        else:  # rows folded per noise group; weights once delta and sigmas are chosen
            given = (self.default_sigma, self.config_type_sigma)
            best = optimise(
                model,
                frames,
                chunks,
                batches,
                sigmas,
                given,
                mode,
                self.sparse_jitter,
                self.progress,
            )
            model, final = best.model, best.final
            named = {
                name: (kind, {**settings, "delta": final["delta"][name]})
                for name, (kind, settings) in named.items()
            }
            timings.update(best.seconds)
            memory["solve"] = memory["hyperparameters"] = peak_rss_gib()

        model.info = {
            **self._info(named),
            "data": _data_summary(frames),
            "n_sparse": {term.name: term.sparse_counts() for term in terms},
        }
        if mode is not None:  # the settings that reproduce this model without search
            model.info["settings"].update(
                default_sigma=final["default_sigma"],
                config_type_sigma=final["config_type_sigma"],
            )
            model.info["hyperparameters"] = best.record
        self.model_ = model
        t0 = time.perf_counter()
        preds = fitted_predictions(model, frames, chunks, batches)
        self.training_errors_ = error_table(frames, preds)
        timings["training_errors"] = time.perf_counter() - t0
        memory["training_errors"] = peak_rss_gib()
        self.timings_ = timings
        self.memory_gib_ = memory
        model.info["timings_s"] = timings
        model.info["peak_rss_gib"] = memory
        model.info["training_errors"] = self.training_errors_
        return self

    def plan(self, frames: str | os.PathLike | Sequence[ase.Atoms | Frame]) -> FitPlan:
        """Predicted sizes, peak memory and wall time of ``fit(frames)``, without
        fitting: reads and validates the settings and data and builds neighbour lists
        only (see ``gapfit.plan``)."""
        from gapfit.plan import plan_fit  # plan.py imports this module

        return plan_fit(frames, self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model (see ``Model.save``)."""
        self._check_fitted()
        self.model_.save(path)

    def predict(self, structures: Sequence[Any], std: bool = False) -> list[dict]:
        """Predictions of the fitted model (see ``Model.predict``)."""
        self._check_fitted()
        return self.model_.predict(structures, std=std)

    # ------------------------------------------------------------------------------
    def _info(self, named: dict[str, tuple[str, dict]]) -> dict:
        """Package versions and the settings of a model's ``info`` from the terms'
        settings ``{name: (kind, settings)}`` (``GAP`` arguments by term name, None
        for an absent kind: ``gapfit.update`` rebuilds the sigmas from them)."""
        return {
            "gapfit_version": __version__,
            "versions": {
                "jax": jax.__version__,
                "numpy": np.__version__,
                "ase": ase.__version__,
                "python": platform.python_version(),
            },
            "settings": {
                **dict.fromkeys(KINDS),
                **{name: settings for name, (_, settings) in named.items()},
                "default_sigma": list(self.default_sigma),
                "config_type_sigma": {
                    k: list(v) for k, v in (self.config_type_sigma or {}).items()
                },
                "sigma_per_atom": self.sigma_per_atom,
                "e0_method": self.e0_method,
                "sparse_jitter": self.sparse_jitter,
                "rnd_seed": self.rnd_seed,
                "descriptor_backend": self.descriptor_backend,
            },
        }

    def _term(
        self,
        name: str,
        spec: SoapSpec | PairSpec | TripletSpec,
        kernel: DotProductKernel | SEKernel | ARDKernel,
        settings: dict,
        values: np.ndarray,
        types: np.ndarray,
        frames: Sequence[Frame],
    ) -> Term:
        """The term ``name`` with its sparse points chosen among its descriptors of
        the data (``_descriptors``)."""
        if isinstance(spec, SoapSpec):
            idx = sparse_environments(
                values, types, frames, settings, self.rnd_seed, spec.centre_index
            )
            X_hat, _ = normalise(jnp.asarray(values[idx]))
            return SoapTerm(spec, kernel, np.asarray(X_hat), types[idx], name)
        if isinstance(spec, TripletSpec):
            return triplet_term(spec, kernel, settings, values, types, self.rnd_seed)
        summary = PairSummary.of(spec, values, types, settings["sparse_method"])
        return pair_term(spec, kernel, settings, summary, self.rnd_seed, name)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise GapfitError("this GAP is not fitted yet; call fit(frames) first.")

    def _frames(self, frames) -> list[Frame]:
        if isinstance(frames, str | os.PathLike):
            return read_frames(frames, self.keys, require=("energy", "forces"))
        frames = list(frames)
        if not frames:
            raise GapfitError("fit() got no frames; pass labelled structures.")
        return as_frames(frames, self.keys, require=("energy", "forces"))

    def _e0(
        self,
        frames: Sequence[Frame],
        species: tuple[int, ...],
        baseline: Baseline | None,
    ) -> dict[int, float]:
        """e0 by ``e0_method`` from the energies the GP learns (less the baseline's)."""
        learnt = frames if baseline is None else baseline.residual(frames)
        return fit_e0(learnt, self.e0_method, species, self.e0)

    def _sigmas(self) -> Sigmas:
        ds = list(self.default_sigma)
        if len(ds) not in (3, 4):
            raise GapfitError(
                f"default_sigma has {len(ds)} values {ds}; give energy force virial "
                "[hessian], e.g. 0.001 0.05 0.05 0.0."
            )
        per_type = {
            k: tuple(float(x) for x in list(v)[:3])
            for k, v in (self.config_type_sigma or {}).items()
        }
        return Sigmas(
            float(ds[0]), float(ds[1]), float(ds[2]), per_type, self.sigma_per_atom
        )

    def _term_settings(self, kind: str | None = None) -> dict[str, tuple[str, dict]]:
        """Validated settings of every term (or of the terms of ``kind``),
        ``{name: (kind, settings)}`` in term order (``KINDS``' order, then as given;
        names ``soap``, ``soap_2``, ...). With no term given, one SOAP term with the
        defaults."""
        given = {kind: _as_list(getattr(self, kind)) for kind in KINDS}
        if not any(given.values()):
            given["soap"] = [None]
        if len(given["angle_3b"]) > 1:
            raise GapfitError(
                f"{len(given['angle_3b'])} angle_3b terms given; {ONE_ANGLE_3B}"
            )
        kinds = KINDS if kind is None else (kind,)
        return {
            term_name(k, i): (k, _PARSERS[k](value))
            for k in kinds
            for i, value in enumerate(given[k], 1)
        }

    def _triplet_settings(self) -> dict | None:
        """Validated 3-body settings (None for no 3-body term)."""
        return self._term_settings().get("angle_3b", (None, None))[1]

    def _descriptors(
        self,
        specs: dict,
        frames: Sequence[Frame],
        chunks: Sequence[Sequence[int]],
        batches: Iterable[Batch],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each term's descriptors of the data, ``{name: (values, types)}``: a SOAP
        term's ``(n_env, F)`` and species index ``(n_env,)`` of every environment, a
        2-body term's distances ``(n,)`` Å and pair types of every pair within the
        neighbour cutoff, the 3-body term's ``(n, 3)`` descriptors and types of its
        triplets (``batches``: one per chunk, each used once, so they may be
        streamed)."""
        parts: dict[str, tuple[list, list]] = {name: ([], []) for name in specs}
        species = next(iter(specs.values()))[0].species
        for chunk, batch in tqdm(
            zip(chunks, batches, strict=True),
            total=len(chunks),
            desc="descriptors",
            unit="chunk",
            disable=not self.progress,
        ):
            real = batch.atom_mask > 0
            arrays = None  # the batch's device arrays, made once for the SOAP terms
            for name, (spec, _) in specs.items():
                values, types = parts[name]
                if isinstance(spec, SoapSpec):
                    if self.descriptor_backend == "dscribe":
                        values.append(soap_values(spec, [frames[k] for k in chunk]))
                    else:
                        arrays = arrays or batch_arrays(batch)
                        values.append(np.asarray(descriptors_jit(spec, arrays))[real])
                    types.append(batch.species[real])
                elif isinstance(spec, TripletSpec):
                    d, t = batch_descriptors(spec, batch)
                    values.append(d)
                    types.append(t)
                else:
                    keep = (batch.canonical * batch.pair_mask) > 0
                    values.append(np.linalg.norm(batch.D[keep], axis=1))
                    types.append(
                        pair_type(
                            batch.species[batch.centre[keep]],
                            batch.neighbour_species[keep],
                            len(species),
                        )
                    )
            release_freed()
        return {
            name: (np.concatenate(values), np.concatenate(types))
            for name, (values, types) in parts.items()
        }


def sparse_environments(
    X: np.ndarray,
    Z: np.ndarray,
    frames: Sequence[Frame],
    soap: dict,
    seed: int,
    centre: int | None = None,
) -> np.ndarray:
    """Indices of the SOAP sparse points among the environments ``X`` (frame order)
    of species index ``Z`` (``centre`` alone if given): ``n_sparse`` per species,
    or ``config_type_n_sparse``'s per config_type."""
    method, counts = soap["sparse_method"], soap["config_type_n_sparse"]
    rows = np.arange(len(Z)) if centre is None else np.flatnonzero(Z == centre)
    X, Z = (X, Z) if centre is None else (X[rows], Z[rows])
    if counts is None:
        return rows[select_sparse(X, Z, soap["n_sparse"], method, seed)]
    types = np.repeat([f.config_type for f in frames], [len(f.numbers) for f in frames])
    chosen = select_sparse_by_config_type(X, Z, types[rows], counts, method, seed)
    return rows[chosen]


def term_specs(named: dict[str, tuple[str, dict]], species: tuple[int, ...]) -> dict:
    """``{term name: (descriptor spec, kernel)}`` from validated settings
    ``{name: (kind, settings)}`` (a ``theta_fac`` kernel has lengths 1 until the fit
    measures the data)."""
    return {
        name: _SPEC_OF[kind](settings, species)
        for name, (kind, settings) in named.items()
    }


def _pair_spec(pair: dict, species: tuple[int, ...]) -> tuple[PairSpec, SEKernel]:
    """The 2-body spec and kernel of parsed settings; gap_fit's ``distance_Nb``
    (``order=2``) sums its kernel over the orders of same-species pairs and, with
    ``compact_clusters=F``, counts each pair once."""
    nb = bool(pair.get("order"))
    return (
        PairSpec(
            species,
            pair["cutoff"],
            pair["cutoff_transition_width"],
            _pair_of(pair, species),
            visits=1 if nb and not pair["compact_clusters"] else 2,
            permutations=nb,
        ),
        SEKernel(pair["delta"], pair["theta_uniform"] or 1.0),
    )


def _pair_of(pair: dict, species: tuple[int, ...]) -> tuple[int, ...]:
    """The species pair an ``add_species=F`` 2-body term covers (``Z1``, ``Z2``, or
    distance_Nb's ``Z``), ``()`` for every pair (``add_species=T``, or data of one
    species)."""
    if pair["add_species"]:
        return ()
    nb = bool(pair.get("order"))
    chosen = tuple(pair["Z"]) if nb else (pair.get("Z1", 0), pair.get("Z2", 0))
    keys = "distance_Nb Z" if nb else "distance_2b Z1/Z2"
    _in_data([z for z in chosen if z], species, keys)
    if len(species) == 1:
        return ()
    if 0 in chosen:
        given = (
            f"Z={{{chosen[0]} {chosen[1]}}}" if nb else f"Z1={chosen[0]} Z2={chosen[1]}"
        )
        use = "Z={Z1 Z2}" if nb else "Z1= and Z2="
        raise GapfitError(
            f"{keys.split()[0]} add_species=F without both atomic numbers ({given}) "
            f"on data of species {_symbols(species)}: one GP over pairs of different "
            f"species is not implemented; give {use} (one term per pair), or "
            "add_species=T."
        )
    return tuple(sorted(chosen))


def _centre_of(soap: dict, species: tuple[int, ...]) -> int:
    """The central species an ``add_species=F`` SOAP term covers, 0 for every one
    (``add_species=T``, or data of one species), its ``species_Z`` checked against
    the data's species (gapfit's density has a channel for each)."""
    if soap["add_species"]:
        return 0
    centre, listed = soap.get("Z", 0), soap.get("species_Z")
    _in_data([centre] if centre else [], species, "SOAP Z")
    missing = sorted(set(species) - set(listed or species))
    if missing:
        raise GapfitError(
            f"SOAP species_Z={{{' '.join(map(str, listed))}}} leaves out "
            f"{_symbols(missing)}, which the training data has; gapfit's SOAP has a "
            "density channel for every species of the data: list them all."
        )
    if len(species) == 1:
        return 0
    if listed is None:
        raise GapfitError(
            f"SOAP add_species=F without species_Z on data of species "
            f"{_symbols(species)}: one density for every species (gap_fit's "
            f"species_Z=0) is not implemented; add n_species={len(species)} "
            "species_Z={" + " ".join(map(str, species)) + "}."
        )
    if not centre:
        raise GapfitError(
            f"SOAP add_species=F without Z on data of species {_symbols(species)}: "
            "one GP over every central species is not implemented; give Z= (one "
            "term per species), or add_species=T."
        )
    return centre


def _in_data(numbers: Sequence[int], species: Sequence[int], what: str) -> None:
    """Every atomic number in ``numbers`` is one of the data's ``species``."""
    absent = sorted(set(numbers) - set(species))
    if absent:
        raise GapfitError(
            f"{what}: no {_symbols(absent)} atom in the training data (species "
            f"{_symbols(species)}); drop that term or fix the atomic number."
        )


def _symbols(numbers: Iterable[int]) -> str:
    return ", ".join(chemical_symbols[z] for z in numbers)


def _triplet_spec(
    triplet: dict, species: tuple[int, ...]
) -> tuple[TripletSpec, ARDKernel]:
    if not triplet.get("add_species", True) and len(species) > 1:
        raise GapfitError(
            f"angle_3b add_species=F on data of species {_symbols(species)}: one GP "
            "over triplets of different species is not implemented; use "
            "add_species=T."
        )
    form = "distances" if triplet.get("order") else "angle"
    if form == "distances" and len(species) > 1:
        raise GapfitError(
            f"distance_Nb order=3 on data of species {_symbols(species)}: gapfit "
            "reads it on data of one element, where gap_fit's kernel sums over all 6 "
            "orders of a triangle's atoms; on several elements gap_fit sums over "
            "orders of its sorted elements that do not follow the triangle's atoms "
            "(its central atom stays first), which gapfit does not reproduce: use "
            "angle_3b there."
        )
    theta = triplet["theta_uniform"] or 1.0
    spec = TripletSpec(
        species, triplet["cutoff"], triplet["cutoff_transition_width"], form
    )
    return spec, ARDKernel(triplet["delta"], (theta,) * 3)


def _soap_spec(
    soap: dict, species: tuple[int, ...]
) -> tuple[SoapSpec, DotProductKernel]:
    return (
        SoapSpec(
            species=species,
            cutoff=soap["cutoff"],
            n_max=soap["n_max"],
            l_max=soap["l_max"],
            atom_sigma=soap["atom_sigma"],
            weighting=soap["weighting"],
            cutoff_transition_width=soap["cutoff_transition_width"],
            poly_r0=soap["poly_r0"],
            poly_c=soap["poly_c"],
            poly_m=soap["poly_m"],
            centre=_centre_of(soap, species),
        ),
        DotProductKernel(soap["delta"], soap["zeta"]),
    )


_SPEC_OF = {"distance_2b": _pair_spec, "angle_3b": _triplet_spec, "soap": _soap_spec}
_PARSERS = {
    "distance_2b": gapstring.parse_distance_2b,
    "angle_3b": gapstring.parse_angle_3b,
    "soap": gapstring.parse_soap,
}


def _as_list(value: Settings | Sequence[Settings] | None) -> list:
    """One term's settings, or a list of them, as a list (None: none)."""
    if value is None:
        return []
    if isinstance(value, str | Mapping):
        return [value]
    return list(value)


def triplet_term(
    spec: TripletSpec,
    kernel: ARDKernel,
    triplet: dict,
    d: np.ndarray,
    types: np.ndarray,
    seed: int,
) -> TripletTerm:
    """The 3-body term from the descriptors ``d (n, 3)`` and ``types`` of the data's
    triplets: ``theta_fac`` lengths measured on their ``distinct_triplets``, sparse
    points chosen among them (``kernel``'s delta kept)."""
    d, types = distinct_triplets(d, types)
    if triplet["theta_fac"] is not None:
        theta = theta_from_factor(spec, d, types, triplet["theta_fac"])
        kernel = ARDKernel(kernel.delta, theta)
    Z_d, Z_t = triplet_sparse_points(
        d, types, triplet["n_sparse"], triplet["sparse_method"], seed
    )
    return TripletTerm(spec, kernel, Z_d, Z_t)


def pair_term(
    spec: PairSpec,
    kernel: SEKernel,
    pair: dict,
    summary: PairSummary,
    seed: int,
    name: str = "distance_2b",
) -> PairTerm:
    """The 2-body term from the ``summary`` of its data's distances: ``theta_fac``
    lengths measured on them, sparse points chosen among them (``kernel``'s delta
    kept)."""
    if pair["theta_fac"] is not None:
        theta = theta_from_ranges(summary.ranges, pair["theta_fac"])
        kernel = SEKernel(kernel.delta, theta)
    points = summary.sparse_points(spec, pair["n_sparse"], seed)
    return PairTerm(spec, kernel, *points, name)


def triplet_cutoff(specs: dict) -> float:
    """Å: the 3-body term's cutoff, 0 without one."""
    cutoffs = [s.cutoff for s, _ in specs.values() if isinstance(s, TripletSpec)]
    return max(cutoffs, default=0.0)


def _data_summary(frames: Sequence[Frame]) -> dict:
    """Counts per config_type and a sha256 of geometry + labels."""
    return merge_data_parts([data_part(frames)])


def data_part(frames: Sequence[Frame]) -> dict:
    """Data summary of consecutive frames before merging: counts, and a sha256 digest
    of each frame's geometry + labels (parts from workers merge in order)."""
    counts: dict[str, int] = {}
    digests = []
    for f in frames:
        counts[f.config_type] = counts.get(f.config_type, 0) + 1
        h = hashlib.sha256()
        for arr in (f.numbers, f.positions, f.cell, f.forces, f.virial, f.force_mask):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=float).tobytes())
        h.update(repr(f.energy).encode())
        digests.append(h.digest())
    return {
        "n_configs": len(frames),
        "n_atoms": int(sum(len(f.numbers) for f in frames)),
        "n_energies": sum(f.energy is not None for f in frames),
        "n_force_components": int(sum(3 * f.fitted_atoms().size for f in frames)),
        "n_virials": sum(f.virial is not None for f in frames),
        "config_types": counts,
        "digests": digests,
    }


def merge_data_parts(parts: Sequence[dict]) -> dict:
    """The data summary of the frames of ``data_part``s in order: summed counts and
    ``sha256`` = sha256 of the frames' digests in order."""
    counts: dict[str, int] = {}
    h = hashlib.sha256()
    for part in parts:
        for name, n in part["config_types"].items():
            counts[name] = counts.get(name, 0) + n
        h.update(b"".join(part["digests"]))
    keys = ("n_configs", "n_atoms", "n_energies", "n_force_components", "n_virials")
    return {
        **{k: int(sum(part[k] for part in parts)) for k in keys},
        "config_types": counts,
        "sha256": h.hexdigest(),
    }
