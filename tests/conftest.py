import gc

import jax
import pytest

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
