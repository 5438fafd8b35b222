"""The embedded default (`billow serve`: SQLite meta store, chdb usage store) under concurrent clients, from outside.

`billow serve` runs the API's handlers on several worker threads at once (local/asgi.py: 4 for the API, 16 for
ingest, 4 for checks, 4 for queries), all on one SQLite database. The writes that read, then write what they read
implies were guarded for PostgreSQL (tests/adapters/test_writes_across_containers.py) on the belief that SQLite lets
one writer in at a time anyway; but SQLite's Python driver begins a transaction at its first INSERT/UPDATE/DELETE,
so a transaction's reads before it ran unlocked, beside the other threads' writes. Found by probing with 48 clients
at once on the same objects:

- 48 subscriptions for one customer at once: 2 to 4 answered 201 and stayed (one allowed, the rest 409);
- 48 default billing profiles at once: 19 answered 500 (`database is locked`: the read was on a snapshot another
  thread's commit had made stale, which SQLite refuses to upgrade to a write, without waiting);
- a second `billow serve` on the same data dir started, said it was ready, and wrote the meta database beside the
  first while every usage request it served was a 500 (chdb lets one process open a data path).

And two writes that each check the other's object before writing their own (on PostgreSQL too, across containers):
a customer deleted while it was subscribed, and a meter deleted while a feature was made on it, both succeeded in 18
of 20 rounds: a subscription running for nobody, a feature on a deleted meter.
"""

from __future__ import annotations

import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from tests.e2e.conftest import BIN, Drained, Server
from tests.support.net import free_port

CLIENTS = 32
FEE = {"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M",
       "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    s = Drained(tmp_path_factory.mktemp("billow-concurrent")).start()
    yield s
    if s.proc is not None:
        s.stop()


def ok(s: Server, method: str, path: str, body: Any = None) -> Any:
    status, _, out = s.request(method, path, body)
    assert status < 300, (method, path, status, out)
    return out


def at_once(calls: list[Callable[[], tuple[int, dict[str, str], Any]]]) -> list[tuple[int, Any]]:
    """Send the requests together (each on its own thread and connection, released at one barrier)."""
    barrier = threading.Barrier(len(calls))
    out: list[tuple[int, Any]] = [(0, None)] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        status, _, body = calls[i]()
        out[i] = (status, body)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_subscribing_one_customer_at_once_makes_one_subscription(srv: Drained) -> None:
    """POST /api/v1/subscriptions refuses a second subscription for a customer in the same time (409). 32 clients
    subscribing one customer at once, 4 customers: before, 2-4 of each customer's 32 answered 201 and stayed."""
    draft = ok(srv, "POST", "/api/v1/plans", {"key": "one_sub", "name": "P", "currency": "USD", "billingCadence": "P1M",
                                              "phases": [{"key": "default", "name": "D", "rateCards": [FEE]}]})
    ok(srv, "POST", f"/api/v1/plans/{draft['id']}/publish")
    extra = []
    for round_ in range(4):
        key = f"one_sub_{round_}"
        cust = ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "currency": "USD",
                                                     "usageAttribution": {"subjectKeys": [key]}})
        body = {"plan": {"key": "one_sub"}, "customerId": cust["id"]}
        out = at_once([partial(srv.request, "POST", "/api/v1/subscriptions", body)] * CLIENTS)
        assert sorted({status for status, _ in out}) == [201, 409], out[:3]
        subs = ok(srv, "GET", f"/api/v1/customers/{cust['id']}/subscriptions")["items"]
        extra.append((sum(1 for status, _ in out if status == 201), len(subs)))
    assert extra == [(1, 1)] * 4, f"(answered 201, stored) per customer: {extra}"


def test_default_billing_profiles_made_at_once_all_succeed_and_leave_one_default(srv: Drained) -> None:
    """POST /api/v1/billing/profiles with `default: true` unmarks the other defaults in the same transaction. 32 at
    once: before, 19 of 48 answered 500 in the probe, 7-16 of 32 here (`database is locked`)."""
    (base,) = [p for p in ok(srv, "GET", "/api/v1/billing/profiles")["items"] if p["default"]]
    body = {"supplier": base["supplier"], "workflow": base["workflow"],
            "apps": {k: v["id"] for k, v in base["apps"].items()}}
    out = at_once([partial(srv.request, "POST", "/api/v1/billing/profiles", {**body, "name": f"default {i}", "default": True})
                   for i in range(CLIENTS)])
    refused = [b for status, b in out if status != 201]
    assert not refused, f"{len(refused)} of {CLIENTS} refused: {refused[:1]}"
    after = ok(srv, "GET", "/api/v1/billing/profiles?pageSize=100")["items"]
    assert sum(1 for p in after if p["default"]) == 1


