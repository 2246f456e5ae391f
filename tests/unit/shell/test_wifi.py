"""The bar's Wi-Fi field and the Wi-Fi page's list, from what NetworkManager reports."""

from __future__ import annotations

from vmclient.shell.wifi import Network, WifiState, connection_settings, networks, ssid_of, text


def test_one_entry_per_network_strongest_first_hidden_ones_left_out():
    aps = [Network("cafe", 40, False, "/ap/1"), Network("office", 50, True, "/ap/2"),
           Network("office", 72, True, "/ap/3"), Network("", 90, False, "/ap/4"),
           Network("bar", 40, False, "/ap/5")]
    assert [(n.ssid, n.strength, n.path) for n in networks(aps)] == [
        ("office", 72, "/ap/3"), ("bar", 40, "/ap/5"), ("cafe", 40, "/ap/1")]


def test_the_bar_says_which_network_or_none():
    office = Network("office", 72, True, "/ap/3")
    assert text(WifiState()) == ""  # no Wi-Fi device: nothing to say
    assert text(WifiState("/dev/wlan0", (office,), None)) == "Wi-Fi: not connected"
    assert text(WifiState("/dev/wlan0", (office,), office)) == "Wi-Fi office 72%"


def test_an_ssid_is_bytes_and_not_trusted():
    assert ssid_of(b"caf\xc3\xa9") == "caf\u00e9"
    assert ssid_of(b"bad\xff\nline") == "bad\ufffd line"
    assert len(ssid_of(b"x" * 100)) == 32


def test_a_password_only_for_a_secured_network():
    assert connection_settings(Network("cafe", 40, False, "/ap/1"), "ignored") == {}
    assert connection_settings(Network("office", 72, True, "/ap/3"), "s3cret") == {
        "802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": "s3cret"}}
