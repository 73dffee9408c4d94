"""Exceptions gaussmem raises for problems a user can fix.

The CLI turns these into a one-line message and exit status 2 instead of a traceback,
so every message must name the offending file or value and say what to do.
"""


class GaussmemError(Exception):
    """Base class: a problem with the user's input, data or environment."""


class ConfigError(GaussmemError):
    """A preset name, config file or override that cannot be applied."""


class DataError(GaussmemError):
    """A dataset is missing, incomplete or corrupt."""


class CacheError(GaussmemError):
    """The preprocessed-data cache cannot be read or written."""


class EpisodeError(GaussmemError):
    """An N-way K-shot request the dataset cannot satisfy."""


class MemoryFileError(GaussmemError):
    """A saved memory file is missing, corrupt, or does not fit the memory loading it."""
