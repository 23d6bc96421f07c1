"""Opening the object store a command line names (``--publish``, ``--source``, ``--from``), and how it is reached.

The one place that says what a missing ``cloud`` extra or a URL that names
no store means, for every tool, and the one owner of the options the three
tools share to reach a store: ``--store-endpoint``, ``--store-region`` and
``--store-credentials``. Each tool adds them with ``add_store_options``,
reads them with ``store_options`` and opens its store with ``open_remote``;
``avapdefs.remote`` (and obstore) is imported only when a store is asked for.

Where a store's settings come from, the first that gives one wins:

1. the flags (or their variables, which the flags win over): the endpoint and the region;
2. the credentials file: ``NAME=value`` lines named as the standard variables are;
3. the standard variables themselves (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``), which obstore reads.

A secret is never a flag (a flag shows in ``ps``): it comes from the file
or the environment. No message here ever quotes a value of the file, and
``Remote`` is given the secret values to keep out of its own messages.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avapdefs.options import Option, add_options, resolve

if TYPE_CHECKING:
    from avapdefs.remote import Remote


class StoreURLError(ValueError):
    """A store cannot be opened as the command line says: the cloud extra is not installed, the URL names no
    store, or a store option or the credentials file cannot be used. A usage error (exit 2)."""


ENDPOINT = Option(
    "--store-endpoint",
    "AVAP_STORE_ENDPOINT",
    "store_endpoint",
    str,
    "an S3-compatible store's endpoint, https://host[:port], instead of AWS_ENDPOINT_URL; plain http:// only to "
    "a loopback address, unless AWS_ALLOW_HTTP=true",
)
REGION = Option("--store-region", "AVAP_STORE_REGION", "store_region", str, "the S3 region, instead of AWS_REGION")
CREDENTIALS = Option(
    "--store-credentials",
    "AVAP_STORE_CREDENTIALS",
    "store_credentials",
    Path,
    "a file of NAME=value lines named as the standard variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_SESSION_TOKEN; GOOGLE_SERVICE_ACCOUNT; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, ...); "
    "its values win over the variables'; a secret is never a flag",
)
STORE_OPTIONS: tuple[Option, ...] = (ENDPOINT, REGION, CREDENTIALS)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The standard variables obstore 0.12 reads for each kind of store (its S3Config, GCSConfig and AzureConfig),
# less the bucket's or container's name, which the URL gives. tests/avapdefs/test_cloud.py checks that obstore
# still takes each of them.
_S3_NAMES = _names(
    """AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_TOKEN AWS_REGION AWS_DEFAULT_REGION
    AWS_ENDPOINT AWS_ENDPOINT_URL AWS_VIRTUAL_HOSTED_STYLE_REQUEST AWS_S3_EXPRESS AWS_SKIP_SIGNATURE
    AWS_UNSIGNED_PAYLOAD AWS_CHECKSUM_ALGORITHM AWS_CONDITIONAL_PUT AWS_COPY_IF_NOT_EXISTS AWS_DISABLE_TAGGING
    AWS_DISABLE_BULK_DELETE AWS_REQUEST_PAYER AWS_IMDSV1_FALLBACK AWS_METADATA_ENDPOINT
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
    AWS_WEB_IDENTITY_TOKEN_FILE AWS_ROLE_ARN AWS_ROLE_SESSION_NAME AWS_SERVER_SIDE_ENCRYPTION AWS_SSE_KMS_KEY_ID
    AWS_SSE_BUCKET_KEY_ENABLED AWS_SSE_CUSTOMER_KEY_BASE64"""
)
_GCS_NAMES = _names(
    """GOOGLE_SERVICE_ACCOUNT GOOGLE_SERVICE_ACCOUNT_PATH GOOGLE_SERVICE_ACCOUNT_KEY GOOGLE_APPLICATION_CREDENTIALS
    GOOGLE_BEARER_TOKEN GOOGLE_BASE_URL GOOGLE_SKIP_SIGNATURE"""
)
_AZURE_NAMES = _names(
    """AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY AZURE_STORAGE_ACCESS_KEY AZURE_STORAGE_MASTER_KEY
    AZURE_STORAGE_CLIENT_ID AZURE_CLIENT_ID AZURE_STORAGE_CLIENT_SECRET AZURE_CLIENT_SECRET AZURE_STORAGE_TENANT_ID
    AZURE_TENANT_ID AZURE_STORAGE_AUTHORITY_ID AZURE_AUTHORITY_ID AZURE_STORAGE_AUTHORITY_HOST AZURE_AUTHORITY_HOST
    AZURE_STORAGE_SAS_KEY AZURE_STORAGE_SAS_TOKEN AZURE_STORAGE_TOKEN AZURE_STORAGE_USE_EMULATOR AZURE_ENDPOINT
    AZURE_STORAGE_ENDPOINT AZURE_MSI_ENDPOINT AZURE_IDENTITY_ENDPOINT AZURE_OBJECT_ID AZURE_MSI_RESOURCE_ID
    AZURE_FEDERATED_TOKEN_FILE AZURE_USE_AZURE_CLI AZURE_SKIP_SIGNATURE AZURE_DISABLE_TAGGING AZURE_CREDENTIAL_TYPE
    AZURE_FABRIC_TOKEN_SERVICE_URL AZURE_FABRIC_WORKLOAD_HOST AZURE_FABRIC_SESSION_TOKEN
    AZURE_FABRIC_CLUSTER_IDENTIFIER"""
)
NAMES_BY_SCHEME: Mapping[str, frozenset[str]] = {
    "s3": _S3_NAMES,
    "s3a": _S3_NAMES,
    "gs": _GCS_NAMES,
    "az": _AZURE_NAMES,
    "azure": _AZURE_NAMES,
    "abfs": _AZURE_NAMES,
    "abfss": _AZURE_NAMES,
}
_ALL_NAMES = _S3_NAMES | _GCS_NAMES | _AZURE_NAMES
# The names whose values are secrets: kept out of every message the store's answers make (``Remote``).
SECRET_NAMES = _names(
    """AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_TOKEN AWS_SSE_CUSTOMER_KEY_BASE64 GOOGLE_SERVICE_ACCOUNT_KEY
    GOOGLE_BEARER_TOKEN AZURE_STORAGE_ACCOUNT_KEY AZURE_STORAGE_ACCESS_KEY AZURE_STORAGE_MASTER_KEY
    AZURE_STORAGE_CLIENT_SECRET AZURE_CLIENT_SECRET AZURE_STORAGE_SAS_KEY AZURE_STORAGE_SAS_TOKEN AZURE_STORAGE_TOKEN
    AZURE_FABRIC_SESSION_TOKEN"""
)
_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
MAX_CREDENTIALS_BYTES = 64 * 1024  # a few hundred bytes in practice


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the options that say how to reach a store: ``--store-endpoint``, ``--store-region``,
    ``--store-credentials``."""
    add_options(parser, STORE_OPTIONS, {})


