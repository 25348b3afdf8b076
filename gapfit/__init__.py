"""gapfit: Gaussian Approximation Potentials (sparse GP on SOAP) in JAX."""

from __future__ import annotations

from gapfit.backend import configure

configure()

from gapfit.jit_cache import use_compile_cache  # noqa: E402

use_compile_cache()

from gapfit.errors import GapfitError  # noqa: E402

__version__ = "0.1.0"

# after __version__: gapfit.fit reads it at import time
from gapfit.calculator import GAPCalculator  # noqa: E402
from gapfit.fit import GAP  # noqa: E402
from gapfit.model import Model  # noqa: E402

__all__ = ["GAP", "GAPCalculator", "GapfitError", "Model", "__version__"]
