"""`logs`: the secret-masking processor and the structlog setup every stage uses."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog

from runner_driver import logs
from runner_driver.logs import REDACTED, Redactor

SECRET = "glcbt-64_secretjobtoken0123456789"
OTHER = "hunter2hunter2"


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """Every test starts and ends with structlog's defaults and no bound context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[str]:
    """The lines written to a stream so far."""
    return stream.getvalue().splitlines()


# --- Redactor -----------------------------------------------------------------------


def test_mask_replaces_every_occurrence_of_every_secret() -> None:
    """All occurrences of all secrets are replaced; the rest of the text is kept."""
    redactor = Redactor([SECRET, OTHER])
    text = f"token={SECRET} again {SECRET}; password {OTHER}."
    assert redactor.mask(text) == f"token={REDACTED} again {REDACTED}; password {REDACTED}."


def test_mask_replaces_the_longest_secret_first() -> None:
    """A secret that contains another is masked whole, leaving no tail of it behind."""
    short = "abcdefgh"
    long = "abcdefgh-and-more-secret"
    redactor = Redactor([short, long])
    assert redactor.secrets == (long, short)
    assert redactor.mask(f"{long} and {short}") == f"{REDACTED} and {REDACTED}"


def test_empty_secrets_are_ignored() -> None:
    """An empty secret value masks nothing (it would otherwise match between every char)."""
    redactor = Redactor(["", OTHER])
    assert redactor.secrets == (OTHER,)
    assert redactor.mask("plain text") == "plain text"


def test_processor_masks_strings_and_the_text_of_other_values() -> None:
    """Strings are masked; other objects are masked through str(); numbers and None stay."""
    redactor = Redactor([SECRET])
    event: dict[str, Any] = {
        "event": f"calling with {SECRET}",
        "error": RuntimeError(f"401 for token {SECRET}"),
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "path": Path(f"/tmp/{SECRET}/x"),
        "count": 3, "ratio": 0.5, "ok": True, "nothing": None,
    }
    masked = redactor(None, "info", event)
    assert masked["event"] == f"calling with {REDACTED}"
    assert masked["error"] == f"401 for token {REDACTED}"
    assert masked["headers"] == str({"Authorization": f"Bearer {REDACTED}"})
    assert masked["path"] == f"/tmp/{REDACTED}/x"
    assert (masked["count"], masked["ratio"], masked["ok"], masked["nothing"]) == \
        (3, 0.5, True, None)
    assert isinstance(masked["count"], int)
    assert SECRET not in repr(masked)


def test_processor_leaves_ints_alone_even_when_they_spell_a_secret() -> None:
    """A numeric secret is masked in text but an int value is never turned into text."""
    redactor = Redactor(["12345678"])
    masked = redactor(None, "info", {"event": "job 12345678", "job_id": 12345678})
    assert masked == {"event": f"job {REDACTED}", "job_id": 12345678}


# --- configure ---------------------------------------------------------------------


def test_configure_writes_to_the_given_stream_and_filters_by_level() -> None:
    """Events at the level or above reach the stream; lower ones are dropped."""
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    log = logs.get()
    log.debug("hidden-debug")
    log.info("shown-info", pod="p1")
    log.error("shown-error")
    text = stream.getvalue()
    assert "hidden-debug" not in text
    assert len(lines(stream)) == 2
    assert "shown-info" in lines(stream)[0] and "pod=p1" in lines(stream)[0]
    assert "[info" in lines(stream)[0] and "[error" in lines(stream)[1]


def test_default_level_is_warning() -> None:
    """Without a level, info is dropped and warning is shown."""
    stream = io.StringIO()
    logs.configure(stream=stream)
    logs.get().info("not-this")
    logs.get().warning("this")
    assert len(lines(stream)) == 1 and "this" in lines(stream)[0]
    assert "not-this" not in stream.getvalue()


