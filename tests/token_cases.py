"""A small causal token model and padded token data, the shape of a language model's
Hessian problem at a size a dense Hessian can check: dict inputs (`ids`, `mask`), outputs
as a dict holding `logits` (as a Hugging Face ModelOutput does), and a per-token mean
cross-entropy that ignores the -100 padding label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, SEQ = 7, 3, 5


class TokenNet(nn.Module):
    """ids (N, T) → {"logits": (N, T, V)}: embedding, a causal prefix mean, tanh, output
    (68 parameters)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, VOCAB)

    def forward(self, ids, mask=None):
        h = self.emb(ids)
        if mask is not None:
            h = h * mask[..., None].to(h.dtype)
        steps = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype, device=h.device)
        h = torch.cumsum(h, dim=1) / steps[:, None]
        return {"logits": self.out(torch.tanh(self.mix(h)))}


def token_loss(outputs, labels):
    """Mean cross-entropy over the unpadded tokens (the -100 labels do not count)."""
    logits = outputs["logits"]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def tokens(batch) -> int:
    return int((batch[1] != -100).sum())


def model(seed: int = 0) -> TokenNet:
    torch.manual_seed(seed)
    return TokenNet().double()


def sequences(n: int = 7, seed: int = 1):
    """n right-padded sequences of lengths 2…SEQ: ids, mask and labels (-100 on padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    lengths = torch.randint(2, SEQ + 1, (n,), generator=gen)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, VOCAB, (n, SEQ), generator=gen).masked_fill(mask == 0, -100)
    return ids, mask, labels


def batches(batch_size: int, n: int = 7, seed: int = 1) -> list:
    """The sequences as a list of ({"ids", "mask"}, labels) batches."""
    ids, mask, labels = sequences(n, seed)
    return [({"ids": ids[i:i + batch_size], "mask": mask[i:i + batch_size]},
             labels[i:i + batch_size]) for i in range(0, n, batch_size)]


def stream() -> list:
    """`--data` for the CLI: 4 batches of 2, 2, 2 and 1 sequences (uneven shares over 2
    processes: batches 0, 2 and 1, 3)."""
    return batches(2)


def loader():
    """`--data` as a DataLoader of dict rows, batched by 2 (its batch sampler is split
    between processes)."""
    from torch.utils.data import DataLoader

    ids, mask, labels = sequences()
    rows = [({"ids": i, "mask": m}, l) for i, m, l in zip(ids, mask, labels)]
    return DataLoader(rows, batch_size=2)


# ---- bad sources, for the one-line errors of `sharp spectrum --data MODULE:CALLABLE`

def empty() -> list:
    return []


def noisy():
    """A different batch on every pass (random augmentation, say)."""
    return iter([({"ids": torch.randint(0, VOCAB, (2, SEQ)), "mask": torch.ones(2, SEQ)},
                  torch.randint(0, VOCAB, (2, SEQ)))])


def tensors_only() -> list:
    """Batches that are bare tensors, not (inputs, targets) pairs."""
    return [torch.zeros(2, SEQ).long()]


def wrong_keys() -> list:
    return [({"tokens": torch.zeros(2, SEQ).long()}, torch.zeros(2, SEQ).long())]


def big_labels() -> list:
    ids, mask, labels = sequences()
    return [({"ids": ids, "mask": mask}, labels.masked_fill(labels == 3, VOCAB + 2))]


def per_token_loss(outputs, labels):
    """Not a mean: one loss per token."""
    import torch.nn.functional as F
    return F.cross_entropy(outputs["logits"].flatten(0, 1), labels.flatten(), reduction="none")


def nothing(batch) -> int:
    return 0


def sharded_model() -> TokenNet:
    """`model()` sharded by FSDP2 as a factory may return it for `--fsdp factory`: every
    Linear, then the root (under torchrun: the process group is sharp's)."""
    from torch.distributed.fsdp import fully_shard

    net = model()
    for module in list(net.modules())[1:]:
        if isinstance(module, nn.Linear):
            fully_shard(module)
    return fully_shard(net)
