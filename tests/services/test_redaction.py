"""Redaction: no URL's password survives in text Leveret writes, whatever the password holds.

A password may hold spaces, ``@``, ``#``, ``/``, quotes, percent-escapes, non-ASCII: every
character but a line break (Python's URL parsing, and so pika's, drops those). It is hidden
in a URL alone, in free text around it, in the URL forms `Broker` accepts (several URLs
with commas between them, a list), in log records (Leveret's and the standard library's,
their fields, messages and tracebacks) and in `leveret ping`'s errors. Text without a
password is left as it is.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from leveret.actors import Actor, RetryPolicy, handler
from leveret.schemas import Message, wire
from leveret.schemas.errors import BrokerConnectionError, ConfigurationError
from leveret.services import RabbitBroker, config
from leveret.services.observability.logs import StructuredFormatter, get_logger
from leveret.services.observability.redaction import redact, redact_value
from leveret.services.operations.heartbeats import Heartbeats
from leveret.services.runtime.execution import ERROR_MESSAGE_LIMIT, TRACEBACK_LIMIT
from leveret.services.testing import MemoryBroker
from tests.support import ROOT, free_port, leveret_cli, running, wait_until

# Every character but line breaks (and lone surrogates, which no UTF-8 text holds).
passwords = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    min_size=1,
    max_size=30,
)
# A user name holds no ":" (it ends there), "/" or "@" (they end the user information).
users = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=":/@\r\n"),
    max_size=10,
)
schemes = st.sampled_from(["amqp", "amqps", "AMQP", "postgresql+psycopg", "redis"])
broker_schemes = st.sampled_from(["amqp", "amqps", "AMQPS"])
hosts = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,15}(:[0-9]{1,5})?(/[a-z%0-9]{0,8})?\Z")
# Text around a URL: no "@" after it (a later "@" could end a password that holds spaces,
# so redaction hides up to there: more, never less) and no other URL.
around = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=":/@"),
    max_size=30,
)


@st.composite
def urls(draw: st.DrawFn, scheme_of: st.SearchStrategy[str] = schemes) -> tuple[str, str]:
    """A URL with a password, and the same URL as it must read redacted."""
    scheme, user, password, host = draw(scheme_of), draw(users), draw(passwords), draw(hosts)
    return f"{scheme}://{user}:{password}@{host}", f"{scheme}://{user}:***@{host}"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "cannot connect to amqp://app:pa ss word@rabbit:5672/: refused",
            "cannot connect to amqp://app:***@rabbit:5672/: refused",
        ),
        ("amqp://u: leading and trailing @h/", "amqp://u:***@h/"),
        ('amqp://u:it\'s "quoted"@h/', "amqp://u:***@h/"),
        ("amqp://u:pässwörd €@h/", "amqp://u:***@h/"),
        ("amqp://u:p%20w%40rd@h/", "amqp://u:***@h/"),
        ("amqp://u:a b@h1,amqp://v:c d@h2", "amqp://u:***@h1,amqp://v:***@h2"),
        ("amqps://u:a b@h1, amqps://v:c d@h2/", "amqps://u:***@h1, amqps://v:***@h2/"),
        ("amqp://u:a://b c@h", "amqp://u:***@h"),
        ("line amqp://u:one two@h\nnext line x@y", "line amqp://u:***@h\nnext line x@y"),
        ("AMQP://guest:guest@localhost:5672/", "AMQP://guest:***@localhost:5672/"),
        ("amqp://app:p@ss/w#rd@rabbit:5672/prod", "amqp://app:***@rabbit:5672/prod"),
        ("connect to amqps://u:a:b%40c@h/v failed", "connect to amqps://u:***@h/v failed"),
        ("amqp://:only@h", "amqp://:***@h"),
        ("amqp://a:1@h1,amqp://b:2@h2", "amqp://a:***@h1,amqp://b:***@h2"),
        ("postgresql+psycopg://app:x,y@db/shop", "postgresql+psycopg://app:***@db/shop"),
        ("memory://", "memory://"),
        ("amqp://user@h/", "amqp://user@h/"),
    ],
)
def test_any_password_is_hidden_and_text_without_one_kept(text: str, redacted: str) -> None:
    assert redact(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "amqp://localhost:5672/ is down",
        "amqp://guest@localhost/ and mail to ops@example.com",
        "see http://example.com/a b@c",
        "no URL at all: a@b, c:d",
        "memory://",
    ],
)
def test_text_without_a_password_is_left_alone(text: str) -> None:
    assert redact(text) == text


@settings(max_examples=500, deadline=None)
@given(before=around, url=urls(), after=around)
def test_no_password_survives_in_free_text(before: str, url: tuple[str, str], after: str) -> None:
    written, redacted = url
    assert redact(f"{before} {written} {after}") == f"{before} {redacted} {after}"


@settings(max_examples=300, deadline=None)
@given(st.lists(urls(broker_schemes), min_size=2, max_size=4), st.sampled_from([",", ", "]))
def test_no_password_survives_in_a_list_of_broker_urls(
    nodes: list[tuple[str, str]], comma: str
) -> None:
    """Several URLs as `Broker` takes them: one string with commas between them, or a list
    (logged as a list, or formatted into a message as one)."""
    written = [one for one, _ in nodes]
    joined = comma.join(written)
    try:
        split = config.broker_urls(joined)
    except ConfigurationError:  # a user name with commas reads as URLs of no known scheme
        split = []
    assume(split == written)  # a password with ",amqp://" would split
    assert redact(joined) == comma.join(redacted for _, redacted in nodes)
    assert redact_value(written) == [redacted for _, redacted in nodes]
    # Formatted as a Python list, the URLs are no longer told apart (quotes may be part of
    # a password): everything from the first password to the last "@" is hidden.
    text = f"broker URLs {written!r} refused"
    first = text.index(":", text.index("://") + 3) + 1
    assert redact(text) == text[:first] + "***" + text[text.rindex("@") :]


@settings(max_examples=200, deadline=None)
@given(url=urls(), note=around)
def test_no_password_survives_in_log_records_of_leveret_or_the_standard_library(
    url: tuple[str, str], note: str
) -> None:
    """Through the formatter of every handler Leveret installs: Leveret's events (message,
    fields), a standard-library record (message and traceback)."""
    written, redacted = url
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter(json=True))
    logger = logging.getLogger("tests.redaction")
    leveret_logger = logging.getLogger("leveret.tests.redaction")
    for one in (logger, leveret_logger):
        one.addHandler(handler)
        one.setLevel(logging.INFO)
        one.propagate = False
    try:
        get_logger("leveret.tests.redaction").info(
            f"connecting to {written}", url=written, nested={"urls": [written]}
        )
        logger.warning("broker %s %s", written, note)
        try:
            raise ConnectionError(f"cannot connect to {written}")
        except ConnectionError:
            logger.exception("failed")
    finally:
        for one in (logger, leveret_logger):
            one.removeHandler(handler)
            one.propagate = True
    lines = stream.getvalue().split("\n")[:-1]  # one record a line (a note may hold U+0085)
    event, warning, failure = (json.loads(line) for line in lines)
    assert event["event"] == f"connecting to {redacted}"
    assert event["url"] == redacted
    assert event["nested"] == {"urls": [redacted]}
    assert warning["event"] == f"broker {redacted} {note}"
    assert failure["exception"].split("\n")[-1] == f"ConnectionError: cannot connect to {redacted}"


_leveret = leveret_cli


SPACED = 'my s3cret pass "it\'s" @ ünïcødé %41'
"""A password pika takes as it is (a "/", "#" or "?" it must get percent-encoded)."""


def _shows_none_of(password: str, output: str) -> bool:
    return not any(word in output for word in password.split() if len(word) > 2)


def test_ping_never_shows_a_password_holding_spaces_on_a_closed_port() -> None:
    url = f"amqp://someone:{SPACED}@127.0.0.1:{free_port()}/"
    result = _leveret("ping", "--timeout", "3", env={"LEVERET_BROKER_URL": url})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot connect to amqp://someone:***@127.0.0.1:")
    assert "refused" in result.stderr.lower()
    assert _shows_none_of(SPACED, result.stderr), result.stderr


def test_ping_never_shows_a_password_it_cannot_parse() -> None:
    """A raw "/" or "#" ends the host part for pika: the URL is refused, the password kept
    out of the error (pika's own message quotes part of it)."""
    password = "part one/part two#three four"
    url = f"amqp://someone:{password}@127.0.0.1:{free_port()}/"
    result = _leveret("ping", "--timeout", "3", env={"LEVERET_BROKER_URL": url})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: invalid broker URL amqp://someone:***@127.0.0.1:")
    assert "percent-encode" in result.stderr
    assert _shows_none_of(password, result.stderr), result.stderr


def test_ping_of_several_nodes_says_why_for_each_without_a_password() -> None:
    nodes = [f"amqp://someone:{SPACED}@127.0.0.1:{free_port()}/" for _ in range(2)]
    result = _leveret("ping", "--timeout", "3", env={"LEVERET_BROKER_URL": ",".join(nodes)})
    assert result.returncode == 1
    for node in nodes:
        assert node.replace(SPACED, "***") in result.stderr
    assert result.stderr.count("[Errno 111]") == 2
    assert redact(result.stderr) == result.stderr  # logged, it keeps every node
    assert _shows_none_of(SPACED, result.stderr), result.stderr


@pytest.mark.rabbitmq
def test_ping_never_shows_a_wrong_password_holding_spaces(rabbit_url: str) -> None:
    url = rabbit_url.replace("guest:guest@", f"guest:{SPACED}@")
    result = _leveret("ping", "--timeout", "5", env={"LEVERET_BROKER_URL": url})
    assert result.returncode == 1
    assert "ACCESS_REFUSED" in result.stderr
    assert _shows_none_of(SPACED, result.stderr), result.stderr


def test_a_workers_log_lines_never_show_a_password_holding_spaces() -> None:
    """Leveret's own JSON lines (written without a record) and a standard-library record of
    the same process: connection errors to a closed port, with the password hidden."""
    code = (
        "import logging, sys\n"
        "from leveret.services.observability.logs import configure_logging, get_logger\n"
        "configure_logging('info', json=True)\n"
        "url = sys.argv[1]\n"
        "get_logger('leveret.test').warning('cannot connect', url=url, error=f'to {url}')\n"
        "logging.getLogger('app').error('connecting to %s failed', url)\n"
    )
    url = f"amqp://someone:{SPACED}@127.0.0.1:{free_port()}/"
    result = subprocess.run(
        [sys.executable, "-c", code, url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stderr.splitlines())
    redacted = url.replace(SPACED, "***")
    assert first["url"] == redacted
    assert first["error"] == f"to {redacted}"
    assert second["event"] == f"connecting to {redacted} failed"


# At the source: what a worker writes where other clients of the vhost can read it ---------

SECRET = "S3cret-part-one S3cret-part-two"


class Failure(Message, topic="tests.redaction.failure"):
    """Raised as it is by `Failing`'s handler."""

    text: str


class Failing(Actor, queue="failing"):
    retry = RetryPolicy(attempts=1)

    @handler
    def on(self, msg: Failure) -> None:
        raise ConnectionError(msg.text)


def _no_secret(text: str) -> bool:
    return "part-one" not in text and "part-two" not in text


@pytest.mark.parametrize(
    "cut",
    ["none", "message", "traceback"],
    ids=["whole", "message-cut-in-the-password", "traceback-cut-in-the-password"],
)
def test_a_dead_letters_error_headers_and_a_heartbeats_last_error_hold_no_password(
    memory_broker: MemoryBroker, cut: str
) -> None:
    """The error message and traceback a worker writes into a dead letter's headers (read by
    anyone who may read the ``.dlq``) and the last error of its heartbeats (published to a
    fanout anyone may bind) are redacted before they are cut to their limits, so no cut
    leaves a piece of a password behind."""
    url = f"postgresql://app:{SECRET}@db/shop"
    text = f"cannot reach {url}"
    if cut == "message":  # the limit falls between the password's two words
        text = "x" * (ERROR_MESSAGE_LIMIT - len("cannot reach postgresql://app:S3cret-part-one"))
        text += f"cannot reach {url}"
    elif cut == "traceback":  # the last TRACEBACK_LIMIT characters start inside the password
        text = f"cannot reach {url}" + "x" * (TRACEBACK_LIMIT - len(" S3cret-part-two@db/shop"))
    with running(memory_broker, Failing, threads=1) as worker:
        Failing.send(Failure(text=text))
        wait_until(lambda: worker.stats.dead_lettered == 1, 10, "the dead letter")
        last_error = Heartbeats().payload(worker)["last_error"]
    [letter] = memory_broker.dead_letters(Failing)
    message = letter.headers[wire.ERROR_MESSAGE]
    traceback = letter.headers[wire.ERROR_TRACEBACK]
    assert _no_secret(message), message[-200:]
    assert _no_secret(traceback), traceback[:200]
    assert _no_secret(last_error), last_error
    if cut == "none":
        assert message == "cannot reach postgresql://app:***@db/shop"
        assert traceback.endswith("ConnectionError: cannot reach postgresql://app:***@db/shop\n")
        assert last_error == "builtins.ConnectionError: cannot reach postgresql://app:***@db/shop"


def test_connection_errors_never_show_a_password_holding_spaces() -> None:
    """An operation that cannot reach the broker says so with the URL redacted."""
    url = f"amqp://someone:{SPACED}@127.0.0.1:{free_port()}/"
    broker = RabbitBroker(url, namespace="redaction")
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            broker.message_count("redaction.queue")
    finally:
        broker.close()
    assert str(caught.value).startswith("cannot connect to amqp://someone:***@127.0.0.1:")
    assert _shows_none_of(SPACED, str(caught.value)), str(caught.value)