@dataclass(frozen=True)
class StoreOptions:
    """How to reach a store, as the command line and the environment say; nothing is read or checked yet.

    Attributes:
        endpoint: ``--store-endpoint`` (or ``AVAP_STORE_ENDPOINT``).
        region: ``--store-region`` (or ``AVAP_STORE_REGION``).
        credentials: ``--store-credentials`` (or ``AVAP_STORE_CREDENTIALS``).
        environ: the environment, for ``AWS_ALLOW_HTTP`` and the secrets to keep out of messages.
    """

    endpoint: str | None = None
    region: str | None = None
    credentials: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)


def store_options(args: argparse.Namespace, environ: Mapping[str, str]) -> StoreOptions:
    """The store options of a parser given ``add_store_options``: each flag, else its variable.

    Nothing is read here: a tool that opens no store is not held up by a credentials file it does not use.
    """
    values = resolve(args, environ, STORE_OPTIONS)  # str and Path: no value fails to parse
    return StoreOptions(
        values.get(ENDPOINT.field), values.get(REGION.field), values.get(CREDENTIALS.field), environ=environ
    )


@dataclass(frozen=True)
class StoreAccess:
    """What obstore is given for one store: its config (which wins over the variables it reads itself),
    whether plain HTTP is allowed, and the secret values no message may quote."""

    config: Mapping[str, str] = field(default_factory=dict, repr=False)
    allow_http: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False)


