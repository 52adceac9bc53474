"""Every payload the cluster puts in Temporal, encrypted (SPEC §14): a run's input (its prompt, argv and
environment, a routine's env_file values among them), the transcript records, answers and replies,
results and heartbeats.  Temporal's history, on the server and in its database, holds only ciphertext;
the owning daemons and the workers share one key.

The key is 256 random bits, kept base64 on one line in a file only its user can read: the owning
daemon's `[cluster] key_file` (default `<config dir>/cluster.key`, made on first use), copied to each
worker (`bgd worker --key-file`, with the same default).  Each payload is sealed whole (its metadata
and data, as the serialized Payload message) with AES-256-GCM under a fresh 96-bit nonce, and marked
with the key's id (a hash of the key, which says nothing about it), so a payload sealed with another
key is told apart from a damaged one.  AES-GCM authenticates too: a payload that does not open, or
one that is not sealed at all, is refused, so nobody without the key can hand a worker a run.

`ClusterCodec` is a temporalio PayloadCodec (the SDK calls it for everything it sends and reads);
`open_data` is the same opening for the owning daemon's own reading of histories.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
CIPHER = ("encryption-cipher", b"AES-256-GCM")
NONCE_BYTES = 12
KEY_BYTES = 32
DEFAULT_NAME = "cluster.key"
# In every message about a payload sealed with another key: the owning daemon recognizes a run that
# failed for it by this (bgd.cluster.runner).
MISMATCH = "not the cluster key it was encrypted with"
COPY_HINT = ("copy the owning daemon's key file ([cluster] key_file, default <config dir>/cluster.key) to every "
             "worker (bgd worker --key-file)")


class KeyFileError(Exception):
    """The key file cannot be read or made (the message says which file and what to do)."""


class KeyMismatch(ValueError):
    """A payload sealed with another key, or one that does not open (the message says which)."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"bgagents cluster key\0" + key).hexdigest()[:16]


def read_key(path: Path) -> bytes:
    """The key in `path`; KeyFileError when it is missing, unreadable or not a key."""
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read the cluster key file {path} ({exc.strerror or exc})") from None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path} is not a cluster key file (it holds one line: {KEY_BYTES} random bytes "
                           "in base64)")
    return key


def ensure_key(path: Path) -> bytes:
    """The key in `path`, made first (0600, 256 random bits) when there is no such file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)
    except OSError as exc:
        raise KeyFileError(f"cannot make the cluster key file {path} ({exc.strerror or exc})") from None
    key = os.urandom(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
    return key


class ClusterCodec(PayloadCodec):
    """AES-256-GCM over whole payloads, with one key; `who` names this side in refusals ("worker
    'w1'", "the owning daemon"); `on_mismatch(message)` hears of each payload sealed with another key
    (a payload that is not sealed, or was changed, is refused too, but says nothing of this side's key)."""

    def __init__(self, key: bytes, *, path: Path | str, who: str,
                 on_mismatch: Callable[[str], None] | None = None):
        super().__init__()
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        self._id = self.key_id.encode()
        self.path = str(path)
        self.who = who
        self.on_mismatch = on_mismatch

    def seal(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self._id, CIPHER[0]: CIPHER[1]},
                       data=nonce + self._aead.encrypt(nonce, payload.SerializeToString(), self._id))

    def open(self, payload: Payload) -> Payload:
        metadata = payload.metadata
        if metadata.get("encoding") != ENCODING:
            raise KeyMismatch(f"{self.who} refused a payload that is not encrypted with the cluster key: "
                              "everything the cluster sends is, so it was written by something without the key")
        sealed_with = metadata.get(KEY_ID, b"").decode("ascii", "replace")
        if sealed_with != self.key_id:
            message = (f"{self.who} cannot decrypt this run: its key (file {self.path}, id {self.key_id}) is "
                       f"{MISMATCH} (id {sealed_with or 'unknown'}); {COPY_HINT}, then start it again")
            if self.on_mismatch is not None:
                self.on_mismatch(message)
            raise KeyMismatch(message)
        data = payload.data
        try:
            inner = self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], self._id)
        except InvalidTag:
            raise KeyMismatch(f"{self.who} cannot decrypt a payload sealed with key id {self.key_id}: it was "
                              "changed on the way") from None
        return Payload.FromString(inner)

    def open_data(self, payload: Payload) -> bytes:
        """The data of a sealed payload (what the owning daemon reads from histories itself)."""
        return self.open(payload).data

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.seal(p) for p in payloads]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.open(p) for p in payloads]


# -- the cluster's key check ------------------------------------------------------------------------

KEY_CHECK_WORKFLOW = "bgagents.KeyCheck"
CHECK_TEXT = "bgagents cluster key check"


def key_check_id(task_queue: str) -> str:
    return f"bgagents-key/{task_queue}"


async def check_cluster_key(client, sealed: ClusterCodec, task_queue: str, *, create: bool) -> bool:
    """Whether this side's key is the cluster's.  The first owning daemon to use a task queue starts
    its key check (`create`): a workflow nobody runs (on the logs' queue, never polled) whose input
    is a known value sealed with its key; every owner and worker after it opens that input with its
    own key.  True when it opens (or was just made), False when there is none yet; raises
    KeyMismatch, saying what to copy where, when it does not open."""
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    from bgd.cluster.protocol import log_queue
    workflow_id = key_check_id(task_queue)
    if create:
        try:
            await client.start_workflow(KEY_CHECK_WORKFLOW, {"check": CHECK_TEXT}, id=workflow_id,
                                        task_queue=log_queue(task_queue),
                                        id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
            return True
        except WorkflowAlreadyStartedError:
            pass
    try:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            theirs = payloads[0].metadata.get(KEY_ID, b"").decode("ascii", "replace") if payloads else ""
            if payloads and theirs == sealed.key_id:
                sealed.open(payloads[0])   # raises when it was changed
                return True
            raise KeyMismatch(f"the key of {sealed.who} (file {sealed.path}, id {sealed.key_id}) is not the "
                              f"cluster's (id {theirs or 'unknown'}, the key the owning daemons and workers of task "
                              f"queue {task_queue!r} use); copy their key file to {sealed.path} (docs/cluster.md)")
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return False


def data_converter(codec: ClusterCodec) -> DataConverter:
    return dataclasses.replace(DataConverter.default, payload_codec=codec)


def key_path(config_dir: Path, key_file: str) -> Path:
    """`[cluster] key_file` as a path: `~` expanded, relative to the config dir."""
    path = Path(os.path.expanduser(key_file))
    return path if path.is_absolute() else Path(config_dir) / path


def default_key_path() -> Path:
    from bgcore.paths import config_dir
    return config_dir() / DEFAULT_NAME
