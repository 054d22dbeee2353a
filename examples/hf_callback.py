"""A Hugging Face Trainer measured by sharpcli's SharpnessCallback.

A 2-layer GPT-2 (about 27k parameters) learns a random next-token rule (each token has 3
equally likely successors) from 128 padded sequences of 8 to 12 tokens, trained by the
Trainer with full-batch GD (torch SGD, η = 0.1, no clipping). The callback measures λ₁ every
10 optimizer steps on the fixed training set with the model's own per-token loss;
`num_terms` counts the tokens each batch's loss averages over (padding excluded), so λ₁ is
that of the mean over all tokens. It writes reports/hf/:

    python examples/hf_callback.py && sharp eos reports/hf
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from sharpcli.integrations.hf import SharpnessCallback

VOCAB, PAD, LENGTH, N, LR = 32, 31, 12, 128, 0.1


def sequences(n: int, seed: int = 0) -> list[dict]:
    """Random walks on a fixed graph of 31 tokens (3 successors each), 8 to 12 tokens long,
    padded to 12 (token 31, attention 0, label -100: left out of the loss)."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, PAD, (PAD, 3), generator=g)
    rows = []
    for _ in range(n):
        length = int(torch.randint(8, LENGTH + 1, (1,), generator=g))
        ids = [int(torch.randint(0, PAD, (1,), generator=g))]
        for _ in range(length - 1):
            ids.append(int(successors[ids[-1], int(torch.randint(0, 3, (1,), generator=g))]))
        pad = LENGTH - length
        rows.append({"input_ids": torch.tensor(ids + [PAD] * pad),
                     "attention_mask": torch.tensor([1] * length + [0] * pad),
                     "labels": torch.tensor(ids + [-100] * pad)})
    return rows


def tokens(batch) -> int:
    """A batch's loss terms: GPT-2 predicts token i+1 from tokens ≤ i, skipping label -100."""
    return int((batch["labels"][:, 1:] != -100).sum())


def batches(rows: list[dict], size: int) -> list[dict]:
    return [{k: torch.stack([r[k] for r in rows[i:i + size]]) for k in rows[0]}
            for i in range(0, len(rows), size)]


if __name__ == "__main__":
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32,
                                       n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0, bos_token_id=PAD, eos_token_id=PAD,
                                       pad_token_id=PAD))
    train = sequences(N)
    callback = SharpnessCallback(batches(train, 32), None, "reports/hf", every=10,
                                 num_terms=tokens, overwrite=True)
    args = TrainingArguments(output_dir="reports/hf-trainer", max_steps=300,
                             per_device_train_batch_size=N, learning_rate=LR,
                             lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True,
                             report_to="none", save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback],
            optimizers=(opt, None)).train()
    for row in callback.rows[::5]:
        print(f"step {row['step']}: loss {row['train_loss']:.4f}, λ₁ {row['sharpness']:.3f}, "
              f"2/η {row['gd_edge']:.1f}")
