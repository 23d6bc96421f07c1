"""Opening the object store a command line names (``--publish``, ``--source``, ``--from``).

The one place that says what a missing ``cloud`` extra or a URL that names
no store means, for every tool; ``avapdefs.remote`` (and obstore) is
imported only when a store is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avapdefs.remote import Remote


class StoreURLError(ValueError):
    """A store cannot be opened: the cloud extra is not installed, or the URL names no store. A usage error."""


def open_remote(url: str, option: str, environ: Mapping[str, str], **options: Any) -> Remote:
    """The store at ``url``, given with ``option``; plain HTTP where the standard variables allow it.

    Args:
        url: ``s3://bucket/prefix``, ``gs://…``, ``az://…`` or ``file:///path``.
        option: the flag that named it, for the message.
        environ: the environment (``AWS_ALLOW_HTTP``, ``AWS_ENDPOINT_URL``).
        options: passed to ``Remote`` (timeouts, retries).

    Raises:
        StoreURLError: obstore is not installed, or ``url`` names no store it can open.
    """
    try:
        from avapdefs import remote  # obstore: the optional cloud extra
    except ImportError:
        raise StoreURLError(f"{option} needs obstore: pip install 'avap-definition-server[cloud]'") from None
    try:
        return remote.Remote(url, allow_http=remote.allow_http_from(environ), **options)
    except remote.RemoteError as exc:
        raise StoreURLError(str(exc)) from None
