"""Exceptions for problems a user can fix.

Library code raises these with a one-line message that names the file and the
problem; only ``downstream/cli.py`` turns them into an exit code.
"""

from __future__ import annotations


class LesionforgeError(Exception):
    """A user error: bad input, bad config, missing file. The message is shown as is."""


class DataError(LesionforgeError):
    """An input file or dataset folder is missing, corrupt or inconsistent."""


class ConfigError(LesionforgeError):
    """A config file or command-line option is invalid."""


class CheckpointError(LesionforgeError):
    """A checkpoint is missing, corrupt or was made by an incompatible model."""


class NonFiniteLossError(LesionforgeError):
    """A training loss became NaN or infinite (learning rate too high, or corrupt input):
    training stopped before saving broken weights. Generators and task models alike."""
