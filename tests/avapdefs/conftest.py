"""Fixtures of the shared core's tests: a real S3-compatible store (SeaweedFS) on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.objectstore import SeaweedS3, seaweed_s3

_BUCKET = "avap"
_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session, with one bucket; each test takes its own prefix in it."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as store:
        store.create_bucket(_BUCKET)
        yield store


@pytest.fixture
def s3_url(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of an empty prefix in the store, with the standard AWS_* variables pointing at it."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{_BUCKET}/catalog-{next(_prefixes)}"
