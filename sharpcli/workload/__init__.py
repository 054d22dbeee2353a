"""What a run trains on and with: data sets as device tensors, the networks, and both rebuilt
from a checkpoint's config."""
