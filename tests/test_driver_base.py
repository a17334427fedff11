"""The driver URL registry: schemes, parameters, errors that list what is accepted."""

import pytest

from drivers.base import REGISTRY, DriverError, Param, driver_class, open_driver, parse_url
from drivers.serial_mea import SerialDriver
from drivers.sim import SimDriver


def test_scheme_picks_the_driver_and_query_sets_its_parameters():
    cls, location, options = parse_url("sim://bench/?seed=3&bursts=off")
    assert cls is SimDriver and location == "bench/"
    assert options["seed"] == 3 and options["bursts"] is False
    assert options["rate"] == SimDriver.params["rate"].default
    assert open_driver("sim://").url == "sim://"


def test_caller_defaults_give_way_to_the_url():
    """`mea-control devices --timeout` sets the timeout of URLs that do not set their own."""
    assert parse_url("socket://h:1", timeout=0.5)[2]["timeout"] == 0.5
    assert parse_url("socket://h:1?timeout=2", timeout=0.5)[2]["timeout"] == 2.0
    assert parse_url("socket://h:1")[2]["timeout"] == SerialDriver.params["timeout"].default
    assert "timeout" not in parse_url("sim://", timeout=0.5)[2]  # no such option: ignored


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nowhere", "has no scheme; write it like sim://"),
        ("usb://x", "unknown device scheme 'usb://'; accepted: cl://, pulsepal://, rhx://, "
                     "serial://, sim://, socket://"),
        ("sim://?speed=1", "unknown parameter 'speed' for sim://; accepted: bursts, culture"),
        ("sim://?seed=1.5", "bad value '1.5' for URL parameter 'seed': expected int"),
        ("sim://?bursts=maybe", "expected bool"),
    ],
)
def test_bad_urls_name_what_is_accepted(url, message):
    with pytest.raises(DriverError, match=message):
        open_driver(url)


def test_a_driver_with_a_missing_package_says_which(monkeypatch):
    monkeypatch.setitem(REGISTRY, "ghost", "no_such_package_xyz.driver:Ghost")
    with pytest.raises(DriverError, match="ghost:// driver needs a missing package"):
        driver_class("ghost")


def test_fast_mode_is_refused_by_real_devices():
    class Real(SimDriver):
        scheme = "real"

        def set_fast(self, fast):
            super(SimDriver, self).set_fast(fast)

    driver = Real("real://", {name: p.default for name, p in SimDriver.params.items()})
    driver.set_fast(False)
    with pytest.raises(DriverError, match="--fast works with the simulator only, not real://"):
        driver.set_fast(True)


def test_param_parses_booleans_strictly():
    flag = Param(bool, False)
    assert flag.parse("x", "yes") is True and flag.parse("x", "0") is False
    with pytest.raises(DriverError):
        flag.parse("x", "2")
