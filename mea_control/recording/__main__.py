"""``python -m mea_control.recording ...``: the recording process (see ``disk.main``)."""

from mea_control.recording.disk import main

main()
