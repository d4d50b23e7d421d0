"""LoginThrottle: failed logins per client address, on a clock the test moves."""

from __future__ import annotations

from tesserad.security.limits import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_fails_at_once_then_waits_for_each_retry():
    clock = Clock()
    throttle = LoginThrottle(at_once=3, retry_s=10.0, max_addresses=100, clock=clock)
    for _ in range(3):
        assert throttle.wait_s("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == 10.0
    assert throttle.wait_s("10.0.0.2") == 0
    clock.now += 4
    assert throttle.wait_s("10.0.0.1") == 6.0
    clock.now += 6
    assert throttle.wait_s("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == 10.0


def test_an_ipv6_client_counts_as_its_slash_64():
    throttle = LoginThrottle(at_once=1, retry_s=10.0, max_addresses=100, clock=Clock())
    throttle.failed("2001:db8:1:2::1")
    assert throttle.wait_s("2001:db8:1:2:ffff::9") == 10.0
    assert throttle.wait_s("2001:db8:1:3::1") == 0
    throttle.failed("::ffff:192.0.2.7")
    assert throttle.wait_s("192.0.2.7") == 10.0


def test_an_ipv6_client_counts_as_its_slash_48_too():
    """Else one holding a /48 (as a site commonly does) would try from each of its /64s in turn."""
    throttle = LoginThrottle(at_once=2, retry_s=10.0, max_addresses=100, clock=Clock())
    for network in range(4 * 2):
        assert throttle.wait_s(f"2001:db8:1:{network}::1") == 0
        throttle.failed(f"2001:db8:1:{network}::1")
    assert throttle.wait_s("2001:db8:1:ffff::1") == 10.0
    assert throttle.wait_s("2001:db8:2::1") == 0


def test_the_table_of_addresses_stays_bounded_never_forgetting_one_held_back():
    """Forgetting the oldest would let a client with many addresses (an IPv6 network) try
    from each in turn for ever; addresses it has no room for share one count instead."""
    clock = Clock()
    throttle = LoginThrottle(at_once=1, retry_s=10.0, max_addresses=3, clock=clock)
    for last in range(1, 50):
        throttle.failed(f"10.0.0.{last}")
        clock.now += 0.01
        assert len(throttle) <= 4
    assert throttle.wait_s("10.0.0.1") > 0 and throttle.wait_s("10.0.0.3") > 0
    assert throttle.wait_s("10.0.0.49") > 0 and throttle.wait_s("10.0.0.50") > 0
    # Once those refill, their room is given to new addresses.
    clock.now += 10
    assert throttle.wait_s("10.0.0.50") == 0
    throttle.failed("10.0.0.50")
    assert throttle.wait_s("10.0.0.50") == 10.0 and throttle.wait_s("10.0.0.51") == 0


def test_a_bucket_slow_to_refill_does_not_keep_the_refilled_ones_behind_it_remembered():
    # A drained /48 (SITE_AT_ONCE times the tries, so as many times as slow to refill) at the
    # front of the table kept every refilled address behind it remembered: new addresses all
    # shared the overflow bucket, which a few failures kept empty for every one of them.
    clock = Clock()
    throttle = LoginThrottle(at_once=5, retry_s=10.0, max_addresses=100, clock=clock)
    for subnet in range(4):
        for _ in range(5):
            throttle.failed(f"2001:db8:0:{subnet:x}::1")  # the /48 drained: 20 failures
    clock.now += 60  # its /64s have refilled, it has not: the /48 is now the oldest held back
    for host in range(99):
        throttle.failed(f"10.0.0.{host + 1}")
    clock.now += 60  # the IPv4 addresses have refilled, the /48 still not
    for host in range(5):
        throttle.failed(f"192.0.2.{host + 1}")
    assert throttle.wait_s("198.51.100.1") == 0
    assert len(throttle) <= 101
