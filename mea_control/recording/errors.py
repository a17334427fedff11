"""The one error the recording package raises for files and paths a user can fix."""


class RecordingError(Exception):
    """A recording that cannot be written, read or recovered; the message names file and fix."""
