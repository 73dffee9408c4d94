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


class GenerativeError(GaussmemError):
    """A checkpoint or request the generative tools cannot serve."""


class ImageError(GaussmemError):
    """An image that cannot be read or turned into a model input."""


class GallerySearchError(GaussmemError):
    """FAISS is missing, or an index was asked for something it cannot do."""


class MetricsError(GaussmemError):
    """A `metrics.jsonl` with a damaged record before its last line."""


class UnknownMethodError(GaussmemError):
    """A method name that no module registered."""


class RunDirectoryError(GaussmemError):
    """A run directory that cannot be used as asked, or a write into it that failed."""


class CheckpointError(GaussmemError):
    """A checkpoint that is missing, unreadable, unsafe or not a gaussmem checkpoint."""


class TrainingError(GaussmemError):
    """A run directory, resume request or training shape that cannot be used."""


class GalleryError(GaussmemError):
    """A gallery directory that is missing, corrupt, or does not fit its checkpoint."""


class DistributedError(GaussmemError):
    """A launch that cannot run as asked (incomplete torchrun environment, a method or
    setting without multi-process support)."""


class DeviceError(GaussmemError):
    """A device name that is malformed or names hardware this machine lacks."""
