"""CPU milliseconds per complementarity solve on random instances of the size the default run
reaches (k critical directions): python benchmarks/bench_sdcp.py K LABEL (RESULTS.md §8c)."""
import math
import sys
import time

import numpy as np

from sharpcli.flows.sdcp import pairs, solve_sdcp

rng = np.random.default_rng(0)
k = int(sys.argv[1]); m = k*(k+1)//2
res = []
for seed in range(5):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(m + 3, m)); s = np.array([1.0 if i == j else math.sqrt(2) for i, j in pairs(k)])
    Q = 0.5 * (V * s).T @ (V * s); B = rng.normal(size=(k, k)); B = (B + B.T) / 2
    t = time.process_time(); sol = solve_sdcp(Q, B); res.append((time.process_time() - t, sol.newton_steps))
print(sys.argv[2], "k", k, "ms per solve", [round(1000*a, 1) for a, _ in res], "newton", [b for _, b in res])
