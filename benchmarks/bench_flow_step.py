"""Per-step cost of the central flow on the default run, by part (gradient, eigen solve or
refresh, third-derivative products, complementarity solve): from GD's weights at step START,
two warm-up steps, then STEPS steps timed in CPU seconds of the process (one torch thread),
which other work on a shared machine disturbs far less than wall time (RESULTS.md §8b).

    python benchmarks/bench_flow_step.py START STEPS LABEL [RUN [STATE]]

LABEL `before` runs FlowSettings without the refresh argument (so that an older sharpcli on
PYTHONPATH runs too), `after` (or any other label) with Rayleigh–Ritz refreshes,
`after-norefresh` without. RUN:
a default `sharp train --checkpoint-every 100` run folder. STATE: a flow-state.pt of `sharp
flow` on RUN, to time the central flow from its own saved state rather than from GD's weights
at START (off the flow, where block Lanczos takes more products than on it)."""
import sys, time, json
import torch
import sharpcli.flows.central as central
from sharpcli.flows.config import FlowConfig
from sharpcli.flows.run import open_run, gd_weights
from sharpcli.flows.central import FlowSettings, FlowState

start, steps, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
run = sys.argv[4] if len(sys.argv) > 4 else "/tmp/bench31/reports/gd-lr0.3"
torch.set_num_threads(1)
flow = open_run(run, FlowConfig())
kw = {} if label == "before" else {"refresh": label != "after-norefresh"}
settings = FlowSettings(lr=flow.lr, **kw)
times = {"gradient": 0.0, "eigen": 0.0, "third": 0.0, "sdcp": 0.0}
def timed(name, f):
    def g(*a, **k):
        t = time.process_time(); r = f(*a, **k); times[name] += time.process_time() - t; return r
    return g
obj = flow.objective
obj.gradient = timed("gradient", obj.gradient)
from sharpcli.hessian.operator import HessianOperator
HessianOperator.third_derivatives = timed("third", HessianOperator.third_derivatives)
central.top_eigenpairs = timed("eigen", central.top_eigenpairs)
if hasattr(central, "rayleigh_ritz"):
    central.rayleigh_ritz = timed("eigen", central.rayleigh_ritz)
central.solve_sdcp = timed("sdcp", central.solve_sdcp)
if hasattr(central, "adaptive_oscillation"):
    import sharpcli.flows.adaptive as ad; ad.solve_sdcp = central.solve_sdcp
if len(sys.argv) > 5:  # STATE: a flow-state.pt, the central flow itself at its saved step
    saved = torch.load(sys.argv[5], weights_only=True)["central"]
    state = FlowState(saved["weights"], saved["vectors"])
else:
    state = FlowState(gd_weights(flow, start))
for _ in range(2):  # warm up: off GD's iterate onto the flow, warm eigenvectors
    central.central_step(obj, state, settings)
for k in times: times[k] = 0.0
t0 = time.process_time(); rows = []
for t in range(steps):
    p = central.central_step(obj, state, settings)
    rows.append((p.critical, p.n_hvp, p.n_third, round(p.predicted_loss, 6), round(p.sharpness, 4)))
total = time.process_time() - t0
print(json.dumps({"label": label, "start": start, "steps": steps, "per_step": total / steps,
                  **{k: v / steps for k, v in times.items()}, "rows": rows}))