def test_a_second_serve_on_the_same_data_dir_is_refused_at_start(srv: Drained) -> None:
    """chdb opens a data path from one process. A second `billow serve` on the running one's data dir started and
    said it was ready: it wrote the meta database beside the first (its own billing runs, its own balance cache)
    while every request touching usage was a 500 (`Cannot lock file .../usage/status`). Now it exits at start (2),
    naming the data dir and the process that holds it, and the first one serves on; so does `billow migrate`."""
    proc = subprocess.Popen([str(BIN), "serve", "--port", str(free_port()), "--data-dir", str(srv.data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # until it exits, or says it is ready (then it is stopped: the old behaviour)
        lines.append(line)
        if "ready, listening" in line:
            proc.kill()
    out = "".join(lines)
    proc.wait(timeout=60)
    assert proc.returncode == 2, out
    assert srv.proc is not None
    assert f"data dir {srv.data_dir.resolve()} is in use by another billow process (pid {srv.proc.pid})" in out, out
    # `billow migrate` beside it too (before: a chdb traceback, `Cannot lock file .../usage/status`).
    run = subprocess.run([str(BIN), "migrate", "--data-dir", str(srv.data_dir)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "cannot migrate: data dir" in run.stderr, run.stderr[-2000:]
    status, _, _ = srv.request("POST", "/api/v1/events", {
        "specversion": "1.0", "id": "after-refusal", "source": "t", "type": "t", "subject": "s"},
        content_type="application/cloudevents+json")
    assert status == 204


def test_deleting_a_customer_while_subscribing_it_never_leaves_the_subscription_without_its_customer(
        srv: Drained) -> None:
    """A customer whose subscription runs cannot be deleted (409), and a deleted customer cannot be subscribed: each
    request checked the other's object, then wrote its own, so at once both answered success and the subscription ran
    for a customer that no longer existed (18 of 20 rounds in the probe). Now one of the two is refused."""
    draft = ok(srv, "POST", "/api/v1/plans", {"key": "del_race", "name": "P", "currency": "USD",
                                              "billingCadence": "P1M",
                                              "phases": [{"key": "default", "name": "D", "rateCards": [FEE]}]})
    ok(srv, "POST", f"/api/v1/plans/{draft['id']}/publish")
    both = []
    for round_ in range(10):
        key = f"del_race_{round_}"
        cust = ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "currency": "USD",
                                                     "usageAttribution": {"subjectKeys": [key]}})
        (sub, _), (gone, _) = at_once([
            partial(srv.request, "POST", "/api/v1/subscriptions", {"plan": {"key": "del_race"}, "customerId": cust["id"]}),
            partial(srv.request, "DELETE", f"/api/v1/customers/{cust['id']}")])
        assert sub in (201, 400, 404, 409) and gone in (204, 409), (sub, gone)
        both.append(sub == 201 and gone == 204)
    assert not any(both), f"{sum(both)} of 10 rounds subscribed and deleted the customer"



def test_deleting_a_meter_while_a_feature_is_made_on_it_never_leaves_the_feature_on_a_deleted_meter(
        srv: Drained) -> None:
    """A meter a feature uses cannot be deleted (409), and a feature needs a live meter (400): at once, both answered
    success (18 of 20 rounds in the probe), leaving a feature on a deleted meter. Now one of the two is refused."""
    both = []
    for round_ in range(10):
        slug = f"meter_race_{round_}"
        ok(srv, "POST", "/api/v1/meters", {"slug": slug, "eventType": slug, "aggregation": "SUM", "valueProperty": "$.v"})
        (made, _), (gone, _) = at_once([
            partial(srv.request, "POST", "/api/v1/features", {"key": slug, "name": slug, "meterSlug": slug}),
            partial(srv.request, "DELETE", f"/api/v1/meters/{slug}")])
        assert made in (201, 400) and gone in (204, 409), (made, gone)
        both.append(made == 201 and gone == 204)
    assert not any(both), f"{sum(both)} of 10 rounds made the feature and deleted its meter"


def test_one_meter_deleted_by_several_clients_at_once_answers_204_once(srv: Drained) -> None:
    """A deleted meter is a 404 to the next deletion; 16 deletions at once each found it live and wrote its deletion:
    3 or 4 answered 204 in the probe (the meter's deletedAt written again each time). Now one 204, the rest 404."""
    deleted = []
    for round_ in range(3):
        slug = f"meter_gone_{round_}"
        ok(srv, "POST", "/api/v1/meters", {"slug": slug, "eventType": slug, "aggregation": "COUNT"})
        out = at_once([partial(srv.request, "DELETE", f"/api/v1/meters/{slug}")] * 16)
        assert {status for status, _ in out} <= {204, 404}, out
        deleted.append(sum(1 for status, _ in out if status == 204))
    assert deleted == [1, 1, 1], f"deletions answering 204 per meter: {deleted}"


def test_one_subject_or_entitlement_deleted_by_several_clients_at_once_answers_204_once(srv: Drained) -> None:
    """The same for a subject and an entitlement: of 16 deletions at once, 2 to 4 answered 204 in the probe, each
    writing its own deletion (an entitlement's end, activeTo, moved to the last one's instant). Now one 204."""
    ok(srv, "POST", "/api/v1/meters", {"slug": "gone_tok", "eventType": "gone_tok", "aggregation": "SUM",
                                       "valueProperty": "$.v"})
    ok(srv, "POST", "/api/v1/features", {"key": "gone_feat", "name": "gone_feat", "meterSlug": "gone_tok"})
    deleted = []
    for round_ in range(3):
        subject = f"gone_subject_{round_}"
        ok(srv, "POST", "/api/v1/subjects", [{"key": subject}])
        ent = ok(srv, "POST", f"/api/v1/subjects/{subject}/entitlements",
                 {"type": "metered", "featureKey": "gone_feat", "usagePeriod": {"interval": "DAY"}})
        path = f"/api/v1/subjects/{subject}/entitlements/{ent['id']}"
        out = at_once([partial(srv.request, "DELETE", path)] * 16)
        assert {status for status, _ in out} <= {204, 404}, out
        ents = sum(1 for status, _ in out if status == 204)
        out = at_once([partial(srv.request, "DELETE", f"/api/v1/subjects/{subject}")] * 16)
        assert {status for status, _ in out} <= {204, 404}, out
        deleted.append((ents, sum(1 for status, _ in out if status == 204)))
    assert deleted == [(1, 1)] * 3, f"(entitlement, subject) deletions answering 204: {deleted}"


def test_one_subscription_canceled_by_several_clients_at_once_ends_where_the_answer_says(srv: Drained) -> None:
    """16 immediate cancels of one subscription at once: the losers of the write read it again and, as of their own
    (earlier) instant, found it still running and canceled it again, earlier: in the probe 3 answered 200, two with an
    activeTo that was no longer stored. Now a cancel that reads a change written after its instant is a 409: one 200,
    whose activeTo is what is stored."""
    draft = ok(srv, "POST", "/api/v1/plans", {"key": "cancel_race", "name": "P", "currency": "USD",
                                              "billingCadence": "P1M",
                                              "phases": [{"key": "default", "name": "D", "rateCards": [FEE]}]})
    ok(srv, "POST", f"/api/v1/plans/{draft['id']}/publish")
    wrong = []
    for round_ in range(10):
        key = f"cancel_race_{round_}"
        cust = ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "currency": "USD",
                                                     "usageAttribution": {"subjectKeys": [key]}})
        sub = ok(srv, "POST", "/api/v1/subscriptions", {"plan": {"key": "cancel_race"}, "customerId": cust["id"]})
        out = at_once([partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/cancel",
                               {"timing": "immediate"})] * 16)
        assert {status for status, _ in out} <= {200, 409}, out
        stored = ok(srv, "GET", f"/api/v1/subscriptions/{sub['id']}")["activeTo"]
        answered = [body["activeTo"] for status, body in out if status == 200]
        wrong.append(sum(1 for a in answered if a != stored) + (len(answered) != 1))
    assert wrong == [0] * 10, f"per subscription: 200s not stored, plus 1 when not one 200: {wrong}"


