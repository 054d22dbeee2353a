"""A Hugging Face causal language model small enough for a dense Hessian: GPT-2 built from a
tiny GPT2Config (random weights, nothing downloaded, eager attention, no dropout), fed
right-padded dict batches with `attention_mask` and -100 labels, as a DataLoader gives them.
Its loss is the model's own: the mean over the unpadded tokens after the causal shift."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

N, SEQ, VOCAB = 6, 6, 11


def make_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=4, n_layer=1, n_head=2,
                        n_inner=8, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0,
                        attn_implementation="eager")
    config.loss_type = "ForCausalLM"
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).double()


def sequences(seed: int = 1) -> dict:
    """N right-padded sequences of lengths 3…SEQ."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (N, SEQ), generator=gen)
    lengths = torch.tensor([SEQ, 3, 5, 4, SEQ, 3])
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100)}


def rows(seed: int = 1) -> list[dict]:
    everything = sequences(seed)
    return [{k: v[i] for k, v in everything.items()} for i in range(N)]


def loader(batch_size: int = 3) -> DataLoader:
    return DataLoader(rows(), batch_size=batch_size)


def shifted_tokens(batch) -> int:
    """The loss terms of a batch: labels predicted after the causal shift, padding aside."""
    return int((batch["labels"][:, 1:] != -100).sum())


def token_loss(model, batch) -> torch.Tensor:
    """The model's own loss, the mean cross-entropy over the unpadded tokens after the causal
    shift, computed in the model's dtype: Hugging Face's loss casts the logits to float32,
    which caps the accuracy of a float64 measurement (finite differences most of all)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
