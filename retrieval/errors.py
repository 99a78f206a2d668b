"""Exceptions the library raises; the command-line layer turns them into a message and exit 2."""


class RetrievalError(Exception):
    """Base class: bad input or state the user can fix, with a message saying what and where."""


class ConfigError(RetrievalError, ValueError):
    """A configuration key, type or value that cannot be used."""


class DataError(RetrievalError, ValueError):
    """A dataset folder, annotation file or split that cannot be used."""


class ImageError(DataError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image)."""


class CheckpointError(RetrievalError, ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class IndexFormatError(RetrievalError, ValueError):
    """An index folder that is missing, broken or does not match the model."""


class TrainingError(RetrievalError, RuntimeError):
    """Training cannot go on (a non-finite loss, a run folder that does not fit the config)."""


class DistributedError(RetrievalError, RuntimeError):
    """A rank of a torchrun job lost its peers (another rank failed or was killed; its log says why)."""


class WriteError(RetrievalError):
    """An output file that cannot be written (a full disk, a file-size limit); names the file and the cause."""

    def __init__(self, path, cause: str):
        super().__init__(f"{path}: cannot write it: {cause}")
        self.path, self.cause = path, cause
