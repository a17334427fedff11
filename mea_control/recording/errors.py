"""The one error the recording package raises for files and paths a user can fix."""


class RecordingError(Exception):
    """A recording that cannot be written, read or recovered; the message names file and fix."""


def is_locked(exc: OSError) -> bool:
    """True if h5py could not open a file because another program has it open for writing."""
    return "unable to lock file" in str(exc)