def test_one_plan_archived_or_feature_deleted_by_several_clients_at_once_answers_success_once(srv: Drained) -> None:
    """The same for archiving a plan version (a second archive is a 409: only an active one can be archived) and
    deleting (archiving) a feature: of 16 at once, 4 plan archives answered 200 and 2-4 feature deletions 204 in the
    probe, each writing its own end. Now one success."""
    done = []
    for round_ in range(3):
        key = f"archive_race_{round_}"
        draft = _published(srv, key)
        out = at_once([partial(srv.request, "POST", f"/api/v1/plans/{draft['id']}/archive")] * 16)
        assert {status for status, _ in out} <= {200, 409}, out
        plans = sum(1 for status, _ in out if status == 200)
        ok(srv, "POST", "/api/v1/features", {"key": key, "name": key})
        out = at_once([partial(srv.request, "DELETE", f"/api/v1/features/{key}")] * 16)
        assert {status for status, _ in out} <= {204, 404}, out
        done.append((plans, sum(1 for status, _ in out if status == 204)))
    assert done == [(1, 1)] * 3, f"(plan archives, feature deletions) answering success: {done}"


def test_a_profile_made_default_while_it_is_deleted_never_leaves_the_namespace_without_a_default(srv: Drained) -> None:
    """PUT /api/v1/billing/profiles/{p} with `default: true` and DELETE of the same (not yet default) profile at once:
    the deletion had read it as not the default, and wrote its deletion over the profile the update had just made the
    default (unmarking the old one): no live default profile remained, so no customer without an override could be
    invoiced (the probe's first round did it). Now the deletion and the update write only what they read (409); an
    update that finds the profile deleted is a 400 (OpenMeter's ErrProfileAlreadyDeleted; a 404 before 2026-12-07)."""
    lost = 0
    for round_ in range(8):
        (base,) = [p for p in ok(srv, "GET", "/api/v1/billing/profiles?pageSize=1000")["items"] if p["default"]]
        body = {"name": f"maybe default {round_}", "supplier": base["supplier"], "workflow": base["workflow"],
                "apps": {k: v["id"] for k, v in base["apps"].items()}}
        made = ok(srv, "POST", "/api/v1/billing/profiles", body)
        (put, _), (gone, _) = at_once([
            partial(srv.request, "PUT", f"/api/v1/billing/profiles/{made['id']}", {**body, "default": True}),
            partial(srv.request, "DELETE", f"/api/v1/billing/profiles/{made['id']}")])
        assert put in (200, 400, 409) and gone in (204, 409), (put, gone)
        defaults = [p for p in ok(srv, "GET", "/api/v1/billing/profiles?pageSize=1000")["items"] if p["default"]]
        assert len(defaults) <= 1
        if not defaults:
            lost += 1
            ok(srv, "PUT", f"/api/v1/billing/profiles/{base['id']}", {**body, "name": base["name"], "default": True})
    assert lost == 0, f"{lost} of 8 rounds left no default billing profile"


