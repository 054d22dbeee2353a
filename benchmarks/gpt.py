"""A GPT-2-style language model written out (no transformers needed), for the large-model
measurements: pre-LayerNorm blocks of causal self-attention with a fused query-key-value
nn.Linear and a 4× GELU MLP, learned positions, the output layer tied to the token
embedding. Parameter names are GPT-2's (transformer.h.<i>.attn.c_attn, …), so
`--blocks gpt2` splits it as it splits Hugging Face's GPT2LMHeadModel.

GPT25M (vocabulary 8192, 128 positions, width 512, 7 layers, 8 heads) has 26,327,552
parameters; its examples are random token sequences whose loss is the mean next-token
cross-entropy over every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GPT25M = dict(vocab=8192, positions=128, width=512, layers=7, heads=8)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.c_attn(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln_2, self.mlp = nn.LayerNorm(width), nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, positions: int, width: int, layers: int, heads: int):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, width)
        self.transformer.wpe = nn.Embedding(positions, width)
        self.transformer.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.transformer.ln_f = nn.LayerNorm(width)
        self.apply(_init)

    def forward(self, idx):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in t.h:
            x = block(x)
        return t.ln_f(x) @ t.wte.weight.T  # logits, the output layer tied to the embedding


def _init(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of every position's next token."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_gpt(seed: int = 0, **sizes) -> GPT:
    torch.manual_seed(seed)
    return GPT(**{**GPT25M, **sizes})


def token_batch(vocab: int, sequences: int, length: int, seed: int = 1):
    """Inputs and next-token targets from random sequences of length + 1 tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (sequences, length + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]
