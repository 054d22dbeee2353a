"""What one SharpnessCallback measurement costs on the two examples of
docs/guides/callbacks.md#cost, against a training step (shortened runs of
examples/lightning_callback.py and examples/hf_callback.py):

    python benchmarks/callback_cost.py lightning    # 200 steps, a measurement every 20
    python benchmarks/callback_cost.py hf           # 60 steps, a measurement every 10

Each call of the callback is timed; a measured call's time is the measurement's, the rest of
the training's wall time divided by the steps is a step's. Hessian-vector products are
counted per λ₁ solve. Run from the repository root; reports/ is not touched (the runs go
to a temporary folder).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import sharpcli.training.tracker as tracker_module
from sharpcli.integrations.measurer import Measurer

_products: list[int] = []
_measurements: list[float] = []


def _instrument() -> None:
    solve, step = tracker_module.measure_sharpness, Measurer.step

    def counted(*args, **kwargs):
        result = solve(*args, **kwargs)
        _products.append(result.n_hvp)
        return result

    def timed(self, t, epoch):
        start = time.perf_counter()
        row = step(self, t, epoch)
        if row is not None:
            _measurements.append(time.perf_counter() - start)
        return row

    tracker_module.measure_sharpness, Measurer.step = counted, timed


def lightning(out: Path) -> int:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from examples.lightning_callback import Classifier
    from sharpcli.integrations.lightning import SharpnessCallback
    from sharpcli.workload.data import load_dataset

    data = load_dataset("mnist1d", train_size=1000)
    x, y = data.x_train, data.y_train
    callback = SharpnessCallback((x, y), None, out, every=20, test=(data.x_test, data.y_test))
    L.Trainer(max_steps=200, accumulate_grad_batches=4, callbacks=[callback], logger=False,
              enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(Classifier(), DataLoader(TensorDataset(x, y),
                                                                        batch_size=250))
    return 200


def hf(out: Path) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from examples.hf_callback import LENGTH, LR, N, VOCAB, batches, sequences, tokens
    from sharpcli.integrations.hf import SharpnessCallback

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32,
                                       n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    train = sequences(N)
    callback = SharpnessCallback(batches(train, 32), None, out, every=10, num_terms=tokens)
    args = TrainingArguments(output_dir=str(out.parent / "trainer"), max_steps=60,
                             per_device_train_batch_size=N, learning_rate=LR,
                             lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True,
                             report_to="none", save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback],
            optimizers=(torch.optim.SGD(model.parameters(), lr=LR), None)).train()
    return 60


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "lightning"
    _instrument()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        steps = {"lightning": lightning, "hf": hf}[which](Path(tmp) / "run")
        wall = time.perf_counter() - start
    step = (wall - sum(_measurements)) / steps
    print(f"{which}: {len(_measurements)} measurements, median {statistics.median(_measurements):.3f} s "
          f"(min {min(_measurements):.3f} s), {statistics.median(_products):.0f} Hessian-vector "
          f"products per measurement (median); a training step {step:.3f} s")
