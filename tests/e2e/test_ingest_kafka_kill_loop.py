"""Issue 17's guarantees on the Kafka path, from outside: `billow serve` with the Kafka bus (the shared Tansu broker,
a topic, consumer group and namespace of this test's own) is SIGKILLed at random points while 6 clients post
single events, JSON arrays and cloudevents batches, resend acknowledged batches and drop connections without
reading the answer; the topic also holds records of the older shape (one CloudEvent per record, keyed
`source\\x1fid`, as deployed topics do), some of them copies of events the clients send. After the last restart
the sink catches up: per (source, id) every event is counted exactly once, SUM (exact Decimals), COUNT and
UNIQUE_COUNT equal the values computed from the events, and resending everything moves nothing."""

from __future__ import annotations

import decimal
import http.client
import json
import random
import signal
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from billow.bus import topic_for
from tests.e2e.conftest import Server
from tests.e2e.test_ingest_kill_loop import CONFIG, EXACT, Batch, make_batches, post, totals

CLIENTS, KILLS = 6, 4
BATCH = "application/cloudevents-batch+json"
METERS = CONFIG  # the same four meters as the embedded kill loop


def old_shape(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Records as ingest wrote them before batch records: the CloudEvent with ingestedAt, keyed source\\x1fid."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = []
    for e in events:
        body = json.dumps({**e, "ingestedAt": stamp, "data": {**e["data"], "v": "@V@"}})
        out.append((f"{e['source']}\x1f{e['id']}".encode(), body.replace('"@V@"', e["data"]["v"]).encode()))
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    from billow.adapters.kafka import client_config

    producer = Producer({**client_config(bootstrap), "partitioner": "murmur2_random", "enable.idempotence": True})
    failed: list[Any] = []
    for key, value in records:
        producer.produce(topic, value=value, key=key,
                         on_delivery=lambda err, _msg: failed.append(err) if err is not None else None)
        producer.poll(0)
    assert producer.flush(30) == 0 and failed == [], failed


def test_kafka_sigkill_loop_with_old_and_new_shape_records(tmp_path: Path, kafka_bootstrap: str) -> None:
    with decimal.localcontext(EXACT):
        kafka_loop(tmp_path, kafka_bootstrap)


def kafka_loop(tmp_path: Path, bootstrap: str) -> None:
    rng = random.Random(17_12)
    ns = "h11" + uuid.uuid4().hex[:10]
    config = tmp_path / "billow.yaml"
    config.write_text(f"namespace: {ns}\nbus: kafka\nkafka_bootstrap: {bootstrap}\nkafka_group: sink-{ns}\n" + METERS)
    batches: list[Batch] = make_batches(rng)[:24]
    by_key = {b.key: b for b in batches}
    events = {e["id"]: e for b in batches for e in b.events}
    # Old-shape copies of some events the clients send, and events only the old shape carries.
    copies = [e for b in batches[::3] for e in b.events]
    only_old = [{**e, "id": "old-" + e["id"], "data": {**e["data"], "eid": "old-" + e["id"]}} for e in copies[:300]]
    events.update({e["id"]: e for e in only_old})
    acked: set[str] = set()
    unknown: set[str] = set(by_key)
    lock = threading.Lock()
    srv = Server(tmp_path / "data", config)

    def client(port: int, crng: random.Random) -> None:
        while True:
            with lock:
                pool = sorted(unknown) if unknown and crng.random() < 0.7 else sorted(acked or unknown)
                key = crng.choice(pool)
            try:
                status = post(port, by_key[key], read_answer=crng.random() > 0.15)
            except (OSError, http.client.HTTPException):
                return
            with lock:
                if status == 204:
                    acked.add(key)
                    unknown.discard(key)
                if not unknown and crng.random() < 0.5:
                    return

    for k in range(KILLS):
        srv.start()
        if k == 0:  # the topic exists once the first batch is in; old-shape records go in beside the new ones
            post(srv.port, batches[0])
            acked.add(batches[0].key)
            unknown.discard(batches[0].key)
            produce(bootstrap, topic_for(ns), old_shape(copies + only_old))
        threads = [threading.Thread(target=client, args=(srv.port, random.Random(rng.random()))) for _ in range(CLIENTS)]
        before = len(acked)
        for th in threads:
            th.start()
        want, pause = rng.choice([0, 1, 3, 5]), threading.Event()
        for _ in range(1000):
            with lock:
                if len(acked) - before >= want or not any(th.is_alive() for th in threads):
                    break
            pause.wait(0.01)
        pause.wait(rng.random() * 0.3)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGKILL)
        assert srv.proc.wait(timeout=60) == -signal.SIGKILL
        srv.proc = None
        for th in threads:
            th.join()

    srv.start()
    try:
        port = srv.port
        for b in batches:  # everything goes in, and all of it once more
            post(port, b)
        for b in batches:
            post(port, b)
        deadline = time.monotonic() + 60
        per_id: dict[str, Decimal] = {}
        while time.monotonic() < deadline:  # the sink catches up with the topic
            per_id = totals(port, "kl_per_id", "eid")
            if set(per_id) == set(events):
                break
            time.sleep(0.1)
        assert sorted(set(events) - set(per_id))[:20] == []
        assert {i: n for i, n in per_id.items() if n != 1} == {} and set(per_id) == set(events)
        assert totals(port, "kl_sum") == {"": sum((Decimal(e["data"]["v"]) for e in events.values()), Decimal(0))}
        assert totals(port, "kl_count") == {"": Decimal(len(events))}
        assert totals(port, "kl_unique") == {"": Decimal(len({e["data"]["u"] for e in events.values()}))}
    finally:
        srv.stop()


