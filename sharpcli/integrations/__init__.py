"""Sharpness inside the trainers people use (docs/guides/callbacks.md): a callback for
PyTorch Lightning (`sharpcli.integrations.lightning`) and one for the Hugging Face `Trainer`
(`sharpcli.integrations.hf`), each a thin adapter over `sharpcli.Tracker` that writes the
run folder every `sharp` command reads. Each module imports its trainer; this package
imports neither."""
