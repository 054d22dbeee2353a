"""A model and a loop sharpcli did not write, measured by sharpcli.Tracker.

A LayerNorm MLP (not one of sharpcli's models) trained by a hand-written full-batch GD loop
on the first 1000 MNIST-1D examples. The Tracker measures λ₁ every 20 steps and writes
reports/own-loop/, which `sharp eos`, `sharp plot` and `sharp summarize` read like any run:

    python examples/own_loop.py && sharp eos reports/own-loop

Expected: λ₁ rises to 2/η = 20 (η = 0.1) by step ~800 and hovers there to the end —
progressive sharpening and the edge of stability, in a network sharpcli never built.
"""

import torch
from torch import nn

import sharpcli
from sharpcli.hessian.losses import mse_loss
from sharpcli.workload.data import load_dataset


class LayerNormMLP(nn.Module):
    def __init__(self, d_in=40, width=100, classes=10):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(d_in, width), nn.LayerNorm(width), nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.norm(self.fc1(x))))))


def make_model() -> nn.Module:
    """The factory `sharp spectrum --model-factory examples.own_loop:make_model` calls."""
    torch.manual_seed(0)
    return LayerNormMLP()


if __name__ == "__main__":
    data = load_dataset("mnist1d", train_size=1000)
    x, y = data.x_train, data.y_train
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 1500
    with sharpcli.Tracker(model, mse_loss, x, y, optimizer=opt, run_dir="reports/own-loop",
                          every=20, test=(data.x_test, data.y_test),
                          checkpoint_every=500, overwrite=True) as tracker:
        for step in range(steps + 1):
            opt.zero_grad()
            mse_loss(model(x), y).backward()
            row = tracker.step(step)
            if row and row.get("sharpness") and step % 200 == 0:
                print(f"step {step}: loss {row['train_loss']:.4f}, λ₁ {row['sharpness']:.3f}, "
                      f"2/η {row['gd_edge']:.1f}")
            if step < steps:
                opt.step()
