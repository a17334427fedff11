"""The driver registry: installed drivers by scheme (entry points), parameters, errors that
list what is accepted, drivers shipped by other packages."""

import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

from drivers.serial_mea import SerialDriver
from drivers.sim import SimDriver
from mea_control import cli
from mea_control.driver import (
    ENTRY_POINT_GROUP,
    DriverError,
    Param,
    discover_devices,
    driver_class,
    installed_drivers,
    open_driver,
    parse_url,
)


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


def test_the_installed_entry_points_are_those_of_pyproject():
    """A stale install (pyproject.toml changed, `make .venv/.installed` not run) fails here."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"][ENTRY_POINT_GROUP]
    ours = distribution("mea-control").entry_points.select(group=ENTRY_POINT_GROUP)
    assert {e.name: e.value for e in ours} == declared, "run `make .venv/.installed`"
    assert {name: e.value for name, e in installed_drivers().items()} == declared


def test_without_an_installed_driver_the_error_says_to_install(monkeypatch):
    monkeypatch.setattr("mea_control.driver.entry_points", lambda group: [])
    with pytest.raises(DriverError, match=r"accepted: none, no driver is installed: install "
                                          r"mea-control \(in a checkout: make .venv/.installed\)"):
        open_driver("sim://")


GHOST = """
    from mea_control.driver import Driver


    class Ghost(Driver):
        scheme = "ghost"

        @classmethod
        def discover(cls, timeout=0.5):
            return [("ghost://lab-2", "a ghost rig, 16 channels")]

        def open(self): ...
        def close(self): ...
        def start(self, block_samples=None): ...
        def stop(self): ...
        def read(self, timeout=None): ...
        def stimulate(self, pattern): ...
"""


def test_a_driver_shipped_by_another_package_is_found_and_discovered(plugin_driver, capsys):
    plugin_driver("ghost", GHOST, "Ghost")
    assert "ghost" in installed_drivers()
    driver = open_driver("ghost://lab-2")
    assert type(driver).__name__ == "Ghost" and driver.location == "lab-2"
    with pytest.raises(DriverError, match="accepted: cl://, ghost://, pulsepal://"):
        open_driver("usb://x")
    assert ("ghost://lab-2", "a ghost rig, 16 channels") in discover_devices(0.5)
    assert cli.main(["devices", "--timeout", "0.5"]) == 0
    assert "\nghost://lab-2  a ghost rig, 16 channels\n" in capsys.readouterr().out


def test_a_driver_with_a_missing_package_says_which(plugin_driver):
    plugin_driver("ghost", "import no_such_package_xyz\n", "Ghost")
    with pytest.raises(DriverError, match="^the ghost:// driver needs a missing package: "
                                          "no_such_package_xyz$"):
        driver_class("ghost")
    assert ("", "ghost://  not available: the ghost:// driver needs a missing package: "
                "no_such_package_xyz") in discover_devices(0.5)


def test_an_entry_point_that_is_not_a_driver_says_so(plugin_driver):
    plugin_driver("ghost", "Ghost = 42\n", "Ghost")
    with pytest.raises(DriverError, match="ghost:// driver 'ghost_driver:Ghost' is not a "
                                          "Driver class"):
        open_driver("ghost://")


def test_each_driver_is_asked_once_and_those_with_a_search_say_when_it_found_none(
        monkeypatch):
    classes = {driver_class(scheme) for scheme in installed_drivers()}
    asked = []
    for cls in classes:
        monkeypatch.setattr(cls, "discover", classmethod(lambda c, timeout: asked.append(c) or []))
    lines = discover_devices(0.5)
    assert sorted(map(str, asked)) == sorted(map(str, classes))  # socket:// is serial://'s
    assert [(url, text.split("  ")[0]) for url, text in lines] == \
        [("", "cl://"), ("", "pulsepal://"), ("", "rhx://")]
    assert "none: no Intan RHX TCP command server listens" in lines[-1][1]


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
