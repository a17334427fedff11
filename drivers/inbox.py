"""What drivers share: the inbox between a driver's reader thread and read().

The Driver port itself, its errors and the URL registry live in the core
(mea_control.driver); value types such as DeviceInfo in mea_control.types.
"""

from __future__ import annotations

import queue

from mea_control.driver import DriverError, Event


class Inbox:
    """The events a driver's reader thread received, for read() to hand out in order.

    Once the link is lost (:meth:`lose`, with a message that says what to check), ``lost``
    holds why and every :meth:`get` raises DriverError with it.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self.lost: str | None = None

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def lose(self, message: str) -> bool:
        """Mark the link lost (the first message stays); True if this call lost it."""
        if self.lost is not None:
            return False
        self.lost = message
        self._queue.put(None)
        return True

    def get(self, timeout: float | None) -> Event | None:
        """The next event, or None after ``timeout`` seconds; DriverError once lost."""
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is None:
            self._queue.put(None)  # every later get() raises too
            raise DriverError(self.lost)
        return event
