"""``avapdefs.cloud``: the store options every tool shares, the credentials file, and what obstore is given.

These need no store: opening one only builds obstore's client. The same
options against a SeaweedFS that checks credentials: tests/test_store_credentials.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from obstore.exceptions import UnknownConfigurationKeyError
from obstore.store import from_url

from avapdefs import cloud
from avapdefs.client import cli as sync_cli
from avapdefs.cloud import StoreOptions, StoreURLError, open_remote, read_credentials, store_access
from exporter import cli as export_cli

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
URL = "s3://bucket/prefix"


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "store.env"
    path.write_text(text)
    path.chmod(mode)
    return path


def _refused(path: Path, url: str = URL, **options: object) -> str:
    with pytest.raises(StoreURLError) as caught:
        store_access(url, StoreOptions(credentials=path, **options))  # type: ignore[arg-type]
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message
    return message


def test_a_credentials_file_gives_obstore_its_settings_by_the_standard_names(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "# the bucket's writer\n\nAWS_ACCESS_KEY_ID=AKIDEXAMPLE\n"
        f"export AWS_SECRET_ACCESS_KEY = \"{SECRET}\"\nAWS_SESSION_TOKEN='token=with=equals'\n",
    )
    assert read_credentials(path) == {
        "AWS_ACCESS_KEY_ID": ("AKIDEXAMPLE", 3),
        "AWS_SECRET_ACCESS_KEY": (SECRET, 4),
        "AWS_SESSION_TOKEN": ("token=with=equals", 5),
    }
    access = store_access(URL, StoreOptions(credentials=path, environ={"AWS_SECRET_ACCESS_KEY": "from-the-env"}))
    assert access.config == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": "token=with=equals",
    }
    # The file's values win over the environment's (obstore applies its config after the variables);
    # the secrets to keep out of messages are the ones in force, the session token included.
    assert set(access.secrets) == {SECRET, "token=with=equals"}
    assert SECRET not in repr(access)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (f"AWS_ACCESS_KEY_ID=AKIDEXAMPLE\n{SECRET}\n", "line 2: not a NAME=value line"),
        (f"aws_secret_access_key={SECRET}\n", "line 1: not a NAME=value line"),
        (f"AWS_SECRET_KEY={SECRET}\n", "line 1: AWS_SECRET_KEY is not a store setting obstore reads"),
        (f"MY_SECRET={SECRET}\n", "line 1: not a standard variable's name (AWS_*, GOOGLE_*, AZURE_*)"),
        (f"AWS_SECRET_ACCESS_KEY={SECRET}\n" * 2, "line 2: AWS_SECRET_ACCESS_KEY is given again (first on line 1)"),
        ("AWS_SECRET_ACCESS_KEY=\n", "line 1: AWS_SECRET_ACCESS_KEY has no value"),
        (f"AWS_BUCKET={SECRET}\n", "line 1: AWS_BUCKET is not a store setting obstore reads"),  # the URL names it
        (f"GOOGLE_BEARER_TOKEN={SECRET}\n", "line 1: GOOGLE_BEARER_TOKEN is not a setting of s3:// stores"),
    ],
)  # fmt: skip
def test_a_bad_line_is_one_line_naming_the_file_and_the_line_never_the_value(
    tmp_path: Path, text: str, said: str
) -> None:
    path = _file(tmp_path, text)
    assert _refused(path) == f"the store credentials file {path}, {said}"


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.env"
    assert _refused(missing) == f"cannot read the store credentials file {missing}: No such file or directory"
    assert _refused(tmp_path) == f"the store credentials file {tmp_path} is not a regular file"
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"AWS_SECRET_ACCESS_KEY=\xff\xfe\n")
    assert _refused(binary) == f"the store credentials file {binary} is not UTF-8 text"
    large = _file(tmp_path, "# " + "x" * cloud.MAX_CREDENTIALS_BYTES)
    assert "is over 65536 bytes: not a credentials file" in _refused(large)


def test_the_flags_win_over_the_file_and_the_file_over_the_variables(tmp_path: Path) -> None:
    path = _file(tmp_path, "AWS_ENDPOINT=https://file.example\nAWS_REGION=eu-west-1\n")
    environ = {"AWS_ENDPOINT_URL": "https://env.example", "AWS_REGION": "us-east-1"}
    from_file = store_access(URL, StoreOptions(credentials=path, environ=environ))
    assert from_file.config == {"AWS_ENDPOINT": "https://file.example", "AWS_REGION": "eu-west-1"}
    flagged = store_access(
        URL, StoreOptions("https://flag.example:9000", "ap-south-1", path, environ)
    )  # the flag replaces the file's AWS_ENDPOINT (an alias of AWS_ENDPOINT_URL) as well
    assert flagged.config == {"AWS_ENDPOINT_URL": "https://flag.example:9000", "AWS_REGION": "ap-south-1"}
    assert store_access(URL, StoreOptions(environ=environ)).config == {}  # obstore reads the variables itself


def test_plain_http_to_the_endpoint_flag_is_for_loopback_unless_aws_allow_http_says_so() -> None:
    for loopback in ("http://127.0.0.1:8333", "http://localhost:8333", "http://[::1]:8333"):
        assert store_access(URL, StoreOptions(endpoint=loopback)).allow_http
    assert not store_access(URL, StoreOptions(endpoint="https://s3.example")).allow_http
    with pytest.raises(StoreURLError, match=r"plain http:// only to a loopback address; use https://, or set AWS_"):
        store_access(URL, StoreOptions(endpoint="http://minio.internal:9000"))
    allowed = StoreOptions(endpoint="http://minio.internal:9000", environ={"AWS_ALLOW_HTTP": "true"})
    assert store_access(URL, allowed).allow_http
    # The standard variable's rule stands as it was: an http:// AWS_ENDPOINT_URL means it.
    assert store_access(URL, StoreOptions(environ={"AWS_ENDPOINT_URL": "http://minio.internal:9000"})).allow_http


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (StoreOptions(endpoint=f"https://AKID:{SECRET}@s3.example"), "an endpoint never holds a user name or password"),
        (StoreOptions(endpoint="s3.example:9000"), "--store-endpoint: not an http:// or https:// URL of a host"),
        (StoreOptions(endpoint=f"https://s3.example/?X-Amz-Signature={SECRET}"), "not an http:// or https:// URL"),
        (StoreOptions(endpoint="https://s3.example:port"), "the port is not a number"),
        (StoreOptions(region="eu west"), "--store-region 'eu west': not a region name"),
    ],
)  # fmt: skip
def test_a_bad_endpoint_or_region_is_refused_without_quoting_a_secret(options: StoreOptions, said: str) -> None:
    with pytest.raises(StoreURLError) as caught:
        store_access(URL, options)
    assert said in str(caught.value) and SECRET not in str(caught.value)


def test_options_that_do_not_apply_to_the_url_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "GOOGLE_SERVICE_ACCOUNT=/run/secrets/gcs.json\n")
    with pytest.raises(
        StoreURLError, match=r"--store-credentials applies to s3://, gs:// and az:// stores, not to file://"
    ):
        store_access(f"file://{tmp_path}", StoreOptions(credentials=path))
    with pytest.raises(StoreURLError, match=r"--store-endpoint and --store-region apply to s3:// stores"):
        store_access("gs://bucket/prefix", StoreOptions(region="europe-west1", credentials=path))
    assert store_access("gs://bucket/prefix", StoreOptions(credentials=path)).config == {
        "GOOGLE_SERVICE_ACCOUNT": "/run/secrets/gcs.json"
    }  # fmt: skip


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_obstore_takes_every_name_the_file_may_hold(scheme: str) -> None:
    url = f"{scheme}://bucket/prefix"
    for name in sorted(cloud.NAMES_BY_SCHEME[scheme]):
        try:
            from_url(url, config={name: "x"})  # type: ignore[call-overload]
        except UnknownConfigurationKeyError:
            pytest.fail(f"obstore no longer takes {name} for {scheme}:// stores")
        except Exception:  # a value obstore cannot use ("x" is no boolean, no file): the name is known
            pass


def test_a_credentials_file_others_may_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    options = StoreOptions(
        endpoint="http://127.0.0.1:9",
        credentials=_file(tmp_path, f"AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY={SECRET}\n"),
    )
    with caplog.at_level(logging.WARNING):
        remote = open_remote(URL, "--from", options)  # building the client reaches nothing yet
    assert remote.secrets == (SECRET,) and caplog.records == []
    assert options.credentials is not None
    options.credentials.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        open_remote(URL, "--from", options)
    [record] = caplog.records
    said = f"the store credentials file {options.credentials} may be read by group or others (mode -rw-r-----)"
    assert record.getMessage() == f"{said}; chmod 600 it"


def test_each_tool_refuses_a_bad_credentials_file_with_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _file(tmp_path, f"AWS_ACCESS_KEY_ID=AKID\n{SECRET}\n")
    said = f"the store credentials file {bad}, line 2: not a NAME=value line"
    folder = tmp_path / "snapshots"
    args = ["--publish", URL, "--store-credentials", str(bad), "--snapshots", str(folder), "--dsn", "host=/nowhere"]
    assert export_cli.main(args) == export_cli.EXIT_USAGE
    assert capsys.readouterr().err == f"avap-export: {said}\n" and not folder.exists()
    assert sync_cli.sync_main(["--from", URL, "--dest", str(tmp_path / "cache"), "--store-credentials", str(bad)]) == 2
    assert capsys.readouterr().err == f"avap-sync: {said}\n"
    command = [sys.executable, "-m", "server", "--source", URL, "--snapshots", str(tmp_path / "served"), "--port", "0"]
    done = subprocess.run(
        command, env={"PATH": "/usr/bin:/bin", "AVAP_STORE_CREDENTIALS": str(bad)}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (2, f"avap-server: {said}\n")
