"""Blockwise spectra (--blocks): each group's top eigenvalues, trace and density against the
same block cut by hand out of a dense float64 Hessian — a tiny Hugging Face GPT-2 whose fused
query-key-value Conv1D (weight (d, 3d), bias (3d,)) the preset splits into three, and a
hand-written attention whose fused nn.Linear (weight (3d, d)) a `:qkv` pattern splits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sharpcli
from sharpcli.errors import SharpError
from sharpcli.linalg import DenseOperator, Restricted, matrix_with_spectrum
from sharpcli.spectra.blocks import parameter_blocks
from sharpcli.spectra.compute import compute_spectrum
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem
from tests import hf_case
from tests.helpers import dense_hessian, dense_hessian_of
from tests.runners import assert_one_line_error, sharp

D = 4  # model width


def gpt2():
    """hf_case's GPT-2 with weights of a larger scale, the query-key-value projection's
    largest: attention far from uniform, so that the query and key blocks are not nearly
    zero (their top eigenvalues are 5e-3 and 7e-5 against 0.4 for the whole network's)."""
    model = hf_case.make_model()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 3.0 if "c_attn" in name else 0.6
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


class FusedAttention(nn.Module):
    """One causal attention layer with a fused query-key-value nn.Linear (nanoGPT's layout:
    weight (3d, d), rows split), a projection, and a classifier on the mean token."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        q, k, v = self.attn.qkv(x).split(D, dim=-1)
        att = (q @ k.transpose(-1, -2)) / D ** 0.5
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        return self.head((x + self.attn.proj(y)).mean(dim=1))


def attention_case():
    torch.manual_seed(2)
    model = FusedAttention().double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 5, D, generator=gen, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (9,), generator=gen)


def offsets(model):
    """Where each parameter starts in the flat vector of all of them, by name."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = i
        i += p.numel()
    return out


def columns(start, rows, width, lo, hi):
    """Flat indices of columns lo..hi−1 of a row-major (rows, width) matrix at `start`,
    written out by hand."""
    return [start + r * width + c for r in range(rows) for c in range(lo, hi)]


def contiguous(start, lo, hi):
    return list(range(start + lo, start + hi))


def sub(h, index):
    index = torch.tensor(sorted(index))
    return h[index][:, index]


def top(matrix, k):
    return torch.linalg.eigvalsh(matrix).flip(0)[:k]


# --- the GPT-2 preset ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_truth():
    model = gpt2()
    h = dense_hessian_of(model, lambda out: out.loss, **hf_case.sequences())
    at, pre = offsets(model), "transformer.h.0."
    w, b = at[pre + "attn.c_attn.weight"], at[pre + "attn.c_attn.bias"]
    qkv = {part: columns(w, D, 3 * D, i * D, (i + 1) * D) + contiguous(b, i * D, (i + 1) * D)
           for i, part in enumerate(("query", "key", "value"))}

    def whole(module, sizes):
        return [at[f"{pre}{module}.weight"] + j for j in range(sizes[0])] + \
               [at[f"{pre}{module}.bias"] + j for j in range(sizes[1])]

    blocks = {"transformer.wte": contiguous(at["transformer.wte.weight"], 0, hf_case.VOCAB * D),
              pre + "attn.query": qkv["query"], pre + "attn.key": qkv["key"],
              pre + "attn.value": qkv["value"], pre + "attn.c_proj": whole("attn.c_proj", (16, 4)),
              pre + "mlp.c_fc": whole("mlp.c_fc", (32, 8)),
              pre + "mlp.c_proj": whole("mlp.c_proj", (32, 4))}
    return h, blocks


def test_the_gpt2_preset_against_a_hand_split_dense_hessian(gpt2_truth):
    h, blocks = gpt2_truth
    size = max(len(index) for index in blocks.values())
    rows = sharpcli.spectrum(gpt2(), None, hf_case.loader(hf_case.N), batch_loss="model",
                             num_terms=hf_case.shifted_tokens, top_k=3, tol=1e-10,
                             blocks="gpt2", trace=True, trace_method="hutch++",
                             trace_probes=3 * size)  # a sketch of each block's whole space
    assert list(dict.fromkeys(r["block"] for r in rows)) == ["all", *blocks]
    for name, index in blocks.items():
        block = sub(h, index)
        assert top(block, 1) > 1e-5, name  # not a flat block
        values = torch.tensor([r["value"] for r in rows
                               if r["block"] == name and r["quantity"] == "eigenvalue"],
                              dtype=torch.float64)
        torch.testing.assert_close(values, top(block, 3), rtol=1e-6, atol=1e-9, msg=name)
        trace = next(r for r in rows if r["block"] == name and r["quantity"] == "trace")
        assert trace["value"] == pytest.approx(float(block.trace()), rel=1e-6, abs=1e-9), name
    # query, key and value are three different blocks, the fused parameter cut in three
    q, k = (top(sub(h, blocks[f"transformer.h.0.attn.{p}"]), 1) for p in ("query", "key"))
    assert not torch.allclose(q, k, rtol=1e-3)


def test_gpt2_block_names_and_sizes():
    blocks = parameter_blocks(gpt2(), blocks="gpt2")
    sizes = {name: block.size for name, block in blocks.items()}
    assert sizes == {"all": sum(p.numel() for p in gpt2().parameters()),
                     "transformer.wte": hf_case.VOCAB * D,
                     "transformer.h.0.attn.query": D * D + D, "transformer.h.0.attn.key": D * D + D,
                     "transformer.h.0.attn.value": D * D + D,
                     "transformer.h.0.attn.c_proj": D * D + D,
                     "transformer.h.0.mlp.c_fc": 8 * D + 8, "transformer.h.0.mlp.c_proj": 8 * D + D}
    # the split is of Conv1D's columns: the query block reads c_attn.weight[:, :D]
    q = blocks["transformer.h.0.attn.query"]
    weight = dict(gpt2().named_parameters())["transformer.h.0.attn.c_attn.weight"]
    assert q.coords[:2 * D].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert [p.shape for p in q.params][0] == weight.shape


# --- patterns, a fused nn.Linear, and densities ---------------------------------------------

def test_patterns_split_a_fused_linear_and_pool_against_dense_blocks():
    model, x, y = attention_case()
    h = dense_hessian(model, F.cross_entropy, x, y)
    at = offsets(model)
    w, b = at["attn.qkv.weight"], at["attn.qkv.bias"]
    # nn.Linear keeps (out, in): the query is rows 0..D−1 of the weight, here contiguous
    expected = {f"attn.qkv.{part}": contiguous(w, i * D * D, (i + 1) * D * D)
                + contiguous(b, i * D, (i + 1) * D)
                for i, part in enumerate(("query", "key", "value"))}
    expected["out"] = [at["attn.proj.weight"] + j for j in range(D * D + D)] + \
                      [at["head.weight"] + j for j in range(3 * D + 3)]
    cfg = SpectrumConfig(top_k=2, tol=1e-10, blocks="attn.qkv:qkv,out=re:proj|head", trace=True,
                         trace_method="hutch++", trace_probes=3 * 3 * (D + 1) * 2,
                         density=True, density_runs=2, density_iters=60, density_grid=200)
    solves = list(compute_spectrum(Problem(model, F.cross_entropy, x, y), cfg))
    assert list(dict.fromkeys(s.block for s in solves)) == ["all", *expected]
    for name, index in expected.items():
        block = sub(h, index)
        eig, trace, density = (next(s for s in solves if s.block == name and s.quantity == q)
                               for q in ("eigenvalue", "trace", "density"))
        torch.testing.assert_close(eig.result.eigenvalues, top(block, 2), rtol=1e-6, atol=1e-9)
        assert trace.result.estimate == pytest.approx(float(block.trace()), rel=1e-6, abs=1e-9)
        # a run of as many steps as the block has coordinates: its nodes are the eigenvalues
        truth = torch.linalg.eigvalsh(block)
        r = density.result
        nodes = r.nodes[r.weights > 1e-8]
        assert float((nodes[:, None] - truth[None]).abs().min(dim=1).values.max()) < 1e-6
        curve = density.curve("", None)
        assert {row["block"] for row in curve} == {name} and len(curve) == 200
    # a method given explicitly: nothing to explain
    assert all(s.note is None for s in solves if s.quantity == "trace")


def test_the_auto_trace_of_a_split_block_says_why_it_is_not_gauss_newton():
    model, x, y = attention_case()
    cfg = SpectrumConfig(top_k=1, blocks="attn.qkv:qkv,head", trace=True, trace_probes=5)
    notes = {s.block: s.note for s in compute_spectrum(Problem(model, F.cross_entropy, x, y), cfg)
             if s.quantity == "trace"}
    assert "part of a parameter" in notes["attn.qkv.query"]
    assert notes["all"] is None and notes["head"] is None  # Gauss–Newton, as before
    with pytest.raises(SharpError, match="gauss-newton takes whole parameters"):
        list(compute_spectrum(Problem(model, F.cross_entropy, x, y),
                              SpectrumConfig(top_k=1, blocks="attn.qkv:qkv", trace=True,
                                             trace_method="gauss-newton")))


def test_group_names_per_module_and_pooled():
    model, _, _ = attention_case()
    names = list(parameter_blocks(model, blocks="weight,attn.,b=re:bias$"))
    assert names == ["all", "attn.qkv.weight", "attn.proj.weight", "head.weight", "attn", "b"]
    assert parameter_blocks(model, blocks="b=re:bias$")["b"].size == 3 * D + D + 3


@pytest.mark.parametrize("spec, words", [
    ("", "needs patterns"), ("qkv,,head", "empty item"), ("re:(", "not a regular expression"),
    ("all=head", "whole network's"), ("nothing", "matches no parameter name"),
    ("head,head", "named twice"), ("attn.proj:qkv", "not three equal parts"),
    ("gpt2", "no parameter is named like"),
])
def test_bad_specs_are_one_line_errors(spec, words):
    model, x, y = attention_case()
    with pytest.raises(SharpError) as err:
        sharpcli.spectrum(model, "ce", x, y, blocks=spec)
    message = str(err.value)
    assert words in message and "\n" not in message and "--blocks" not in message


def test_blocks_and_per_layer_and_pyhessian_are_refused(tmp_path):
    for flags, words in [(["--blocks", "fc", "--per-layer"], "give one"),
                         (["--blocks", "re:(", "--top-k", "2"], "not a regular expression"),
                         (["--blocks", "fc", "--backend", "pyhessian"], "--blocks")]:
        assert_one_line_error(sharp("spectrum", tmp_path / "none.pt", *flags), 2, *words)


def test_restricted_is_the_principal_submatrix():
    a = matrix_with_spectrum(torch.linspace(-2, 5, 12), seed=4)
    coords = torch.tensor([0, 3, 4, 9, 11])
    op = Restricted(DenseOperator(a), coords)
    v = torch.randn(5, 3, dtype=torch.float64)
    truth = a[coords][:, coords]
    torch.testing.assert_close(op.matmat(v), truth @ v)
    torch.testing.assert_close(op.matvec(v[:, 0]), truth @ v[:, 0])
    for bad in ([3, 1], [0, 0], [12], []):
        with pytest.raises(ValueError, match="coords"):
            Restricted(DenseOperator(a), torch.tensor(bad, dtype=torch.long))
