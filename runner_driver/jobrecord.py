"""What `prepare` created for the job, kept in the job's private temporary directory.

gitlab-runner creates a temporary directory per job (mode 0700, removed after
`cleanup`) and passes it to every stage as TMPDIR; no job variable can change it. That
makes it the one place where `prepare` can leave word for `cleanup` that no job author
can forge: the pod's name, its uid once the API server has answered, and the job's
nonce. `cleanup` deletes exactly that incarnation, and nothing when there is no record.

The record is written before the pod is created (so a `prepare` killed between the
create and the answer still leaves `cleanup` something to check) and completed with
the uid afterwards. This module is on the stages' light path (`agent_client` reads the
nonce here): it must import nothing but `os`, and never talk to the cluster.
"""

from __future__ import annotations

import os

RECORD_NAME = "runner-driver-pod"
# The job_env key `config` hands the nonce over in (see `config_stage`).
NONCE_KEY = "RUNNER_DRIVER_NONCE"
_FIELDS = ("namespace", "name", "uid", "nonce")
_LIMIT = 4096


class PodRecord:
    """One pod this job created (or was about to create: `uid` is empty until it answers)."""

    __slots__ = _FIELDS

    def __init__(self, namespace: str, name: str, nonce: str, uid: str = "") -> None:
        self.namespace = namespace
        self.name = name
        self.nonce = nonce
        self.uid = uid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PodRecord) and all(
            getattr(self, f) == getattr(other, f) for f in _FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in _FIELDS))

    def __repr__(self) -> str:
        return "PodRecord(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS) + ")"


def valid_nonce(nonce: str) -> bool:
    """Whether `nonce` has the form `config` mints: 32 lowercase hex digits."""
    return len(nonce) == 32 and all(c in "0123456789abcdef" for c in nonce)


def job_nonce(env_nonce: str, tmpdir: str) -> str:
    """The job's nonce: the one `config` handed over in job_env when it is well formed,
    else the one in the record `prepare` left (no `config` stage), else ""."""
    if valid_nonce(env_nonce):
        return env_nonce
    record = read(tmpdir) if tmpdir and os.path.isabs(tmpdir) else None
    return record.nonce if record is not None and valid_nonce(record.nonce) else ""


def path_in(tmpdir: str) -> str:
    """Where the record of the job whose temporary directory is `tmpdir` lives."""
    return os.path.join(tmpdir, RECORD_NAME)


def private(tmpdir: str) -> bool:
    """Whether `tmpdir` is a directory only our own user can enter (as the runner makes it)."""
    try:
        info = os.stat(tmpdir)
    except OSError:
        return False
    return (os.path.isdir(tmpdir) and info.st_uid == os.getuid()
            and not info.st_mode & 0o077)


def write(tmpdir: str, record: PodRecord) -> None:
    """Store `record` atomically (a reader sees the old record or the new one, whole).

    Raises:
        OSError: the directory is not private to us, or the file could not be written.
    """
    if not private(tmpdir):
        raise PermissionError(f"the job's temporary directory {tmpdir} is not private to "
                              "this user (gitlab-runner creates it with mode 0700)")
    text = "".join(f"{f}={getattr(record, f)}\n" for f in _FIELDS)
    if any("\n" in str(getattr(record, f)) for f in _FIELDS):
        raise ValueError("a pod record field holds a newline")
    final = path_in(tmpdir)
    partial = f"{final}.{os.getpid()}.tmp"
    # No fsync: the record guards against a killed stage, not a lost host (which takes
    # the runner and this directory with it), and rename alone is atomic for readers.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(partial, final)


def read(tmpdir: str) -> PodRecord | None:
    """The job's record; None when there is none, or it is not ours alone to trust."""
    if not tmpdir or not private(tmpdir):
        return None
    try:
        fd = os.open(path_in(tmpdir), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        data = os.read(fd, _LIMIT)
    finally:
        os.close(fd)
    values: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, equals, value = line.partition("=")
        if equals and key in _FIELDS:
            values[key] = value
    if not values.get("name") or not values.get("nonce"):
        return None
    return PodRecord(values.get("namespace", ""), values["name"], values["nonce"],
                     values.get("uid", ""))


def remove(tmpdir: str) -> None:
    """Forget the record (the pod is gone); no error when there is none."""
    try:  # noqa: SIM105 - contextlib would cost the light path an import
        os.unlink(path_in(tmpdir))
    except FileNotFoundError:
        pass