def test_one_grant_voided_or_customer_deleted_by_several_clients_at_once_answers_success_once(srv: Drained) -> None:
    """16 voids of one grant at once, each at its own past minute (`at`): several answered 204 and the grant kept the
    last writer's instant only, so the others' 204 described a void that was not stored (a second void is a 409:
    already voided). And 16 deletions of one customer: several 204 (4 in the probe). Now one success each."""
    ok(srv, "POST", "/api/v1/meters", {"slug": "void_tok", "eventType": "void_tok", "aggregation": "SUM",
                                       "valueProperty": "$.v"})
    ok(srv, "POST", "/api/v1/features", {"key": "void_feat", "name": "void_feat", "meterSlug": "void_tok"})
    done = []
    for round_ in range(3):
        key = f"void_race_{round_}"
        ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "usageAttribution": {"subjectKeys": [key]}})
        ent = ok(srv, "POST", f"/api/v2/customers/{key}/entitlements",
                 {"type": "metered", "featureKey": "void_feat", "usagePeriod": {"interval": "MONTH"}})
        start = datetime.fromisoformat(ent["currentUsagePeriod"]["from"].replace("Z", "+00:00"))
        grant = ok(srv, "POST", f"/api/v1/subjects/{key}/entitlements/{ent['id']}/grants",
                   {"amount": 10, "effectiveAt": start.isoformat().replace("+00:00", "Z"),
                    "expiration": {"duration": "MONTH", "count": 1}})
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        ats = [max(start, now - timedelta(minutes=i)).isoformat().replace("+00:00", "Z") for i in range(16)]
        out = at_once([partial(srv.request, "DELETE", f"/api/v1/grants/{grant['id']}?at={urllib.parse.quote(at)}")
                       for at in ats])
        assert {status for status, _ in out} <= {204, 409}, out
        voids = sum(1 for status, _ in out if status == 204)
        out = at_once([partial(srv.request, "DELETE", f"/api/v1/customers/{key}")] * 16)
        assert {status for status, _ in out} <= {204, 404}, out
        done.append((voids, sum(1 for status, _ in out if status == 204)))
    assert done == [(1, 1)] * 3, f"(grant voids, customer deletions) answering 204: {done}"


