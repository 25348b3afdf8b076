"""Normalised dot-product kernel on SOAP (gap_fit's ``covariance_type=dot_product``).

For environments with SOAP vectors p, p' and central species s, s'::

    k(p, p') = delta^2 (p.p' / |p||p'|)^zeta  [s == s']

``delta`` (eV) is the energy scale of one local energy; environments of different
central species are independent (gap_fit's ``add_species=T``). Bartók, Payne, Kondor,
Csányi, PRL 104, 136403 (2010); Bartók, Kondor, Csányi, PRB 87, 184115 (2013).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from gapfit.errors import GapfitError


def delta_leaf_pytree(cls: type, static: tuple[str, ...]) -> type:
    """Register the frozen dataclass ``cls`` as a JAX pytree whose ``delta`` is a leaf
    and whose fields ``static`` are static: jitted functions take the kernel as an
    ordinary argument, so a new delta (a re-optimisation) reuses their compiled
    programs instead of compiling (and keeping) new ones."""

    def flatten(k):
        return (k.delta,), tuple(getattr(k, f) for f in static)

    def unflatten(aux, children):  # no __post_init__: delta may be a tracer
        k = object.__new__(cls)
        object.__setattr__(k, "delta", children[0])
        for f, v in zip(static, aux, strict=True):
            object.__setattr__(k, f, v)
        return k

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


@partial(delta_leaf_pytree, static=("zeta",))
@dataclass(frozen=True)
class DotProductKernel:
    """``delta`` in eV; integer ``zeta`` >= 1."""

    delta: float = 1.0
    zeta: int = 4
    per_type = False  # no length scales (the 2- and 3-body kernels' theta_fac)

    def __post_init__(self) -> None:
        if not self.delta > 0:
            raise GapfitError(f"delta={self.delta} eV must be > 0.")
        if int(self.zeta) != self.zeta or self.zeta < 1:
            raise GapfitError(
                f"zeta={self.zeta}: gapfit supports integer zeta >= 1 (e.g. 2 or 4)."
            )
        object.__setattr__(self, "zeta", int(self.zeta))


@jax.jit
def normalise(X: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit rows ``X / |X|`` and the norms ``|X|`` of ``X (n, d)``."""
    norm = jnp.sqrt(jnp.sum(X * X, axis=-1))
    return X / norm[..., None], norm


def cosine(X_hat: jax.Array, Y_hat: jax.Array) -> jax.Array:
    """``q = X_hat Y_hat^T`` for unit rows ``X_hat (n, d)``, ``Y_hat (m, d)``."""
    return X_hat @ Y_hat.T


def same_species(s: jax.Array, t: jax.Array) -> jax.Array:
    """``(n, m)`` 1.0 where species indices agree."""
    return (s[:, None] == t[None, :]).astype(jnp.float64)


@jax.jit
def kernel_block(
    kernel: DotProductKernel,
    X_hat: jax.Array,
    s: jax.Array,
    Y_hat: jax.Array,
    t: jax.Array,
) -> jax.Array:
    """``K (n, m) = delta^2 q^zeta [s == t]`` in eV^2 for unit rows."""
    return kernel.delta**2 * cosine(X_hat, Y_hat) ** kernel.zeta * same_species(s, t)
