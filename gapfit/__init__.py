"""gapfit: Gaussian Approximation Potentials (sparse GP on SOAP) in JAX."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

from gapfit.errors import GapfitError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GapfitError", "__version__"]