def test_deleting_a_channel_while_a_rule_is_made_on_it_never_leaves_a_live_rule_on_a_deleted_channel(
        srv: Drained) -> None:
    """A channel a live rule names cannot be deleted (409), and a rule cannot name a deleted channel (400): at once,
    both answered success (20 of 20 rounds before), a live rule whose events went to a deleted channel. Now
    one of the two is refused (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    hook = {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/billow"}
    both = []
    for _ in range(20):
        ch = ok(srv, "POST", "/api/v1/notification/channels", hook)
        (made, _), (gone, _) = at_once([
            partial(srv.request, "POST", "/api/v1/notification/rules",
                    {"type": "invoice.created", "name": "r", "channels": [ch["id"]]}),
            partial(srv.request, "DELETE", f"/api/v1/notification/channels/{ch['id']}")])
        assert made in (201, 400) and gone in (204, 409), (made, gone)
        both.append(made == 201 and gone == 204)
    assert not any(both), f"{sum(both)} of 20 rounds made the rule and deleted its channel"


def test_archiving_a_feature_while_an_entitlement_is_made_on_it_never_gets_one_after_the_archive(
        srv: Drained) -> None:
    """A feature's archive (DELETE /api/v1/features/{f}) refuses every new entitlement of it from then on (400): an
    entitlement create looked at the feature, found it live, and wrote after an archive that had answered 204 in
    between; the archiving client, listing the feature's entitlements right after its 204, did not see it, then it
    was there. Now the archive and the entitlement's write take one lock per feature and the write checks the feature
    under it (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    late = []
    for round_ in range(20):
        key = f"arch_race_{round_}"
        ok(srv, "POST", "/api/v1/features", {"key": key, "name": key})
        ok(srv, "POST", "/api/v1/subjects", [{"key": key}])

        def archive_then_list(key: str = key) -> tuple[int, dict[str, str], Any]:
            status, hdrs, _ = srv.request("DELETE", f"/api/v1/features/{key}")
            return status, hdrs, ok(srv, "GET", f"/api/v1/entitlements?feature={key}")

        (made, ent), (gone, seen) = at_once([
            partial(srv.request, "POST", f"/api/v1/subjects/{key}/entitlements", {"type": "boolean", "featureKey": key}),
            archive_then_list])
        assert made in (201, 400) and gone == 204, (made, gone, ent)
        late.append(made == 201 and ent["id"] not in {e["id"] for e in seen})
    assert not any(late), f"{sum(late)} of 20 entitlements written after their feature's archive answered"


def test_uninstalling_an_app_while_a_billing_profile_is_made_on_it_never_leaves_the_profile_on_a_removed_app(
        srv: Drained) -> None:
    """An app a billing profile uses cannot be uninstalled (409), and a profile cannot name an app that is not
    installed (400): at once, both answered success, a live profile invoicing through an uninstalled app. And an
    app's update (PUT /api/v1/apps/{a}) racing its uninstall wrote the app back installed after the 204. Now one of
    the two is refused (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    (base,) = [p for p in ok(srv, "GET", "/api/v1/billing/profiles?pageSize=1000")["items"] if p["default"]]
    both, revived = [], []
    for round_ in range(20):
        app = ok(srv, "POST", "/api/v1/marketplace/listings/custom_invoicing/install",
                 {"name": f"ci {round_}", "createBillingProfile": False})["app"]
        body = {"name": f"on app {round_}", "supplier": base["supplier"], "workflow": base["workflow"],
                "apps": {"tax": "sandbox", "invoicing": app["id"], "payment": "sandbox"}}
        (made, _), (gone, _) = at_once([partial(srv.request, "POST", "/api/v1/billing/profiles", body),
                                        partial(srv.request, "DELETE", f"/api/v1/apps/{app['id']}")])
        assert made in (201, 400) and gone in (204, 409), (made, gone)
        both.append(made == 201 and gone == 204)
        other = ok(srv, "POST", "/api/v1/marketplace/listings/custom_invoicing/install",
                   {"name": f"ci {round_} b", "createBillingProfile": False})["app"]
        (put, _), (gone, _) = at_once([
            partial(srv.request, "PUT", f"/api/v1/apps/{other['id']}",
                    {"type": "custom_invoicing", "name": f"renamed {round_}", "enableDraftSyncHook": False,
                     "enableIssuingSyncHook": False}),
            partial(srv.request, "DELETE", f"/api/v1/apps/{other['id']}")])
        assert put in (200, 404) and gone == 204, (put, gone)
        revived.append(srv.request("GET", f"/api/v1/apps/{other['id']}")[0] != 404)
    assert not any(both) and not any(revived), (f"{sum(both)} of 20 rounds made the profile and uninstalled its app",
                                                f"{sum(revived)} of 20 uninstalled apps installed again by an update")


def _published(srv: Drained, key: str) -> dict[str, Any]:
    """Version 1 of a plan of one flat fee (`key`), published."""
    draft = ok(srv, "POST", "/api/v1/plans", {"key": key, "name": "P", "currency": "USD", "billingCadence": "P1M",
                                              "phases": [{"key": "default", "name": "D", "rateCards": [FEE]}]})
    ok(srv, "POST", f"/api/v1/plans/{draft['id']}/publish")
    return dict(draft)


def _fee_plan(srv: Drained, key: str) -> str:
    """A published plan of one flat fee (`key`), and the instant ten days on, to the second, that the race tests
    cancel at."""
    _published(srv, key)
    return (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _canceled_at(srv: Drained, plan: str, key: str, end: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new customer (`key`) subscribed to `plan` now, its subscription canceled at `end`."""
    cust = ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "currency": "USD",
                                                 "usageAttribution": {"subjectKeys": [key]}})
    sub = ok(srv, "POST", "/api/v1/subscriptions", {"plan": {"key": plan}, "customerId": cust["id"]})
    ok(srv, "POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": end})
    return cust, sub


