"""The persistent compilation cache: where it goes, and that it can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import jax, gapfit
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print(jax.config.jax_compilation_cache_dir)
print(float(jax.jit(lambda x: x * 2.0 + 1.0)(3.0)))
"""


def run(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    base.pop("GAPFIT_COMPILE_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_compiled_programs_are_cached_under_the_user_cache(tmp_path: Path) -> None:
    lines = run({"XDG_CACHE_HOME": str(tmp_path)})
    where = tmp_path / "gapfit" / "jax"
    assert lines == [str(where), "7.0"]
    assert any(where.iterdir())  # the jitted program was written


def test_users_own_cache_dir_is_kept(tmp_path: Path) -> None:
    own = tmp_path / "own"
    lines = run(
        {"XDG_CACHE_HOME": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(own)}
    )
    assert lines[0] == str(own)
    assert not (tmp_path / "gapfit").exists()


def test_cache_can_be_turned_off(tmp_path: Path) -> None:
    lines = run({"XDG_CACHE_HOME": str(tmp_path), "GAPFIT_COMPILE_CACHE": "off"})
    assert lines == ["None", "7.0"]
    assert not (tmp_path / "gapfit").exists()
