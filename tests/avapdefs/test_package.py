"""Signed code packages: layout, signature, and refusal of tampered packages."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avapdefs.format.package import PackageError, build_package, is_package, open_package

KEY = b"k" * 32
SOURCE = "def addVar(self, targetVarName, varValue):\n    self.conector.variables[targetVarName] = varValue  # ✓\n"


def test_layout_matches_the_legacy_contract() -> None:
    package = build_package(SOURCE, KEY)
    payload = SOURCE.encode()
    magic, version, length = struct.unpack(">4sHI", package[:10])
    assert (magic, version, length) == (b"AVAP", 1, len(payload))
    assert package[10:42] == hmac.new(KEY, package[:10] + payload, hashlib.sha256).digest()
    assert package[42:] == payload
    assert is_package(package)


def test_round_trip_recovers_the_exact_source() -> None:
    assert open_package(build_package(SOURCE, KEY), KEY) == SOURCE


def test_wrong_key_is_refused() -> None:
    with pytest.raises(PackageError, match="signature"):
        open_package(build_package(SOURCE, KEY), b"other key")


def test_empty_key_is_refused() -> None:
    with pytest.raises(PackageError, match="empty"):
        build_package(SOURCE, b"")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_is_refused(data: st.DataObject) -> None:
    package = bytearray(build_package(SOURCE, KEY))
    position = data.draw(st.integers(0, len(package) - 1))
    package[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(PackageError):
        open_package(bytes(package), KEY)