def test_unscheduling_a_cancelation_while_the_next_subscription_is_made_never_leaves_two_running(
        srv: Drained) -> None:
    """A canceled subscription's cancelation cannot be unscheduled when another subscription starts where it ends
    (409), and a new subscription cannot start while another of the customer runs (409): at once both answered
    success, two subscriptions running from the end on, both billed. Now one of the two is refused
    (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    end = _fee_plan(srv, "unsched_race")
    both = []
    for round_ in range(20):
        cust, sub = _canceled_at(srv, "unsched_race", f"unsched_race_{round_}", end)
        (made, _), (kept, _) = at_once([
            partial(srv.request, "POST", "/api/v1/subscriptions",
                    {"plan": {"key": "unsched_race"}, "customerId": cust["id"], "timing": end}),
            partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/unschedule-cancelation")])
        assert made in (201, 409) and kept in (200, 409), (made, kept)
        both.append(made == 201 and kept == 200)
    assert not any(both), f"{sum(both)} of 20 rounds continued the subscription and made the next one"


def test_a_plan_change_meeting_the_next_subscription_never_leaves_two_running(srv: Drained) -> None:
    """A plan change (POST /api/v1/subscriptions/{s}/change) at the instant a canceled subscription ends, at once with
    a new subscription made for that instant: the change wrote its next subscription without looking at the
    customer's others, so both ran from then on, both billed (15 of 20 rounds before; one after the other too). Now one
    of the two is refused (409) (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    end = _fee_plan(srv, "change_race")
    both = []
    for round_ in range(20):
        cust, sub = _canceled_at(srv, "change_race", f"change_race_{round_}", end)
        (made, _), (changed, _) = at_once([
            partial(srv.request, "POST", "/api/v1/subscriptions",
                    {"plan": {"key": "change_race"}, "customerId": cust["id"], "timing": end}),
            partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/change",
                    {"plan": {"key": "change_race"}, "timing": end})])
        assert made in (201, 409) and changed in (200, 409), (made, changed)
        both.append(made == 201 and changed == 200)
    assert not any(both), f"{sum(both)} of 20 rounds changed the plan and made the next subscription"


