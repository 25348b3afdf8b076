"""The work directory of an active-learning run: its outputs and its checkpoint.

After every step the run writes, each file atomically (temporary file + rename):

    model.npz       the current model (``Model.save``; no capacity padding), with
                    the std calibration fitted to the held-out predictions
    labelled.xyz    labelled frames (extxyz: energy eV, forces eV/Å, stress eV/Å³,
                    config_type, source, and the held-out prediction of each frame
                    made just before its label: gap_* fields, ``gapfit.heldout``)
    log.jsonl       one JSON object per event: labelled, skipped (with the reason),
                    update, refit, resumed, stop
    curve.csv       the learning curve; curve.png its plot (with a test set; written
                    when the run stops)
    state.json      the loop's settings and counters (readable copy)
    checkpoint.npz  all of the above that a resume needs, in ONE file, so that a kill
                    between two writes can never pair a model with the wrong data;
                    also the exact (float64) sampler state
    pending.xyz     labels of the current step not yet in the model, written after
                    each label and reused on resume: a kill loses no label
    pool.xyz, test.xyz, start.xyz   copies of the inputs, so a resume needs none
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import ase
import ase.io
import numpy as np

from gapfit.errors import GapfitError
from gapfit.model import atomic_write

FORMAT = "gapfit-learn"
FORMAT_VERSION = 1


def xyz_text(images: Sequence[ase.Atoms]) -> str:
    """Extended XYZ text of ``images`` (labels from their calculators and info)."""
    if not images:
        return ""
    buf = io.StringIO()
    ase.io.write(buf, list(images), format="extxyz")
    return buf.getvalue()


def read_xyz_text(text: str) -> list[ase.Atoms]:
    """The images of extended XYZ text (labels in ``atoms.calc.results``)."""
    if not text.strip():
        return []
    return list(ase.io.read(io.StringIO(text), index=":", format="extxyz"))


class Workdir:
    """Reads and writes the files of one run in ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def has_run(self) -> bool:
        return self.file("checkpoint.npz").is_file()

    def create(self) -> None:
        """Make the directory; refuse one that holds a run already."""
        if self.has_run():
            raise GapfitError(
                f"{self.path} already holds an active-learning run (checkpoint.npz); "
                "continue it with --resume (resume=True) or choose another --workdir."
            )
        self.path.mkdir(parents=True, exist_ok=True)

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), text.encode())

    def read_text(self, name: str) -> str:
        path = self.file(name)
        return path.read_text() if path.is_file() else ""

    def save(
        self,
        state: dict,
        labelled: str,
        log: Sequence[dict],
        model: bytes,
        sampler: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write the outputs, then the checkpoint (see the module docstring).

        Args:
            state: JSON-able loop state. labelled: extxyz text of the labelled frames.
            log: events. model: bytes of the model file, already written as
            model.npz. sampler: arrays to keep.
        """
        state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
        log_text = "".join(json.dumps(e) + "\n" for e in log)
        self.write_text("labelled.xyz", labelled)
        self.write_text("log.jsonl", log_text)
        self.write_text("state.json", json.dumps(state, indent=1) + "\n")
        buf = io.BytesIO()
        np.savez(
            buf,
            state=_bytes(json.dumps(state).encode()),
            labelled=_bytes(labelled.encode()),
            log=_bytes(log_text.encode()),
            model=_bytes(model),
            **{f"sampler.{k}": np.asarray(v) for k, v in (sampler or {}).items()},
        )
        atomic_write(self.file("checkpoint.npz"), buf.getvalue())

    def load(self) -> tuple[dict, str, list[dict], bytes, dict[str, np.ndarray]]:
        """``(state, labelled extxyz text, log, model bytes, sampler arrays)`` of the
        last checkpoint."""
        if not self.has_run():
            raise GapfitError(
                f"{self.path} holds no active-learning run to resume (no "
                "checkpoint.npz); start one without --resume."
            )
        try:
            with np.load(self.file("checkpoint.npz"), allow_pickle=False) as z:
                members = {k: z[k] for k in z.files}
            text = {
                k: members[k].tobytes().decode() for k in ("state", "log", "labelled")
            }
            state = json.loads(text["state"])
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            raise GapfitError(
                f"{self.file('checkpoint.npz')} is unreadable ({err}); the run cannot "
                "be resumed: start a new one in another --workdir."
            ) from None
        if state.get("format") != FORMAT or state.get("format_version", 0) > (
            FORMAT_VERSION
        ):
            raise GapfitError(
                f"{self.file('checkpoint.npz')} is not a gapfit-learn checkpoint of "
                f"version <= {FORMAT_VERSION}; resume it with the gapfit that wrote it."
            )
        log = [json.loads(x) for x in text["log"].splitlines() if x]
        sampler = {
            k.split(".", 1)[1]: v
            for k, v in members.items()
            if k.startswith("sampler.")
        }
        return state, text["labelled"], log, members["model"].tobytes(), sampler


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)
