"""lesionforge.augment: data in, more data out, nothing learned.

Samples, the on-disk dataset format, medical image I/O, embedded CT phantoms,
datasets and classical augmenters.
"""

from augment.errors import CheckpointError, ConfigError, DataError, LesionforgeError
from augment.sample import Sample, boxes_from_mask

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LesionforgeError",
    "Sample",
    "boxes_from_mask",
]