def test_archiving_a_feature_while_a_plan_on_it_is_published_never_publishes_it_after_the_archive(
        srv: Drained) -> None:
    """A plan's publish refuses a rate card on an archived feature (400): a publish that had found the feature live
    wrote after an archive that answered 204 in between (the archiving client then read the plan still a draft, and
    a moment later it was active on the archived feature). Now the publish checks its features under the lock the
    archive takes (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    late = []
    for round_ in range(20):
        key = f"pub_race_{round_}"
        ok(srv, "POST", "/api/v1/features", {"key": key, "name": key})
        draft = ok(srv, "POST", "/api/v1/plans", {
            "key": key, "name": key, "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "D", "rateCards": [{**FEE, "key": key, "featureKey": key}]}]})

        def archive_then_read(key: str = key, plan_id: str = draft["id"]) -> tuple[int, dict[str, str], Any]:
            status, hdrs, _ = srv.request("DELETE", f"/api/v1/features/{key}")
            return status, hdrs, ok(srv, "GET", f"/api/v1/plans/{plan_id}")["status"]

        (published, _), (gone, seen) = at_once([
            partial(srv.request, "POST", f"/api/v1/plans/{draft['id']}/publish"), archive_then_read])
        assert published in (200, 400) and gone == 204, (published, gone)
        late.append(published == 200 and seen == "draft")
    assert not any(late), f"{sum(late)} of 20 plans published after their feature's archive answered"


def test_deleting_an_entitlement_while_a_grant_is_made_on_it_never_grants_it_after_the_deletion(
        srv: Drained) -> None:
    """A grant needs a live entitlement (404): a grant create that had found the entitlement live wrote after a
    deletion that answered 204 in between (the deleting client, listing the entitlement's grants right after, found
    none; a moment later the ended entitlement had one). Now the grant checks the entitlement under the lock its
    deletion takes (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    ok(srv, "POST", "/api/v1/meters", {"slug": "grant_race_tok", "eventType": "grant_race_tok", "aggregation": "SUM",
                                       "valueProperty": "$.v"})
    ok(srv, "POST", "/api/v1/features", {"key": "grant_race", "name": "grant_race", "meterSlug": "grant_race_tok"})
    late = []
    for round_ in range(20):
        subject = f"grant_race_{round_}"
        ok(srv, "POST", "/api/v1/subjects", [{"key": subject}])
        ent = ok(srv, "POST", f"/api/v1/subjects/{subject}/entitlements",
                 {"type": "metered", "featureKey": "grant_race", "usagePeriod": {"interval": "MONTH"}})
        start = ent["currentUsagePeriod"]["from"]
        path = f"/api/v1/subjects/{subject}/entitlements/{ent['id']}"

        def delete_then_list(path: str = path) -> tuple[int, dict[str, str], Any]:
            status, hdrs, _ = srv.request("DELETE", path)
            return status, hdrs, ok(srv, "GET", "/api/v1/grants?includeDeleted=true")

        (made, grant), (gone, seen) = at_once([
            partial(srv.request, "POST", f"{path}/grants",
                    {"amount": 10, "effectiveAt": start, "expiration": {"duration": "MONTH", "count": 1}}),
            delete_then_list])
        assert made in (201, 404) and gone == 204, (made, gone, grant)
        listed = seen["items"] if isinstance(seen, dict) else seen
        late.append(made == 201 and grant["id"] not in {g["id"] for g in listed})
    assert not any(late), f"{sum(late)} of 20 entitlements granted after their deletion answered"


@pytest.mark.parametrize("made_at", ["/api/v2/customers/{}/entitlements", "/api/v1/subjects/{}/entitlements"])
def test_deleting_a_customer_while_an_entitlement_is_made_for_it_never_gives_it_one_after_the_deletion(
        srv: Drained, made_at: str) -> None:
    """POST /api/v2/customers/{c}/entitlements needs a live customer, POST /api/v1/subjects/{s}/entitlements a subject
    known (here only through its customer): 404 once the customer is deleted. A create that had found the customer
    (the subject) wrote after a deletion that answered 204 in between (the deleting client, listing the subject's
    entitlements right after, found none; a moment later the deleted customer had one). Now the create takes the
    customer's lock its deletion takes and checks the customer (looks the subject up again) under it
    (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    feature = "cust_race" if "/v2/" in made_at else "subj_race"
    ok(srv, "POST", "/api/v1/features", {"key": feature, "name": feature})
    late = []
    for round_ in range(20):
        key = f"{feature}_{round_}"
        ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "usageAttribution": {"subjectKeys": [key]}})

        def delete_then_list(key: str = key) -> tuple[int, dict[str, str], Any]:
            status, hdrs, _ = srv.request("DELETE", f"/api/v1/customers/{key}")
            return status, hdrs, ok(srv, "GET", f"/api/v1/entitlements?subject={key}")

        (made, ent), (gone, seen) = at_once([
            partial(srv.request, "POST", made_at.format(key), {"type": "boolean", "featureKey": feature}),
            delete_then_list])
        assert made in (201, 404) and gone == 204, (made, gone, ent)
        late.append(made == 201 and ent["id"] not in {e["id"] for e in seen})
    assert not any(late), f"{sum(late)} of 20 deleted customers given an entitlement after their deletion answered"


def test_archiving_an_add_on_while_it_is_added_to_a_subscription_never_adds_it_after_the_archive(
        srv: Drained) -> None:
    """Adding an add-on to a subscription needs an active add-on (400): an add that had found it active wrote after an
    archive that answered in between (the archiving client, reading the subscription right after, saw no add-on; a
    moment later it was there). Now the add checks the add-on under the lock its archive takes
    (tests/adapters/test_writes_across_resources.py: the same across containers)."""
    plan = {"name": "P", "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "D", "rateCards": [FEE]}]}
    late = []
    for round_ in range(20):
        key = f"addon_race_{round_}"
        cust = ok(srv, "POST", "/api/v1/customers", {"key": key, "name": key, "currency": "USD",
                                                     "usageAttribution": {"subjectKeys": [key]}})
        sub = ok(srv, "POST", "/api/v1/subscriptions", {"customPlan": plan, "customerId": cust["id"]})
        addon = ok(srv, "POST", "/api/v1/addons", {"key": key, "name": key, "currency": "USD", "instanceType": "single",
                                                   "rateCards": [{**FEE, "key": key}]})
        ok(srv, "POST", f"/api/v1/addons/{addon['id']}/publish")

        def archive_then_read(addon_id: str = addon["id"], sub_id: str = sub["id"]) -> tuple[int, dict[str, str], Any]:
            status, hdrs, _ = srv.request("POST", f"/api/v1/addons/{addon_id}/archive")
            return status, hdrs, ok(srv, "GET", f"/api/v1/subscriptions/{sub_id}/addons")

        (added, _), (archived, seen) = at_once([
            partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                    {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"}),
            archive_then_read])
        assert added in (201, 400) and archived == 200, (added, archived)
        late.append(added == 201 and not seen)
    assert not any(late), f"{sum(late)} of 20 add-ons added to a subscription after their archive answered"


def test_archiving_a_version_while_the_next_is_published_never_leaves_two_in_force(srv: Drained) -> None:
    """Publishing v2 ends v1 where v2 begins; archiving v1 ends it at its own now. The publish read the key's versions,
    wrote v2, then ended v1 on its own: an archive landing between the read and v2's write ended v1 after v2 began,
    two versions in force at once (tests/adapters/test_key_versions_across_containers.py: the same across
    containers). Now a key's version change is one transaction under the key's lock."""
    overlapping = []
    for round_ in range(20):
        key = f"pub_arch_{round_}"
        v1 = _published(srv, key)
        v2 = ok(srv, "POST", f"/api/v1/plans/{key}/next")
        (published, _), (archived, _) = at_once([
            partial(srv.request, "POST", f"/api/v1/plans/{v2['id']}/publish"),
            partial(srv.request, "POST", f"/api/v1/plans/{v1['id']}/archive")])
        assert published == 200 and archived in (200, 409), (published, archived)
        one, two = (ok(srv, "GET", f"/api/v1/plans/{v['id']}") for v in (v1, v2))
        overlapping.append(datetime.fromisoformat(one["effectiveTo"]) > datetime.fromisoformat(two["effectiveFrom"]))
    assert not any(overlapping), f"{sum(overlapping)} of 20 keys with two versions in force at once"


def test_canceling_a_subscription_while_it_is_restored_never_deletes_the_next_one_for_a_refused_restore(
        srv: Drained) -> None:
    """A restore deleted the customer's next subscriptions, then continued the canceled one: an immediate cancel
    landing in between made the restore a 409, and the next subscription stayed deleted all the same. Now the
    deletions and the restore's write are one transaction under the customer's lock
    (tests/adapters/test_key_versions_across_containers.py: the same across containers)."""
    end = _fee_plan(srv, "restore_race")
    lost = []
    for round_ in range(20):
        cust, sub = _canceled_at(srv, "restore_race", f"restore_race_{round_}", end)
        nxt = ok(srv, "POST", "/api/v1/subscriptions",
                 {"plan": {"key": "restore_race"}, "customerId": cust["id"], "timing": end})
        (canceled, _), (restored, _) = at_once([
            partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "immediate"}),
            partial(srv.request, "POST", f"/api/v1/subscriptions/{sub['id']}/restore")])
        assert canceled in (200, 409) and restored in (200, 409), (canceled, restored)
        status, _, after = srv.request("GET", f"/api/v1/subscriptions/{nxt['id']}")
        lost.append(restored == 409 and status == 404)
    assert not any(lost), f"{sum(lost)} of 20 refused restores deleted the next subscription"
