"""JAX settings that gapfit needs before its first computation.

float64 everywhere (``jax_enable_x64``), and on a GPU deterministic reductions: XLA's
GPU scatter-adds (forces and virials summed over neighbour pairs, kernel gradients
summed over environments) otherwise use atomics whose order changes from run to run,
so two identical fits or predictions differ in the last digits (measured on an H100:
forces 1e-12 eV/Å apart, energy stds 1e-8 relative, and active learning's picks
differing after the first batch). XLA reads its flags when the first device is set
up, so this runs when gapfit is imported; set ``XLA_FLAGS`` yourself with
``--xla_gpu_deterministic_ops=false`` for the faster, run-to-run varying kernels.
"""

from __future__ import annotations

import os

import jax

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"


def configure() -> None:
    """Turn on float64 and, unless ``XLA_FLAGS`` already names it, deterministic GPU
    ops (module docstring). No effect on the GPU flag once a device is set up."""
    jax.config.update("jax_enable_x64", True)
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}=true".strip()
