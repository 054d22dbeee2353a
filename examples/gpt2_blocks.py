"""A one-layer GPT-2 (Hugging Face transformers, 56k parameters) trained with Adam by a
hand-written loop that sharpcli.Tracker measures, for blockwise Hessian spectra: the run
examples/gpt2_blocks.sh measures with `sharp spectrum --blocks gpt2 --density` and draws
with `sharp plot --only blocks` (docs/guides/large-models.md#blocks).

The task: 64 sequences of 32 tokens whose second half copies the first. The first half is
random (the model can only memorise it); the second is predicted by attending 16 positions
back, so attention matters and its query and key blocks have a curvature of their own.
Needs `pip install transformers`.

    python examples/gpt2_blocks.py [OUT]     # trains into OUT/reports, OUT/checkpoints
"""

import sys
from pathlib import Path

import torch

import sharpcli
from sharpcli.hessian.calls import Call

VOCAB, HALF, SEQUENCES = 64, 16, 64


def make_model():
    """The factory `sharp spectrum --model-factory examples.gpt2_blocks:make_model` calls:
    GPT-2's architecture (fused query-key-value Conv1D c_attn) at width 64, one layer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=2 * HALF, n_embd=64, n_layer=1, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager")
    config.loss_type = "ForCausalLM"
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def batches():
    """The data `--data examples.gpt2_blocks:batches` reads: one dict batch, the model
    computing its own loss from `labels` (`--loss model`)."""
    gen = torch.Generator().manual_seed(1)
    first = torch.randint(0, VOCAB, (SEQUENCES, HALF), generator=gen)
    ids = torch.cat([first, first], dim=1)
    return [{"input_ids": ids, "labels": ids}]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples-out/gpt2-blocks")
    model, data = make_model(), batches()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 300
    with sharpcli.Tracker(model, Call(batch_loss="model"), data, optimizer=opt, every=100, checkpoint_every=steps,
                          run_dir=out / "reports" / "gpt2-blocks") as tracker:
        for step in range(steps + 1):
            opt.zero_grad()
            loss = sum(model(**batch).loss for batch in data) / len(data)
            loss.backward()
            row = tracker.step(step)
            if row:
                print(f"step {step}: loss {row['train_loss']:.3f}, λ₁ {row['sharpness']:.4g}")
            if step < steps:
                opt.step()