def store_access(url: str, options: StoreOptions) -> StoreAccess:
    """Turn ``options`` into obstore's settings for the store at ``url``; reads the credentials file.

    Raises:
        StoreURLError: an option does not apply to the URL's kind of store or is malformed, or the
            credentials file cannot be read or has a bad line (the message names the file and the line,
            never a value).
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    names = NAMES_BY_SCHEME.get(scheme)
    if names is None:
        values = {ENDPOINT.flag: options.endpoint, REGION.flag: options.region, CREDENTIALS.flag: options.credentials}
        given = [flag for flag, value in values.items() if value is not None]
        if given:
            raise StoreURLError(f"{given[0]} applies to s3://, gs:// and az:// stores, not to {scheme}://")
        return StoreAccess(allow_http=allow_http_from(options.environ))
    config: dict[str, str] = {}
    if options.credentials is not None:
        for name, (value, line) in read_credentials(options.credentials).items():
            if name not in names:
                where = _where(options.credentials, line)
                raise StoreURLError(f"{where}: {name} is not a setting of {scheme}:// stores")
            config[name] = value
    if (options.endpoint is not None or options.region is not None) and names is not _S3_NAMES:
        raise StoreURLError(f"{ENDPOINT.flag} and {REGION.flag} apply to s3:// stores; for {scheme}:// use the file")
    if options.endpoint is not None:
        config.pop("AWS_ENDPOINT", None)  # an alias of AWS_ENDPOINT_URL: the flag replaces both
        config["AWS_ENDPOINT_URL"] = _endpoint(options.endpoint)
    if options.region is not None:
        config["AWS_REGION"] = _region(options.region)
    effective = {**options.environ, **config}
    secrets = tuple(value for name, value in effective.items() if name in SECRET_NAMES and value)
    return StoreAccess(config, _allow_http(options.endpoint, effective), secrets)


def allow_http_from(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables let an S3, GCS or Azure endpoint be plain HTTP.

    ``AWS_ALLOW_HTTP=true`` says so, and so does an ``AWS_ENDPOINT_URL``
    (or ``AWS_ENDPOINT``) that starts with ``http://``: someone who names a
    plain-HTTP endpoint in the standard variable means it.
    """
    if _truthy(environ.get("AWS_ALLOW_HTTP", "")):
        return True
    endpoint = environ.get("AWS_ENDPOINT_URL") or environ.get("AWS_ENDPOINT") or ""
    return endpoint.lower().startswith("http://")


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes")


