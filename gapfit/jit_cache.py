"""A persistent cache of compiled XLA programs, shared by every gapfit process.

Compilation is a large part of a small fit or a short MD run (about 16 s of a 41 s
cu_emt fit on 2 cores). With the cache on, a later process that jit-compiles the same
program for the same shapes (a refit of the same data, a calculator on a cell of the
same size, each worker of a dask cluster) loads it from disk instead. The cache key
covers the program, its shapes, the compiler options and the JAX version, so a hit
gives the same numbers as a compilation.

Where: ``$JAX_COMPILATION_CACHE_DIR`` or ``jax.config`` when the user set one,
otherwise ``$XDG_CACHE_HOME/gapfit/jax`` (``~/.cache/gapfit/jax``), at most
``MAX_BYTES`` (least recently used entries go first). ``GAPFIT_COMPILE_CACHE=off``
turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

MAX_BYTES = 2 * 1024**3


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/gapfit/jax``, ``~/.cache/gapfit/jax`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gapfit" / "jax"


def use_compile_cache() -> Path | None:
    """Turn on the persistent compilation cache (module docstring); returns its
    directory, or None when it is off or the directory cannot be made."""
    if os.environ.get("GAPFIT_COMPILE_CACHE", "").lower() in ("off", "0", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own choice
        return Path(jax.config.jax_compilation_cache_dir)
    path = default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: compile every time, as without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if jax.config.jax_compilation_cache_max_size < 0:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
