"""Exceptions the package raises on bad input.

Every error a user can cause is a ``MildnetError``: the CLI prints its message on one line and the
app shows it in a box, so messages must say what is wrong and what to do, without a traceback.
"""


class MildnetError(Exception):
    """Base class of the errors a user can cause (bad file, bad argument, missing resource)."""


class DataError(MildnetError):
    """A dataset, catalog, triplet file or manifest row is unusable."""


class ImageError(DataError):
    """An image cannot be decoded (not an image, truncated, too large, unsupported)."""


class DownloadError(MildnetError):
    """A download failed (offline, bad URL, checksum mismatch)."""


class ModelError(MildnetError):
    """A model name, weights file or checkpoint is unusable."""


class StoreError(MildnetError):
    """An embedding store cannot be reached or holds unusable data."""
