"""JAX settings made on import (gapfit.backend): float64, deterministic GPU ops, and
a user's own XLA flag kept."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp

import gapfit  # noqa: F401  (the import configures JAX)


def test_import_sets_float64_and_deterministic_gpu_ops() -> None:
    assert jnp.ones(2).dtype == jnp.float64
    assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"].split()


def test_a_users_own_flag_is_kept() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_gpu_deterministic_ops=false")
    code = "import os, gapfit; print(os.environ['XLA_FLAGS'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["--xla_gpu_deterministic_ops=false"]
