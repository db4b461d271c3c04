"""The Host allowlist and the origin check on any input (no broker): without a token, only
the three loopback names with the dashboard's port are served, whatever else a client (or a
rebinding attacker, who picks the name) sends; nothing raises on hostile headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.schemas.errors import InvalidArgument
from leveret.services.dashboard.origins import (
    Fetch,
    Hosts,
    check_allowed_hosts,
    fetch_metadata,
    split_host,
)

PORT = 8700
LOOPBACK = {"localhost:8700", "127.0.0.1:8700", "[::1]:8700"}
# Host-like text: names, dots, colons, brackets, digits, and a little of anything.
HOSTISH = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_:[]%@/ \t\x00é", max_size=40),
    st.sampled_from(sorted(LOOPBACK)).map(lambda h: h + "."),
    st.builds(
        lambda n, p: f"{n}:{p}",
        st.sampled_from(["localhost", "127.0.0.1", "[::1]"]),
        st.integers(-1, 70000),
    ),
    st.text(max_size=20),
)


@given(HOSTISH)
def test_without_a_token_only_the_loopback_names_with_the_port_are_served(host: str) -> None:
    assert Hosts().serves(host.lower(), PORT, "http") == (host.lower() in LOOPBACK)


@given(HOSTISH)
def test_an_origin_is_the_dashboards_only_with_an_allowed_host(origin_host: str) -> None:
    for scheme in ("http", "https"):
        origin = f"{scheme}://{origin_host}"
        own = Hosts().own_origin(origin, "127.0.0.1:8700", PORT, "http")
        assert own == (origin_host.lower() in LOOPBACK)


@given(st.text(max_size=60))
def test_an_allowed_hosts_setting_is_checked_or_refused_never_anything_else(text: str) -> None:
    refused = ""
    hosts: tuple[str, ...] = ()
    try:
        hosts = check_allowed_hosts(text)
    except InvalidArgument as exc:
        refused = str(exc)
    if refused:
        assert "--allowed-hosts" in refused
    assert all(split_host(host) is not None for host in hosts)
    for host in hosts:  # each is served exactly
        assert Hosts(hosts).serves(host, PORT, "http")


@pytest.mark.parametrize(
    ("headers", "method", "expected"),
    [
        ({}, "GET", Fetch.OWN),
        ({"sec-fetch-site": "same-origin", "sec-fetch-dest": "image"}, "GET", Fetch.OWN),
        ({"sec-fetch-site": "none", "sec-fetch-mode": "navigate"}, "GET", Fetch.OWN),
        (
            {
                "sec-fetch-site": "cross-site",
                "sec-fetch-mode": "navigate",
                "sec-fetch-dest": "document",
            },
            "GET",
            Fetch.CROSS_SITE_NAVIGATION,
        ),
        (
            {
                "sec-fetch-site": "same-site",
                "sec-fetch-mode": "navigate",
                "sec-fetch-dest": "document",
            },
            "GET",
            Fetch.CROSS_SITE_NAVIGATION,
        ),
        (
            {
                "sec-fetch-site": "cross-site",
                "sec-fetch-mode": "navigate",
                "sec-fetch-dest": "iframe",
            },
            "GET",
            Fetch.REFUSED,
        ),
        (
            {
                "sec-fetch-site": "cross-site",
                "sec-fetch-mode": "navigate",
                "sec-fetch-dest": "document",
            },
            "POST",
            Fetch.REFUSED,
        ),
        (
            {
                "sec-fetch-site": "cross-site",
                "sec-fetch-mode": "no-cors",
                "sec-fetch-dest": "image",
            },
            "GET",
            Fetch.REFUSED,
        ),
        (
            {"sec-fetch-site": "cross-site", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"},
            "GET",
            Fetch.REFUSED,
        ),
        ({"sec-fetch-site": "gibberish"}, "GET", Fetch.REFUSED),
    ],
)
def test_the_resource_isolation_policy(
    headers: dict[str, str], method: str, expected: Fetch
) -> None:
    assert fetch_metadata(headers, method) is expected
