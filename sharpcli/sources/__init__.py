"""Where a measurement's examples come from: in-memory tensors or any re-iterable source of
batches (a DataLoader, a list, a callable), any nested structure of tensors per batch,
weighted exactly by their loss terms, streamed to the device and sharded over processes."""

from sharpcli.sources.data import Data, StreamSource, TensorSource, as_data, default_num_terms

__all__ = ["Data", "StreamSource", "TensorSource", "as_data", "default_num_terms"]
