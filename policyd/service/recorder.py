"""Recording requests for `policyd replay`: `--record-requests FILE` (off by default).

Each decided request becomes one line of FILE in the format of policyd.tools.recording, its
secrets replaced by their keyed hash before the line exists. Lines are written in batches, as
the decision log writes its own (at most FLUSH_AFTER_S after the first, or once full), each batch with one
`write(2)` under an exclusive lock, so that the workers of one service can share FILE. FILE
never grows past `record_max_bytes`: a batch that would take it past is written to a fresh FILE
after FILE became FILE.1 (FILE.1 FILE.2, ..., the oldest past `record_keep` deleted). A line
longer than a quarter of that is not recorded (counted), so every file stays within the bound:
the recording holds at most (record_keep + 1) x record_max_bytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from policyd.policy import Policy
from policyd.protocol import PluginRequest
from policyd.rules.decision import Decision, Op
from policyd.service.decisionlog import DecisionLog, fd_sink
from policyd.service.metrics import Metrics
from policyd.service.settings import Settings
from policyd.tools.recording import RecordKey, header, record_of
from policyd.tools.rollout import decided_by

log = logging.getLogger("policyd.record")

TOO_LARGE_LOG_EVERY = 1000  # of the requests too large to record, the ones logged
MAX_BATCH_BYTES = 64 * 1024
WRITE_ATTEMPTS = 5  # rotations by other workers one batch may meet


class RequestRecorder:
    """Appends requests to a rotated, size-bounded recording; runs on the event-loop thread."""

    def __init__(self, path: Path, key: RecordKey, *, max_bytes: int, keep: int, metrics: Metrics) -> None:
        self.path = path
        self.key = key
        self.max_bytes = max_bytes
        self.keep = keep
        self.metrics = metrics
        self.batch_bytes = min(MAX_BATCH_BYTES, max_bytes // 4)
        # The decision log's batching: one write per batch, FLUSH_AFTER_S after its first line.
        self._lines = DecisionLog(self._write_batch, batch_bytes=self.batch_bytes)
        self._fd: int | None = None
        self.counts = {"written": 0, "too_large": 0, "failed": 0}
        self._decided_by: dict[tuple[str, Op], str] = {}
        self.last_error = ""

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics) -> RequestRecorder | None:
        """The recorder `settings` ask for, or None (the key file was checked with the settings)."""
        if settings.record_requests is None or settings.record_key_file is None:
            return None
        return cls(
            settings.record_requests,
            RecordKey.from_file(settings.record_key_file),
            max_bytes=settings.record_max_bytes,
            keep=settings.record_keep,
            metrics=metrics,
        )

    def record(self, request: PluginRequest, reqid: str, decision: Decision, policy: Policy) -> None:
        """Add one answered request, decided by `policy`; never raises into the request."""
        op = request.op
        try:
            at = datetime.now(UTC)
            by = self._decided_by.get((policy.version, op))
            if by is None:
                if len(self._decided_by) > 6 * len(Op):  # a few versions' worth
                    self._decided_by.clear()
                by = self._decided_by[policy.version, op] = decided_by(policy, op)
            record = record_of(op, request.version, request.content, reqid, decision, at, self.key, by)
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str)
        except Exception:
            log.exception("could not record %s %s", op.value, reqid)
            self._count("failed")
            return
        if len(line) > self.batch_bytes:
            self._count("too_large")
            if self.counts["too_large"] % TOO_LARGE_LOG_EVERY == 1:  # clients choose the size: no flood
                log.warning(
                    "%s %s not recorded: its line of %d bytes is over %d (%d so far)",
                    op.value,
                    reqid,
                    len(line),
                    self.batch_bytes,
                    self.counts["too_large"],
                )
            return
        self._lines.add_line(line)

    def _count(self, result: str, n: int = 1) -> None:
        self.counts[result] += n
        self.metrics.recorded(result, n)

    def flush(self) -> None:
        """Write what is batched now."""
        self._lines.flush()

    def _write_batch(self, batch: bytes) -> None:
        """The batcher's sink: one batch of whole lines; a failure (a full disk) loses it, logged
        and counted, and never reaches the request."""
        lines = batch.count(b"\n")
        try:
            self._write(batch)
        except OSError as e:
            self.last_error = f"could not write {lines} line(s) to {self.path}: {e}"
            log.error("recording: %s", self.last_error)
            self._count("failed", lines)
            self._close_fd()
            return
        self._count("written", lines)

    def _write(self, batch: bytes) -> None:
        for _ in range(WRITE_ATTEMPTS):
            fd = self._fd if self._fd is not None else self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                written = self._write_locked(fd, batch)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if written:
                return
            self._close_fd()  # FILE was rotated, by this worker or another: write to the new one
        raise OSError(f"{self.path} was rotated {WRITE_ATTEMPTS} times while writing one batch")

    def _write_locked(self, fd: int, batch: bytes) -> bool:
        """Write to FILE if `fd` still is FILE and the batch fits, else rotate; True if written."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        if current.st_ino != os.fstat(fd).st_ino:
            return False
        if current.st_size + len(batch) > self.max_bytes:
            self._rotate()
            return False
        fd_sink(fd)(batch)
        return True

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size == 0:
                fd_sink(fd)(orjson.dumps(header(self.key, datetime.now(UTC))) + b"\n")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd

    def _rotate(self) -> None:
        """FILE -> FILE.1 -> ... (under the lock of the FILE being rotated)."""
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            if newer.exists():
                os.replace(newer, older)
        if self.keep == 0:
            self.path.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._lines.close()
        self._close_fd()

    def status(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "key_id": self.key.key_id,
            "lines": dict(self.counts),
            "last_error": self.last_error,
        }
