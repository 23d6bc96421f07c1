"""The client's address check, its words for an unreachable server, and where an API key comes from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avapdefs.client.address import parse_server, unreachable_reason
from avapdefs.client.auth import api_key_from, read_api_key_file


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:50051", "localhost:1", "avap-server:65535", "defs.example.com:443", "[::1]:50051", " host:80 \n"],
)
def test_host_port_is_accepted(text: str) -> None:
    assert parse_server(text) == text.strip()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not an address", "no port"),
        ("127.0.0.1", "no port"),
        (":50051", "no host"),
        ("host:", "the port must be a number"),
        ("host:65536", "the port must be a number"),
        ("host:-1", "the port must be a number"),
        ("::1:50051", "write an IPv6 address in brackets"),
        ("[nope]:50051", "not a host name"),
        ("bad host:50051", "not a host name"),
        ("", "empty"),
    ],
)
def test_anything_else_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_server(text)


def test_grpc_connect_failures_become_a_few_words() -> None:
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50099: "
        "Failed to connect to remote host: Connection refused"
    )
    unknown_name = (
        "errors resolving nosuch.invalid:5000: [field:hostname lookup error:address lookup failed for "
        "nosuch.invalid:5000: Domain name not found]"
    )
    assert unreachable_reason(refused) == "connection refused"
    assert unreachable_reason(unknown_name) == "domain name not found"
    assert unreachable_reason("the server is shutting down; retry (with backoff)") is None


def test_a_key_file_is_trimmed_and_an_open_one_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key"
    path.write_text("  k3y \n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert read_api_key_file(path) == "k3y"
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_api_key_file(path) == "k3y"
    assert [record.getMessage() for record in caplog.records] == [
        f"the API key file {path} may be read by group or others (mode -rw-r--r--); chmod 600 it"
    ]


def test_the_file_wins_over_the_variable_and_blank_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("from-file")
    path.chmod(0o600)
    assert api_key_from(path, {"AVAP_API_KEY": "from-env"}) == "from-file"
    assert api_key_from(None, {"AVAP_API_KEY": " from-env\n"}) == "from-env"
    assert api_key_from(None, {}) is None
    with pytest.raises(ValueError, match="AVAP_API_KEY is set, but the API key is blank"):
        api_key_from(None, {"AVAP_API_KEY": "  "})
    path.write_text("\n")
    with pytest.raises(ValueError, match="is blank"):
        api_key_from(path, {})
    with pytest.raises(ValueError, match="cannot read the API key file"):
        api_key_from(tmp_path / "missing", {})
