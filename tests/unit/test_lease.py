"""Runs sharing an artifact store never clear each other's half-written artifact: the second waits on the
first's lease and gets its result as a cache hit (`polya.lease`, `StageContext.begin`)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conftest import EXAMPLES
from polya import lease as leases
from polya.artifacts import ArtifactStore
from polya.spec import load_run
from polya.stages.common import StageContext

FAST = {"settle": 0.05, "poll": 0.02}


def _ctx(store: ArtifactStore, name: str) -> StageContext:
    doc = yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["storage"]["uri"] = store.uri
    return StageContext(run=load_run(doc), store=store, stage="selfgen", progress=False)


def test_a_second_run_waits_for_the_first_and_reuses_its_artifact(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "SETTLE_S", 0.05)
    monkeypatch.setattr(leases, "POLL_S", 0.02)
    store = ArtifactStore(str(tmp_path / "store"))
    first, second = _ctx(store, "sweep-a-s0"), _ctx(store, "sweep-b-s0")
    art, cached = first.begin()
    assert cached is None and first.key() == second.key()
    (art.local / "traces.parquet").write_text("half written by the first run")
    assert leases.holder(store.uri, "selfgen", art.key) == "sweep-a-s0"
    assert leases.holder(store.uri, "selfgen", art.key, unless="sweep-a-s0") is None

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(second.begin)
        time.sleep(0.5)
        assert not waiting.done()  # blocked on the first run's lease ...
        assert (art.local / "traces.parquet").read_text() == "half written by the first run"  # ... not clearing
        store.commit(art, {"traces": 7.0})
        first.release()
        art2, hit = waiting.result(timeout=10)
    assert art2.uri == art.uri and hit is not None and hit.skipped and hit.figures == {"traces": 7.0}
    assert (art.local / "traces.parquet").read_text() == "half written by the first run"
    assert second._lease is None and leases.read(leases.lease_uri(store.uri, "selfgen", art.key)) is None


def test_a_dead_holders_lease_goes_stale_and_is_taken_over(tmp_path):
    uri = str(tmp_path / "leases" / "grpo-k.json")
    from polya import storage

    storage.write_json(uri, {"owner": "gone:1:x", "run": "other", "heartbeat": time.time() - 500, "ttl": 120})
    mine = leases.Lease(uri, run="me")
    t0 = time.monotonic()
    assert mine.acquire(lambda: False, **FAST) is True and time.monotonic() - t0 < 1
    assert leases.read(uri)["owner"] == mine.owner
    mine.release()
    assert leases.read(uri) is None


def test_the_same_runs_earlier_attempt_does_not_block_its_retry(tmp_path):
    uri = str(tmp_path / "l.json")
    crashed = leases.Lease(uri, run="run-a")
    assert crashed.acquire(lambda: False, **FAST)
    crashed._stop.set()  # the attempt died: its heartbeat stops, the record stays (still live by its clock)
    retry = leases.Lease(uri, run="run-a")
    assert retry.acquire(lambda: False, **FAST) is True
    other = leases.Lease(uri, run="run-b")
    with pytest.raises(TimeoutError, match="run-a held the lease"):
        other.acquire(lambda: False, timeout=0.3, **FAST)
    retry.release()


def test_the_heartbeat_keeps_a_long_stage_live_past_its_ttl(tmp_path):
    uri = str(tmp_path / "l.json")
    holder = leases.Lease(uri, run="long", ttl=0.4)
    assert holder.acquire(lambda: False, **FAST)
    time.sleep(1.2)  # three ttls: without the heartbeat the lease would be stale
    assert leases.holder(str(tmp_path), "x", "y") is None  # (another key: nobody)
    assert leases.live(leases.read(uri)) and leases.read(uri)["run"] == "long"
    holder.release()
    assert not leases.live(leases.read(uri))


def test_two_holders_racing_for_one_lease_never_hold_it_together(tmp_path):
    uri = str(tmp_path / "l.json")
    holding: list[str] = []
    overlaps: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        me = leases.Lease(uri, run=name)
        assert me.acquire(lambda: False, settle=0.2, poll=0.02)
        with lock:
            overlaps.extend((name, other) for other in holding)
            holding.append(name)
        time.sleep(0.3)
        with lock:
            holding.remove(name)
        me.release()

    threads = [threading.Thread(target=worker, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and overlaps == []
