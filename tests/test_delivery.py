"""What a connection's subscriptions are sent (turbine/delivery.py), plain sync tests."""

from __future__ import annotations

import math

from turbine.delivery import Delivery
from turbine.protocol import Connection, Role


def test_a_connection_whose_rate_limited_monitor_went_has_no_time_to_wake_at() -> None:
    now = 10.0
    delivery = Delivery(Connection(Role.BROKER), {}, lambda *a: None, lambda: now, print)
    delivery.wake_at = 9.5  # a monitor's newest frame waited for its interval, then it went
    assert delivery.pull([]) is False
    # The writer sleeps until wake_at: one left in the past ended every sleep at once,
    # and the broker spun a core for a connection with nothing to send.
    assert delivery.wake_at == math.inf
