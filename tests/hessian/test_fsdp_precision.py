"""Finite-difference products of a model sharded by FSDP2 under a bf16 MixedPrecisionPolicy
(hessian/fsdp_precision.py): taken in float32, equal to those of the same weights sharded
without a policy, and training goes on in bf16 afterwards, its gradient unchanged. One
2-process launch of tests/fsdp_precision.py (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # seconds


@pytest.mark.slow
def test_products_under_a_bf16_policy_are_float32_and_training_stays_bf16(tmp_path):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    out = tmp_path / "precision.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2", str(REPO / "tests" / "fsdp_precision.py"),
                             str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["bf16_gradient"] > 1e-3  # the policy is in force: training's gradient is bf16's
    assert got["set_aside"] < 1e-6  # the float32 model's product (measured: bit for bit)
    assert got["kept"] > 1e-2  # what the policy kept would have given (measured 0.8)
    # the first Linear's weight in each forward: training step | the check and the product's
    # two gradients | training step | the product with the policy kept
    assert got["dtypes"] == ("bfloat16 | bfloat16 float32 float32 | bfloat16 | "
                             "bfloat16 bfloat16 bfloat16")
    assert got["gradient_restored"]
    assert "in float32 with FSDP2's mixed-precision policy set aside" in got["note"]
