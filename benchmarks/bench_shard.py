"""The sharded basis under torchrun (issue 21): the 26M GPT's top-5 (bench_large.py's model,
tokens, solver and tolerance) within a budget per process, in one process and in W, where
each process keeps 1/W of every basis vector (sharpcli/linalg/shard.py) and measures its
half of the tokens. Products, restarts, basis vectors held, seconds and each process's peak
RSS; the eigenvalues against one process's.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/bench_shard.py --vectors 10
    OMP_NUM_THREADS=2 python benchmarks/bench_shard.py --vectors 10      # the one-process row

Each launch appends a JSON line to benchmarks/out/shard.jsonl (rank 0 writes it).
"""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as dist

from bench_large import K, TOL, rss
from common import OUT, base_parser, machine_line, setup


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--vectors", type=int, default=10, help="budget per process, in vectors")
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--length", type=int, default=64)
    args = p.parse_args()
    from gpt import make_gpt, next_token_loss, token_batch
    from sharpcli.distributed import process_group
    from sharpcli.hessian import HessianOperator
    from sharpcli.hessian.params import full_precision
    from sharpcli.linalg import lanczos_top_k
    from sharpcli.spectra.compute import BUDGETED_MAX_ITER

    setup(args.threads)
    with process_group("cpu", timeout=3600) as d:
        model = make_gpt(**(dict(width=64, layers=2, heads=4, vocab=1024) if args.quick else {}))
        x, y = token_batch(model.transformer.wte.num_embeddings, args.sequences, args.length)
        with full_precision():
            op = HessianOperator(model, next_token_loss, x, y, dist=d)
            op.matvec(torch.randn(op.size, generator=torch.Generator().manual_seed(9)))
            before = rss()
            t0 = time.perf_counter()
            res = lanczos_top_k(op, K, tol=TOL, max_iter=BUDGETED_MAX_ITER,
                                max_memory=args.vectors * op.size * 4)
            seconds = time.perf_counter() - t0
        row = {"processes": d.world_size, "vectors": args.vectors, "params": op.size,
               "n_hvp": res.n_matvec, "restarts": res.restarts, "basis_vectors": res.basis_vectors,
               "seconds": seconds, "eigenvalues": res.eigenvalues.tolist(),
               "residuals": res.residuals.tolist(), "rss_before": before, "rss_peak": rss(),
               "machine": machine_line(args.threads)}
        rows = [None] * d.world_size
        if d.enabled:
            dist.all_gather_object(rows, row)
        else:
            rows = [row]
        if d.is_main:
            row["rss_extra_per_process"] = [r["rss_peak"] - r["rss_before"] for r in rows]
            OUT.mkdir(exist_ok=True)
            with open(OUT / ("shard-quick.jsonl" if args.quick else "shard.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row))


if __name__ == "__main__":
    main()
