"""Who computes an artifact right now: a lease file per (stage, key) in the artifact store.

Runs that share an artifact store (a PolyaSweep's children, or any runs naming the same ``storage.artifacts``)
may reach the same step at the same time — on a cluster the operator runs a sweep's children in parallel. The
content-addressed store makes the second one a cache hit once the first has committed, but while the first is
still computing, the second would find no manifest and clear the folder the first is writing in
(`ArtifactStore.begin`). The lease prevents that: before clearing a folder a stage takes the lease
``<store>/leases/<stage>-<key>.json``; a stage that finds a live lease of another holder waits until the
artifact is complete (then it is a cache hit) or the lease goes stale (its holder died: then it takes over).

* A lease of the same run is taken over at once: it is that run's earlier attempt, which has ended (the
  operator starts attempt n + 1 only after attempt n's RayJob failed; embedded, the crashed process is gone).
* The holder refreshes ``heartbeat`` every ``ttl / 4`` seconds from a daemon thread and removes the lease when
  the stage ends (committed or failed: `release`). A lease whose heartbeat is older than ``ttl`` is stale.
* Taking a lease is write-then-read-back: write our record, wait ``settle`` seconds, read the file; whoever's
  record is there owns it (the other writer reads a record that is not its own and waits). Object stores have
  no portable create-if-absent, so this is last-writer-wins with a settling delay; it closes the window to two
  writers within ``settle`` of each other finishing their reads in the wrong order, which the operator's own
  check (it starts no RayJob for a step another run's live lease holds) makes rarer still.
* Heartbeats are wall-clock times of the holder's machine; clocks of a cluster's nodes must agree to well within
  ``ttl`` (NTP does this).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from polya import storage

log = logging.getLogger(__name__)

LEASES_DIR = "leases"
TTL_S = float(os.environ.get("POLYA_LEASE_TTL_S", "120"))
SETTLE_S = float(os.environ.get("POLYA_LEASE_SETTLE_S", "2"))
POLL_S = float(os.environ.get("POLYA_LEASE_POLL_S", "5"))


def lease_uri(store_uri: str, stage: str, key: str) -> str:
    return storage.join(store_uri, LEASES_DIR, f"{stage}-{key}.json")


def read(uri: str) -> dict[str, Any] | None:
    """The lease record at ``uri``, or None when there is none (or it is being rewritten: unreadable)."""
    try:
        record = storage.read_json(uri)  # no exists() first: object-store listings may be cached
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def live(record: dict[str, Any] | None, now: float | None = None) -> bool:
    """Held by someone whose heartbeat is younger than its ttl."""
    if not record:
        return False
    now = time.time() if now is None else now
    try:
        return now - float(record["heartbeat"]) < float(record.get("ttl", TTL_S))
    except (KeyError, TypeError, ValueError):
        return False


def holder(store_uri: str, stage: str, key: str, *, unless: str | None = None) -> str | None:
    """The run holding a live lease on (stage, key) — None when nobody does, or when the holder is ``unless``
    (a run's own earlier attempt does not block it)."""
    record = read(lease_uri(store_uri, stage, key))
    if not live(record) or record.get("run") == unless:
        return None
    return str(record.get("run") or record.get("owner"))


@dataclass
class Lease:
    uri: str
    run: str
    ttl: float = TTL_S
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _record(self) -> dict[str, Any]:
        return {"owner": self.owner, "run": self.run, "heartbeat": time.time(), "ttl": self.ttl}

    def _write(self) -> None:
        storage.write_json(self.uri, self._record())

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if (read(self.uri) or {}).get("owner") not in (self.owner, None):
                    log.warning("lease %s was taken over by another holder; stopping its heartbeat", self.uri)
                    return
                self._write()
            except OSError as exc:  # storage hiccup: the next beat tries again (ttl covers three misses)
                log.debug("lease heartbeat %s: %s", self.uri, exc)

    def acquire(self, done: Callable[[], bool], *, settle: float | None = None, poll: float | None = None,
                timeout: float | None = None) -> bool:
        """Block until this holder owns the lease (True) or ``done()`` says the artifact is complete (False: a
        cache hit, no lease held). ``timeout``: give up with TimeoutError after that many seconds of waiting."""
        settle = SETTLE_S if settle is None else settle
        poll = POLL_S if poll is None else poll
        start, told = time.monotonic(), None
        while True:
            if done():
                return False
            record = read(self.uri)
            if live(record) and record.get("owner") != self.owner and record.get("run") != self.run:
                who = record.get("run") or record.get("owner")
                if told != who:
                    log.info("waiting: %s computes this artifact (lease %s)", who, self.uri)
                    told = who
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"{who} held the lease {self.uri} for over {timeout:.0f}s")
                time.sleep(poll)
                continue
            self._write()
            time.sleep(settle)
            if (read(self.uri) or {}).get("owner") == self.owner:
                if done():  # completed between our check and our write: nothing to compute
                    self.release()
                    return False
                self._thread = threading.Thread(target=self._beat, name="polya-lease", daemon=True)
                self._thread.start()
                return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (read(self.uri) or {}).get("owner") == self.owner:
                storage.remove(self.uri)
        except OSError as exc:
            log.debug("lease %s not removed: %s", self.uri, exc)


__all__ = ["Lease", "holder", "lease_uri", "live", "read", "LEASES_DIR", "TTL_S"]
