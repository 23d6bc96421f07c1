"""The signed code package that legacy AVAP clients verify before running a command.

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic, ASCII "AVAP"
    4       2     package version, 1
    6       4     payload length N
    10      32    HMAC-SHA256 over bytes 0-9 followed by the payload, under the signing key
    42      N     payload: the command's Python source, UTF-8

Packages are built by the exporter (the only place the signing key lives) and
carried in snapshots as ``Command.signed_package``; the server only serves them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from avapdefs.errors import AvapDefsError

MAGIC = b"AVAP"
PACKAGE_VERSION = 1
HEADER = struct.Struct(">4sHI")
MAC_BYTES = 32


class PackageError(AvapDefsError):
    """A code package is malformed or its signature does not verify."""


def is_package(data: bytes) -> bool:
    """Whether ``data`` starts like a signed code package."""
    return data[: len(MAGIC)] == MAGIC


def build_package(source: str, key: bytes) -> bytes:
    """Sign ``source`` with ``key`` into a code package.

    Raises:
        PackageError: the key is empty.
    """
    if not key:
        raise PackageError("the signing key is empty")
    payload = source.encode("utf-8")
    header = HEADER.pack(MAGIC, PACKAGE_VERSION, len(payload))
    mac = hmac.new(key, header + payload, hashlib.sha256).digest()
    return header + mac + payload


def open_package(package: bytes, key: bytes) -> str:
    """Verify a code package with ``key`` and return its source.

    Raises:
        PackageError: bad magic, version or length, or the HMAC does not match.
    """
    if len(package) < HEADER.size + MAC_BYTES or not is_package(package):
        raise PackageError("not a signed code package")
    _, version, length = HEADER.unpack_from(package)
    if version != PACKAGE_VERSION:
        raise PackageError(f"code package version {version} is not supported")
    payload = package[HEADER.size + MAC_BYTES :]
    if len(payload) != length:
        raise PackageError(f"code package payload is {len(payload)} bytes, header says {length}")
    expected = hmac.new(key, package[: HEADER.size] + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, package[HEADER.size : HEADER.size + MAC_BYTES]):
        raise PackageError("code package signature does not verify")
    return payload.decode("utf-8")
