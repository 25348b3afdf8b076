import gc
import os

# The suite compiles hundreds of small XLA programs, most of them once: at XLA's
# lowest backend optimisation level they compile about a quarter faster (LLVM's
# expensive passes off). The arithmetic is the same operations; every test's
# tolerance holds at either level (the suite passes both ways). Set before JAX
# starts its backend, after a user's own XLA_FLAGS.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drop each test module's compiled XLA programs after it. One pytest process
    otherwise holds every program of the suite; each loaded CPU executable maps
    memory regions, and near the end of the suite the process crashed inside XLA
    (an abort, then a segfault, in loading a cached executable), as when the
    kernel's limit on memory maps (vm.max_map_count, 65530 here) is reached."""
    yield
    jax.clear_caches()
    gc.collect()
