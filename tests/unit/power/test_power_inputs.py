"""Reading AC and battery from power_supply attributes; the power config."""

from __future__ import annotations

import pytest

from vmclient.errors import ConfigError
from vmclient.power import config
from vmclient.power.policy import PowerSource
from vmclient.power.udev import read_power

MAINS_ON = {"type": "Mains", "online": "1"}
MAINS_OFF = {"type": "Mains", "online": "0"}


def bat(cap: str, level: str = "Normal", **kw: str) -> dict[str, str]:
    return {"type": "Battery", "present": "1", "capacity": cap, "capacity_level": level, **kw}


def test_laptop_on_ac():
    r = read_power([MAINS_ON, bat("80")], 5)
    assert (r.source, r.battery_present, r.battery_percent, r.critical) == \
        (PowerSource.AC, True, 80.0, False)


def test_laptop_on_battery_critical_by_level_or_threshold():
    assert read_power([MAINS_OFF, bat("40", "Critical")], 5).critical
    assert read_power([MAINS_OFF, bat("4")], 5).critical
    assert not read_power([MAINS_OFF, bat("6")], 5).critical
    assert not read_power([MAINS_ON, bat("2", "Critical")], 5).critical  # on AC: not critical


def test_desktop_without_supplies_runs_on_mains():
    r = read_power([], 5)
    assert r.source == PowerSource.AC and not r.battery_present


def test_peripheral_batteries_and_absent_ones_do_not_count():
    r = read_power([MAINS_OFF, bat("3", scope="Device"), {**bat("50"), "present": "0"}], 5)
    assert not r.battery_present and r.source == PowerSource.AC


def test_two_batteries_are_averaged_and_garbage_is_ignored():
    r = read_power([MAINS_OFF, bat("100"), bat("50"), bat("not-a-number")], 5)
    assert r.battery_percent == 75.0 and r.source == PowerSource.BATTERY


def test_config_defaults_and_a_full_file(tmp_path):
    assert config.load(tmp_path / "missing.toml") == config.PowerConfig()
    f = tmp_path / "power.toml"
    f.write_text('[lid]\non_battery = "pause"\nown = false\n[vms.policies]\nwin = "s3"\n'
                 '[sleep]\nmax_delay_s = 2\n')
    c = config.load(f)
    assert c.lid.on_battery == "pause" and not c.lid.own and c.vms.policies["win"] == "s3"
    assert c.sleep.max_delay_s == 2.0 and not c.lid_policy().own_lid


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[lid]\non_battery = "hibernate"\n', "lid.on_battery", "'hibernate' is not one of"),
    ('[vms]\ntimeout_s = "fast"\n', "vms.timeout_s", "must be a number"),
    ('[vms.policies]\nwin = "s4"\n', "vms.policies.win", "'s4' is not one of"),
    ('[sleep]\nmax_delay_s = 0\n', "sleep.max_delay_s", "below the minimum"),
    ('[lid]\nonac = "pause"\n', "lid.onac", "unknown key"),
    ("[lid\n", "(file)", "not valid TOML"),
    ("lid = 3\n", "lid", "must be a table"),
])
def test_config_errors_name_file_and_key(tmp_path, text, key, problem):
    f = tmp_path / "power.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(f)
    assert str(err.value).startswith(f"{f}: {key}: ")
    assert problem in str(err.value)
    assert err.value.exit_code == 78


def test_the_shipped_example_config_is_valid_and_says_the_defaults():
    from testlib import DATA

    assert config.load(DATA / "vmclient" / "power.toml") == config.PowerConfig()