def test_default_stream_is_stderr_never_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream, driver logs go to stderr; stdout stays untouched."""
    logs.configure("debug")
    logs.get().debug("to-stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "to-stderr" in captured.err


def test_json_format_writes_one_json_object_per_line() -> None:
    """The json format gives one parseable object per event, with level and timestamp."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    logs.get().info("first", attempt=2)
    logs.get().warning("second")
    parsed = [json.loads(line) for line in lines(stream)]
    assert [(p["event"], p["level"]) for p in parsed] == [("first", "info"),
                                                           ("second", "warning")]
    assert parsed[0]["attempt"] == 2
    assert all(p["timestamp"].endswith("Z") for p in parsed)


def test_bound_context_appears_in_every_line() -> None:
    """Context bound with `logs.bind` is carried by every later event."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    logs.bind(stage="run", job_id="42", pod="runner-x-job-42")
    logs.get().info("one")
    logs.get().error("two", extra="y")
    parsed = [json.loads(line) for line in lines(stream)]
    assert len(parsed) == 2
    for entry in parsed:
        assert (entry["stage"], entry["job_id"], entry["pod"]) == \
            ("run", "42", "runner-x-job-42")


def test_configure_returns_the_redactor_it_installed() -> None:
    """The returned redactor knows the secrets, so the CLI can mask its own messages."""
    redactor = logs.configure(secrets=[OTHER, SECRET, ""], stream=io.StringIO())
    assert redactor.secrets == (SECRET, OTHER)
    assert redactor.mask(f"x {OTHER}") == f"x {REDACTED}"


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_secrets_never_reach_the_output(fmt: str) -> None:
    """Secrets in event text, values, bound context and objects are masked in every format."""
    stream = io.StringIO()
    logs.configure("debug", fmt, secrets=[SECRET, OTHER], stream=stream)
    logs.bind(stage="run", pod=f"pod-{OTHER}")
    log = logs.get()
    log.info(f"using token {SECRET}")
    log.warning("request failed", url=f"https://x/?t={SECRET}", error=ValueError(OTHER))
    log.debug("nested", data={"password": OTHER, "list": [SECRET]})
    text = stream.getvalue()
    assert SECRET not in text and OTHER not in text
    assert len(lines(stream)) == 3
    assert text.count(REDACTED) == 8
    assert "using token" in text and "request failed" in text


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_secrets_in_logged_exceptions_are_masked(fmt: str) -> None:
    """`log.exception` renders the traceback, with secrets in the exception's text masked."""
    stream = io.StringIO()
    logs.configure("warning", fmt, secrets=[SECRET], stream=stream)
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        logs.get().exception("unexpected error")
    text = stream.getvalue()
    assert SECRET not in text
    assert f"RuntimeError: auth failed for {REDACTED}" in (
        json.loads(text)["exception"] if fmt == "json" else text)


@pytest.mark.parametrize("shown", [
    pytest.param(lambda s: base64.b64encode(s.encode()).decode(), id="base64"),
    pytest.param(lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
                 id="base64-unpadded"),
    pytest.param(lambda s: quote(s, safe=""), id="url-encoded"),
    pytest.param(lambda s: json.dumps(s)[1:-1], id="json-escaped"),
])
def test_secrets_are_masked_in_their_other_forms(shown: Any) -> None:
    """A secret is masked also base64-encoded, URL-encoded and JSON-escaped."""
    secret = 'p@ss/w"rd+\\1='
    redactor = Redactor([secret])
    assert redactor.mask(f"auth={shown(secret)};") == f"auth={REDACTED};"


def test_a_login_pair_is_masked_as_config_json_holds_it() -> None:
    """`user:password` given as a secret masks config.json's `auth` (its base64)."""
    auth = base64.b64encode(b"gitlab-ci-token:s3cr3t-t0ken").decode()
    redactor = Redactor(["s3cr3t-t0ken", "gitlab-ci-token:s3cr3t-t0ken"])
    assert redactor.mask(f'{{"auth": "{auth}"}}') == f'{{"auth": "{REDACTED}"}}'
