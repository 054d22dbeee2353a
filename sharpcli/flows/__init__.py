"""Flows of a training run: the central flow of gradient descent (Cohen, Damian, Talwalkar,
Kolter & Lee, ICLR 2025) and the stable (gradient) flow, integrated from a run's first
weights (docs/guides/flow.md)."""
