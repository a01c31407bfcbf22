"""The messages between a stage process and the agent: what survives the wire, and what
is refused on receipt."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from runner_driver.agent_protocol import (
    MESSAGE_LIMIT,
    RECEIVE_CHUNK,
    Accepted,
    Cancel,
    Exited,
    Go,
    Message,
    Reader,
    Refused,
    StageRequest,
    Stats,
    StatsRequest,
    decode,
    encode,
    send,
)

# Non-UTF-8 bytes, as an environment may hold, arrive as surrogate escapes.
RAW = b"caf\xe9 \xff".decode(errors="surrogateescape")
MESSAGES: list[Message] = [
    StageRequest("run", {"script": "/tmp/a b\nc=d/step.sh", "stage": "build_script"},
                 {"TMPDIR": "/tmp/job", "RAW": RAW, "EMPTY": "", "EQ": "a=b=c"}),
    StageRequest("cleanup", {}, {}),
    StatsRequest(),
    Accepted("run-build_script-0123"),
    Accepted(),
    Refused("the driver's settings changed"),
    Go(),
    Cancel(),
    Exited(0),
    Exited(-1),
    Exited(137),
    Stats(pid=4242, cpu_seconds=1.25, rss_kb=51200, stages_served=9, stages_running=2, jobs=3),
]


def same(got: list[Message], sent: list[Message]) -> bool:
    """Messages of the same classes with the same fields, in order."""
    return [(type(m), m.fields()) for m in got] == [(type(m), m.fields()) for m in sent]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected Unix stream sockets."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        yield left, right


def test_every_message_class_round_trips_byte_by_byte(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Each message comes back as its own class with its fields, even fed a byte at a time."""
    data = b"".join(encode(m) for m in MESSAGES)
    reader = Reader(pair[0])
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
    got = reader.take()
    assert same(got, MESSAGES)
    assert reader.take() == []
    request = got[0]
    assert isinstance(request, StageRequest)
    assert request.environ["RAW"] == RAW
    assert request.environ["RAW"].encode(errors="surrogateescape") == b"caf\xe9 \xff"
    stats = got[-1]
    assert isinstance(stats, Stats)
    assert stats.as_dict() == {"pid": 4242, "cpu_seconds": 1.25, "rss_kb": 51200,
                               "stages_served": 9, "stages_running": 2, "jobs": 3}


def test_a_message_may_be_split_anywhere(pair: tuple[socket.socket, socket.socket]) -> None:
    """Two pieces cut at any byte make the same messages as the whole."""
    data = encode(MESSAGES[0]) + encode(Exited(7))
    for cut in range(len(data) + 1):
        reader = Reader(pair[0])
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert same(reader.take(), [MESSAGES[0], Exited(7)]), cut


def test_send_and_next_over_a_socket_with_descriptors(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """send() attaches the descriptors; next() returns messages in order, then None at EOF."""
    left, right = pair
    out_r, out_w = os.pipe()
    try:
        send(left, MESSAGES[0], [out_w, out_w])
        send(left, Go())
        left.close()
        data, fds, _flags, _addr = socket.recv_fds(right, 65536, 4)
        assert len(fds) == 2
        os.write(fds[0], b"through")
        for fd in fds:
            os.close(fd)
        assert os.read(out_r, 16) == b"through"
        reader = Reader(right)
        reader.feed(data)
        assert same([m for m in (reader.next(), reader.next()) if m is not None],
                    [MESSAGES[0], Go()])
        assert reader.next() is None
    finally:
        os.close(out_r)
        os.close(out_w)


def test_missing_optional_fields_take_their_defaults() -> None:
    """An Accepted without stage_id, a Refused without reason, a request without args."""
    accepted = decode({"op": "accepted"})
    refused = decode({"op": "refused"})
    request = decode({"op": "stage", "stage": "prepare"})
    assert isinstance(accepted, Accepted) and accepted.stage_id == ""
    assert isinstance(refused, Refused) and refused.reason == ""
    assert isinstance(request, StageRequest)
    assert (request.stage, request.arguments, request.environ) == ("prepare", {}, {})


@pytest.mark.parametrize(("data", "error"), [
    pytest.param(b"novalue\0\0", "malformed message field", id="no-equals"),
    pytest.param(b"=value\0\0", "malformed message field", id="empty-key"),
    pytest.param(b"\0", "unknown message", id="no-op"),
    pytest.param(b"op=launch\0\0", "unknown message", id="unknown-op"),
    pytest.param(b"op=stage\0stage=deploy\0\0", "unknown stage", id="unknown-stage"),
    pytest.param(b"op=stage\0\0", "unknown stage", id="no-stage"),
    pytest.param(b"op=exited\0\0", "malformed field 'code'", id="no-code"),
    pytest.param(b"op=exited\0code=seven\0\0", "malformed field 'code'", id="word-code"),
    pytest.param(b"op=exited\0code=1.5\0\0", "malformed field 'code'", id="fraction-code"),
    pytest.param(b"op=exited\0code=-\0\0", "malformed field 'code'", id="sign-only-code"),
    pytest.param(b"op=exited\0code= 3\0\0", "malformed field 'code'", id="spaced-code"),
    pytest.param("op=exited\0code=\u0663\0\0".encode(), "malformed field 'code'",
                 id="non-ascii-digit"),
    pytest.param(encode(Stats(1, 0.5, 2, 3, 4, 5)).replace(b"cpu_seconds=0.5", b"cpu_seconds=x"),
                 "malformed field 'cpu_seconds'", id="stats-cpu"),
    pytest.param(encode(Stats(1, 0.5, 2, 3, 4, 5)).replace(b"jobs=5", b"jobs=many"),
                 "malformed field 'jobs'", id="stats-jobs"),
])
def test_garbage_is_refused_not_guessed(pair: tuple[socket.socket, socket.socket],
                                        data: bytes, error: str) -> None:
    """A malformed field, an unknown op or stage, or a malformed integer is a ValueError."""
    with pytest.raises(ValueError, match=error):
        Reader(pair[0]).feed(data)


def test_a_message_over_the_limit_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    """Past MESSAGE_LIMIT as it arrives is an error, in one field or in many; under it is not."""
    with pytest.raises(ValueError, match="too long"):
        Reader(pair[0]).feed(b"op=stage\0env.X=" + b"x" * MESSAGE_LIMIT)
    many = b"".join(b"env.K%d=" % i + b"v" * 1000 + b"\0"
                    for i in range(MESSAGE_LIMIT // 900))
    with pytest.raises(ValueError, match="too long"):
        feed_in_chunks(Reader(pair[0]), b"op=stage\0stage=run\0" + many + b"\0")
    under = Reader(pair[0])
    feed_in_chunks(under, encode(StageRequest("run", {}, {"BIG": "x" * (MESSAGE_LIMIT - 64)})))
    assert len(under.take()) == 1


def feed_in_chunks(reader: Reader, data: bytes) -> None:
    """Feed `data` as a socket delivers it: RECEIVE_CHUNK bytes at a time."""
    for start in range(0, len(data), RECEIVE_CHUNK):
        reader.feed(data[start:start + RECEIVE_CHUNK])
