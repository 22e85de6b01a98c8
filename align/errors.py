"""The one base class of every error a user can act on.

Each message already names what is wrong: the config key (``config key 'train.batch_size'``), the
file, or the dataset row. The CLI prints any ``AlignError`` as that one line and exits with 2 (the
traceback only with ``--debug``); anything else is a bug and says so. The concrete classes live
beside the code that raises them (``ConfigError`` in ``align.config.schema``, ``SampleError`` in
``align.modalities.base``, ...); the ones below are shared by several layers.
"""

from __future__ import annotations


class AlignError(Exception):
    """A problem with the user's config, data or files; the message names the key, file or row."""


class ConfigError(AlignError, ValueError):
    """A configuration problem; the message names the offending key."""


class DataError(AlignError, ValueError):
    """A dataset could not be loaded or does not fit the config; the message names the key."""


class SampleError(AlignError, ValueError):
    """One raw sample cannot be turned into tensors; the message names the file / row when known."""