def _allow_http(endpoint: str | None, effective: Mapping[str, str]) -> bool:
    """Plain HTTP for ``--store-endpoint``: to a loopback address, or anywhere with ``AWS_ALLOW_HTTP=true``.

    The flag does not extend the standard variable's rule (an ``http://`` ``AWS_ENDPOINT_URL`` is allowed
    anywhere): credentials and catalogs should not cross a network in the clear because of a typed flag.

    Raises:
        StoreURLError: a plain-HTTP endpoint off this machine without ``AWS_ALLOW_HTTP=true``.
    """
    if endpoint is None:
        return allow_http_from(effective)
    allowed = _truthy(effective.get("AWS_ALLOW_HTTP", ""))
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme.lower() != "http" or allowed:
        return allowed
    if not _is_loopback(parts.hostname or ""):
        raise StoreURLError(
            f"{ENDPOINT.flag} {endpoint}: plain http:// only to a loopback address; use https://, "
            "or set AWS_ALLOW_HTTP=true to mean it"
        )
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(text: str) -> str:
    """``--store-endpoint``'s value, checked; a URL holding a user name or password is refused unquoted."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.username is not None or parts.password is not None:
        raise StoreURLError(
            f"{ENDPOINT.flag}: an endpoint never holds a user name or password; put credentials in "
            f"{CREDENTIALS.flag} FILE"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise StoreURLError(f"{ENDPOINT.flag}: not an http:// or https:// URL of a host, without a query")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise StoreURLError(f"{ENDPOINT.flag} {text!r}: the port is not a number from 0 to 65535") from None
    return text.strip()


def _region(text: str) -> str:
    if not _REGION.match(text.strip()):
        raise StoreURLError(f"{REGION.flag} {text!r}: not a region name (letters, digits, '-', '_', '.')")
    return text.strip()


def read_credentials(path: Path) -> dict[str, tuple[str, int]]:
    """The settings of a credentials file: name -> (value, line number).

    The file holds ``NAME=value`` lines (``export NAME=value`` too), named
    as the standard variables are; blank lines and lines starting with
    ``#`` are skipped; one pair of quotes around a value is removed.

    Raises:
        StoreURLError: the file cannot be read, is not a regular UTF-8 text file of at most
            ``MAX_CREDENTIALS_BYTES``, or a line is malformed, unknown, empty or repeated. The message
            names the file and the line; it never quotes a value (nor a line that is not ``NAME=value``).
    """
    text = _read_text(path)
    entries: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line.removeprefix("export ").lstrip()
        name, equals, value = line.partition("=")
        name = name.strip()
        where = _where(path, number)
        if not equals or not _NAME.match(name):
            raise StoreURLError(f"{where}: not a NAME=value line")
        if name not in _ALL_NAMES:
            if name.startswith(_PREFIXES):
                raise StoreURLError(f"{where}: {name} is not a store setting obstore reads")
            raise StoreURLError(f"{where}: not a standard variable's name (AWS_*, GOOGLE_*, AZURE_*)")
        if name in entries:
            raise StoreURLError(f"{where}: {name} is given again (first on line {entries[name][1]})")
        value = _unquoted(value.strip())
        if not value:
            raise StoreURLError(f"{where}: {name} has no value")
        entries[name] = (value, number)
    return entries


def _where(path: Path, line: int) -> str:
    return f"the store credentials file {path}, line {line}"


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _read_text(path: Path) -> str:
    """The file's text, following links (a Kubernetes secret is a link); a FIFO or a device is not read."""
    what = f"the store credentials file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreURLError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreURLError(f"{what} is not a regular file")
        data = b""
        while len(data) <= MAX_CREDENTIALS_BYTES and (chunk := os.read(fd, MAX_CREDENTIALS_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise StoreURLError(f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise StoreURLError(f"{what} is over {MAX_CREDENTIALS_BYTES} bytes: not a credentials file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreURLError(f"{what} is not UTF-8 text") from None


def open_remote(url: str, option: str, store: StoreOptions, **options: Any) -> Remote:
    """The store at ``url``, given with ``option``, reached as ``store`` says.

    A credentials file that group or others may read is warned about (``avapdefs.tls.warn_if_exposed``).

    Args:
        url: ``s3://bucket/prefix``, ``gs://…``, ``az://…`` or ``file:///path``.
        option: the flag that named it, for the message.
        store: the store options (``store_options``).
        options: passed to ``Remote`` (timeouts, retries).

    Raises:
        StoreURLError: obstore is not installed, ``url`` names no store it can open, or ``store`` cannot be used.
    """
    try:
        from avapdefs import remote  # obstore: the optional cloud extra
    except ImportError:
        raise StoreURLError(f"{option} needs obstore: pip install 'avap-definition-server[cloud]'") from None
    access = store_access(url, store)
    if store.credentials is not None:
        from avapdefs.tls import warn_if_exposed

        warn_if_exposed(store.credentials, "the store credentials file")
    try:
        return remote.Remote(url, allow_http=access.allow_http, config=access.config, secrets=access.secrets, **options)
    except remote.RemoteError as exc:
        raise StoreURLError(str(exc)) from None
