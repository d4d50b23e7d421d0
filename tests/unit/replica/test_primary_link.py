"""A replica's link to its primary as /metrics and GetServerInfo read it: the last contact is the
scrape's time while the stream is open, then the moment it ended; a store followed from the
start again forgets the old primary's change numbers."""

from __future__ import annotations

from tesserad.replica.link import LinkState, PrimaryLink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_last_contact_is_now_while_connected_then_when_the_stream_ended() -> None:
    clock = Clock()
    link = PrimaryLink(clock)
    assert link.state() == LinkState(connected=False, primary_change=0, last_contact=0.0)
    link.closed()  # a stream that never answered is no contact
    assert link.state().last_contact == 0.0
    link.answered(7)
    clock.now = 1010.0
    assert link.state() == LinkState(connected=True, primary_change=7, last_contact=1010.0)
    link.closed()
    clock.now = 1500.0
    assert link.state() == LinkState(connected=False, primary_change=7, last_contact=1010.0)


def test_the_primary_change_only_grows_until_another_store_is_followed() -> None:
    link = PrimaryLink(Clock())
    link.answered(9)
    link.answered(4)  # the newest told of stands
    assert link.state().primary_change == 9
    link.restarted()
    link.answered(2)
    assert link.state().primary_change == 2