def test_poison_records_of_either_shape_are_dead_lettered_once_and_the_rest_counted(tmp_path: Path,
                                                                                   kafka_bootstrap: str) -> None:
    """Records the sink cannot read, in the batch shape or the older one, go to the dead letters (a line each in
    the data dir's dead-letters.jsonl) and nothing else of the topic is held up, lost or counted twice; after a
    SIGKILL and restart none of them comes again."""
    with decimal.localcontext(EXACT):
        ns = "h11p" + uuid.uuid4().hex[:10]
        config = tmp_path / "billow.yaml"
        config.write_text(f"namespace: {ns}\nbus: kafka\nkafka_bootstrap: {kafka_bootstrap}\n"
                          f"kafka_group: sink-{ns}\n" + METERS)
        batches = make_batches(random.Random(17_13))[:10]
        events = {e["id"]: e for b in batches for e in b.events}
        good_old = [{**e, "id": "old-" + e["id"], "data": {**e["data"], "eid": "old-" + e["id"]}}
                    for e in list(events.values())[:50]]
        stamp = "2026-06-03T12:00:00Z"
        poison = [
            (b"p1", b'{"billowBatch":1,"ingestedAt":"' + stamp.encode() + b'","meters":[],"events":[["x"'),
            (b"p2", b'{"billowBatch":7,"ingestedAt":"' + stamp.encode() + b'","meters":[],"events":[]}'),
            (b"p3", b'{"billowBatch":1,"ingestedAt":"' + stamp.encode() + b'","meters":["m"],"events":[["p3","hb","kl",'
                    b'"acme",1780480800000,{"v":1},[["m","NaN","NaN",{}]]]]}'),
            (b"p4", json.dumps({**batches[0].events[0], "id": "p4"}).encode()),  # old shape without ingestedAt
            (b"p5", b"not json at all"),
        ]
        srv = Server(tmp_path / "data", config).start()
        try:
            post(srv.port, batches[0])
            produce(kafka_bootstrap, topic_for(ns), poison[:3] + old_shape(good_old) + poison[3:])
            for b in batches[1:]:
                post(srv.port, b)
            events.update({e["id"]: e for e in good_old})
            wait_counted(srv.port, set(events))
            wait_dead_letters(tmp_path / "data" / "dead-letters.jsonl", len(poison))
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGKILL)
            assert srv.proc.wait(timeout=60) == -signal.SIGKILL
            srv.proc = None
            srv.start()
            for b in batches:
                post(srv.port, b)
            # New events on every partition, counted: the sink has read past everything the kill left unread.
            fresh = [b for b in make_batches(random.Random(17_14)) if 50 < len(b.events) < 2000][:2]
            for b in fresh:
                for e in b.events:
                    e["id"] = e["data"]["eid"] = "fresh-" + e["id"]
                post(srv.port, Batch(b.key, b.events, json.dumps(b.events).encode(), BATCH))
            events.update({e["id"]: e for b in fresh for e in b.events})
            per_id = wait_counted(srv.port, set(events))
            assert {i: n for i, n in per_id.items() if n != 1} == {}
            assert totals(srv.port, "kl_sum") == {"": sum((Decimal(e["data"]["v"]) for e in events.values()),
                                                          Decimal(0))}
        finally:
            if srv.proc is not None:
                srv.stop()
        # Each poison record dead-lettered (again only if the kill fell between its dead letter and the commit).
        lines = [json.loads(line) for line in (tmp_path / "data" / "dead-letters.jsonl").read_text().splitlines()]
        assert {line["value"] for line in lines} == {v.decode() for _, v in poison}, lines


def wait_dead_letters(path: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} dead letters in {path}: {path.read_text() if path.exists() else 'none'}")


def wait_counted(port: int, ids: set[str], timeout_s: float = 60) -> dict[str, Decimal]:
    deadline = time.monotonic() + timeout_s
    per_id: dict[str, Decimal] = {}
    while time.monotonic() < deadline:
        per_id = totals(port, "kl_per_id", "eid")
        if set(per_id) >= ids:
            return per_id
        time.sleep(0.1)
    raise AssertionError(f"{len(ids - set(per_id))} events never counted, e.g. {sorted(ids - set(per_id))[:5]}")
