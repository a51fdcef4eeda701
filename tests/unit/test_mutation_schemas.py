"""recforge.schemas: the service's typed arguments and their checks (fast; each test names the bug it catches).
tests/service/test_guard.py asserts the same rules through the HTTP guard, with a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recforge.schemas import LOOPBACK_NAMES, ServeArgs, is_loopback

# ---- ServeArgs' validators -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["registry.json", "relative/production.json", "/srv/production.yaml", "/srv/production", "/srv/a\nb.json"],
)
def test_follow_registry_must_be_an_absolute_printable_json_path(path):
    # catches any one clause of the check dropped or inverted (a relative path, another suffix, a control
    # character in the path), and the message losing the rule or the value
    with pytest.raises(ValidationError) as info:
        ServeArgs(follow_registry=path)
    (error,) = info.value.errors()
    assert error["msg"] == f"Value error, follow_registry must be an absolute path to a .json file, got {path!r}"


def test_follow_registry_accepts_an_absolute_json_path_and_reads_empty_as_none():
    # catches a good path refused or changed, and "" kept as a path to follow (it means: follow nothing)
    assert ServeArgs(follow_registry="/srv/registry/production.json").follow_registry == "/srv/registry/production.json"
    assert ServeArgs(follow_registry="").follow_registry is None
    assert ServeArgs().follow_registry is None


@pytest.mark.parametrize("tag", ["recforge-model", "recforge-model:latest", "m:latest"])
def test_model_tag_must_be_pinned(tag):
    # catches a tag without a version or one ending in :latest accepted (the served model could change under a
    # running service), and the message losing the rule or the value
    with pytest.raises(ValidationError) as info:
        ServeArgs(model_tag=tag)
    (error,) = info.value.errors()
    assert error["msg"] == f"Value error, model_tag must be an exact name:version, got {tag!r}"


def test_model_tag_accepts_an_exact_version_and_reads_empty_as_none():
    # catches an exact tag refused (":latest" inside a version is not the latest tag), and "" kept as a tag
    assert ServeArgs(model_tag="recforge-model:abc123").model_tag == "recforge-model:abc123"
    assert ServeArgs(model_tag="m:latest-1").model_tag == "m:latest-1"
    assert ServeArgs(model_tag="").model_tag is None


# ---- hosts and the command line -----------------------------------------------------------------------------


def test_hosts_are_the_loopback_names_and_the_allowed_ones_normalised():
    # catches the loopback names dropped, names not stripped or lower-cased (a Host header is case-insensitive),
    # the wrong separator, and empty names (",,") allowed as a host
    assert ServeArgs().hosts() == LOOPBACK_NAMES == {"localhost", "127.0.0.1", "::1", "[::1]"}
    assert ServeArgs(allowed_hosts=" API.Example ,, b.example,").hosts() == LOOPBACK_NAMES | {
        "api.example",
        "b.example",
    }
    assert ServeArgs(allowed_hosts="*").hosts() == LOOPBACK_NAMES | {"*"}


def test_cli_passes_every_set_argument_and_writes_booleans_in_lower_case():
    # catches an argument left out or None passed as "None" (the default is the server's), booleans written
    # True/False (bentoml's --arg reads them as text), other values lower-cased too (a path or model name is
    # case-sensitive), the wrong flag, and a value not after `key=`
    args = ServeArgs(package_dir="/srv/Pkg", model="rerank", workers=2, access_log=False, feedback_foldin=True)
    assert args.cli() == [
        "--arg", "package_dir=/srv/Pkg",
        "--arg", "device=auto",
        "--arg", "model=rerank",
        "--arg", "workers=2",
        "--arg", "threads=1",
        "--arg", "access_log=false",
        "--arg", "allowed_hosts=",
        "--arg", "max_body_bytes=1048576",
        "--arg", "max_concurrency=100",
        "--arg", "max_explained=10",
        "--arg", "explain_budget_s=5.0",
        "--arg", "feedback_staleness_s=1.0",
        "--arg", "feedback_foldin=true",
        "--arg", "poll_s=2.0",
    ]  # fmt: skip
    assert ServeArgs.model_validate({"package_dir": "/p", "access_log": True}).cli()[:2] == ["--arg", "package_dir=/p"]
    assert "access_log=true" in ServeArgs(access_log=True).cli()


# ---- is_loopback ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        " LocalHost ",
        "127.0.0.1",
        "127.8.9.1",
        "::1",
        "[::1]",
        "[::1",
        "::ffff:127.0.0.1",
        "[::ffff:7f00:1]",
    ],
)
def test_loopback_hosts(host):
    # catches the name not stripped or lower-cased, brackets not removed on either side, the IPv4-mapped form
    # of 127.0.0.1 refused (a dual-stack socket reports it), and a 127/8 address other than .1 refused
    assert is_loopback(host) is True


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example", "::ffff:10.0.0.1", "", "[]"]
)
def test_non_loopback_hosts(host):
    # catches any name or address taken as the loopback (the API token could then be skipped for remote clients),
    # including an IPv4-mapped remote address and a name that only starts with "localhost"
    assert is_loopback(host) is False
