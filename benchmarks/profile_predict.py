"""Where a 108-atom prediction's time goes: the mean, the stds, and their parts.

    python benchmarks/profile_predict.py [--model potentials/cu_emt/model.npz]

Times (median and min of ``--repeat`` calls, after a warm-up call) the host work of a
call (neighbour list, pair tables; ``Model.predict`` hands the host arrays to the
jitted call), the jitted mean, the jitted mean and stds, the mean and energy stds
alone, each term's kernel rows and prior variances (all; and its mean with the
energies' rows and priors), and, for the SOAP term,
programs that stop part-way: the descriptor, the descriptor and its per-pair
gradients ``dP``, the force rows alone, the force prior variances alone, and the
main matrix product of the force rows (``dP`` against the sparse points, timed alone
on random data of the same shape, with its multiply-add count). Each program is
jitted on its own, so XLA drops what its outputs do not need; the parts overlap and
do not add up to the whole. The cell is the benchmark's rattled 108-atom one
(``bench_fit.bench_cell``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from bench_fit import bench_cell
from threadpoolctl import threadpool_limits

from gapfit.blocks import descriptors
from gapfit.model import Model, _stds
from gapfit.neighbours import make_batch
from gapfit.variance import incoming_derivatives, soap_rows_and_priors


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and min ms of ``repeat`` calls of ``fn`` (results waited for)."""
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(1e3 * (time.perf_counter() - t))
    return float(np.median(ts)), float(np.min(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="potentials/cu_emt/model.npz")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    model = Model.load(args.model)
    cell = bench_cell("si" if 14 in model.species else "cu")

    def host():  # as Model.predict: numpy arrays for the jitted call
        batch = make_batch([cell], model.species, model.neighbour_cutoff, ["cell"])
        return batch, model.tables(batch, model.table_widths(batch))

    batch, host_tables = host()
    b, tables = jax.device_put((batch._asdict(), host_tables))  # parts: on the device
    own = dict(zip((t.name for t in model.terms), tables, strict=True))
    rows: list[tuple[str, Callable[[], object]]] = [
        ("host: neighbours, tables", lambda: host()[1]),
        ("mean (E, F, virial)", lambda: model.mean(b, tables)),
        ("mean and stds", lambda: model.mean_and_std(b, tables)),
        ("mean and energy stds", lambda: model.mean_and_energy_std(b, tables)),
    ]
    for term, w in zip(model.terms, model._weights, strict=True):
        f = jax.jit(lambda b, t, term=term: term.rows_and_priors(b, t))
        t = own[term.name]
        rows.append((f"{term.name}: rows and priors", lambda f=f, t=t: f(b, t)))
        e = jax.jit(
            lambda b, t, w, term=term: term.mean_and_energy_fn(
                term.spec, term.kernel, *term._z, w, b, t
            )
        )
        label = f"{term.name}: mean, energy rows, priors"
        rows.append((label, lambda e=e, w=w, t=t: e(b, t, w)))
    parts = tuple(t.rows_and_priors(b, own[t.name]) for t in model.terms)
    rows.append(("stds from rows (solves)", lambda: _stds(parts, model.posterior)))
    soap = model.term("soap")
    flops = ""
    if soap is not None:
        own_tables = own["soap"]
        A, K = own_tables.incoming.shape
        spec, kernel, z = soap.spec, soap.kernel, soap._z
        whole = jax.jit(lambda b, t: soap_rows_and_priors(spec, kernel, *z, b, t))
        d0 = jax.jit(lambda b: descriptors(spec, b))
        d1 = jax.jit(lambda b, t: incoming_derivatives(spec, b, t)[2])
        fr = jax.jit(lambda b, t: whole(b, t)[0].forces)
        fp = jax.jit(lambda b, t: whole(b, t)[1].forces)
        rng = np.random.default_rng(0)
        M, F = soap.sparse_X.shape
        dP = jnp.asarray(rng.normal(size=(A * K, 3, F)))
        Z = jnp.asarray(rng.normal(size=(M, F)))
        gemm = jax.jit(lambda dP, Z: jnp.einsum("pkf,mf->pkm", dP, Z))
        rows += [
            ("soap: descriptor", lambda: d0(b)),
            ("soap: descriptor and dP", lambda: d1(b, own_tables)),
            ("soap: force rows", lambda: fr(b, own_tables)),
            ("soap: force prior variances", lambda: fp(b, own_tables)),
            ("soap: force rows' GEMM alone", lambda: gemm(dP, Z)),
        ]
        flops = (
            f"force rows' GEMM: ({A} x {K} x 3) x {F} x {M} = "
            f"{A * K * 3 * F * M:.2e} multiply-adds"
        )
    n_atoms, n_pairs = int(batch.atom_mask.sum()), int(batch.pair_mask.sum())
    print(
        f"{args.model}: {n_atoms} atoms, {n_pairs} pairs, pair tables "
        + ", ".join(f"{n} {t.incoming.shape}" for n, t in own.items())
        + f", {jax.devices()[0].platform}"
    )
    print(f"{'part':34s} {'median ms':>10s} {'min ms':>8s}")
    # as Model.predict with stds: BLAS to one thread during the solves
    with threadpool_limits(1, user_api="blas"):
        for name, fn in rows:
            med, low = timed(fn, args.repeat)
            print(f"{name:34s} {med:10.1f} {low:8.1f}")
    if flops:
        print(flops)


if __name__ == "__main__":
    main()
