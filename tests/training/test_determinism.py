"""Determinism: the same flags and seed on the CPU give the same metrics.csv, apart from the
`seconds` column, and the same weights. (That a run resumed in another process matches too
is in test_interrupt.py.)"""

import pytest

from sharpcli.formats.checkpoints import list_checkpoints, read_checkpoint
from tests.runners import csv_lines, sharp, train_args, without_column

SETTINGS = {
    # minibatches drawn per (seed, epoch), momentum, a schedule, λ₁ from a random start
    "sgd": ["--optimizer", "sgd", "--batch-size", "16", "--momentum", "0.9", "--schedule",
            "cosine"],
    # Eigen-SAM adds power iterations from a random start on each batch's Hessian
    "eigen-sam": ["--optimizer", "eigen-sam", "--batch-size", "16", "--eig-every", "3"],
}
COMMON = ["--steps", "12", "--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every",
          "6", "--device", "cpu"]


def run(root, name, *flags):
    assert sharp(*train_args(root, name, *COMMON, *flags)).code == 0
    lines = csv_lines(root / "reports" / name / "metrics.csv")
    final = read_checkpoint(list_checkpoints(root / "checkpoints" / name)[-1])
    return without_column(lines, "seconds"), final["model"]


@pytest.mark.parametrize("setting", SETTINGS)
def test_same_seed_same_metrics(tmp_path, setting):
    a_rows, a_weights = run(tmp_path, "a", *SETTINGS[setting], "--seed", "3")
    b_rows, b_weights = run(tmp_path, "b", *SETTINGS[setting], "--seed", "3")
    assert len(a_rows) == 8
    assert a_rows == b_rows
    assert all(a_weights[k].equal(b_weights[k]) for k in a_weights)
    # and the test can tell: another seed gives other numbers
    c_rows, _ = run(tmp_path, "c", *SETTINGS[setting], "--seed", "4")
    assert c_rows[1:] != a_rows[1:]
