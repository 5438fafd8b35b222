"""Two edits of one document by two Lambda containers whose clocks differ by seconds, on one PostgreSQL (as on
Aurora): the container behind reads the document, the one ahead writes its edit, then the one behind writes. (Edits
one after another on such clocks: tests/catalog/test_updated_at_order.py; the two-engines fixture and its barrier:
tests/adapters/test_writes_across_containers.py.)

Each test forces that interleaving with a hook on the slow container's store (the other container's edit runs
right before the slow one's write), so it holds in every run, and asserts what every order of the two requests
gives: updatedAt never moves backwards (a client syncing "changed since" by it misses no change), and the stored
document is one writer's whole edit applied to what the other wrote, never this body mixed with the document as it
was before the other write."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_apps import SqlAppStore
from billow.adapters.sql_notifications import SqlNotificationStore
from billow.ids import new_id
from tests.adapters.test_writes_across_containers import metas  # noqa: F401 (the fixture)

BEHIND = datetime(2026, 6, 1, tzinfo=UTC)
AHEAD = BEHIND + timedelta(seconds=5)  # the other container's clock
STAMP_AHEAD = "2026-06-01T00:00:05Z"
SECRET = "whsec_" + "A" * 40


def _differs(what: str, stored: dict[str, Any] | None, **expected: Any) -> list[str]:
    """[what is wrong] when `stored` does not hold the `expected` fields, else []."""
    assert stored is not None
    got = {k: stored.get(k) for k in expected}
    return [f"{what}: {got}, not {expected}"] if got != expected else []


class _Meanwhile:
    """The other container's writes, run (once each) right before the slow container's next write."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], Any]] = []

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()


class _SlowNotifications(SqlNotificationStore):
    def __init__(self, engine: Any, meanwhile: _Meanwhile) -> None:
        super().__init__(engine)
        self.meanwhile = meanwhile

    def put_channel(self, namespace: str, doc: dict[str, Any], **kwargs: Any) -> None:
        self.meanwhile.run()
        super().put_channel(namespace, doc, **kwargs)

    def put_rule(self, namespace: str, doc: dict[str, Any], **kwargs: Any) -> None:
        self.meanwhile.run()
        super().put_rule(namespace, doc, **kwargs)


class _SlowApps(SqlAppStore):
    def __init__(self, engine: Any, meanwhile: _Meanwhile) -> None:
        super().__init__(engine)
        self.meanwhile = meanwhile

    def put_app(self, namespace: str, doc: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.meanwhile.run()
        super().put_app(namespace, doc, *args, **kwargs)


def test_an_app_edited_or_uninstalled_behind_another_container_s_edit_keeps_the_later_stamp_and_every_edit(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """PUT /api/v1/apps/{a} (and PUT .../stripe/api-key, DELETE) read the app, then wrote its document by id, stamped
    with the later of its clock and the updatedAt it read. Another container's edit, its clock 5 s ahead, landing
    between the two: updatedAt moved back 5 s; a rename behind a new Stripe key wrote back the old key's mask and
    livemode while the secrets held the new key (the app showing a key it no longer uses); an uninstall wrote the
    app as it read it. Now each writes only the app as it read it (else reads again): the later stamp and both
    edits stay, the mask matches the key."""
    from types import SimpleNamespace

    from billow.domain import apps as rules
    from billow.services import apps as apps_service

    def stripe(key: str) -> Any:  # Stripe's answer to the key's owner: the one account both keys open
        return SimpleNamespace(account=lambda: {"id": "acct_billow"})

    meanwhile = _Meanwhile()
    slow, other = _SlowApps(metas[0].engine, meanwhile), SqlAppStore(metas[1].engine)
    stamp, old_key, new_key = "2026-06-01T00:00:00Z", "sk_test_" + "o" * 24, "sk_live_" + "n" * 24
    wrong: list[str] = []

    # a Stripe app renamed behind a new API key
    app = rules.new_app(new_id(), "stripe", "S", stamp, stripeAccountId="acct_billow", livemode=False,
                        maskedAPIKey=rules.masked_api_key(old_key))
    other.add_app("ns", app, {"apiKey": old_key})
    meanwhile.pending.append(lambda: apps_service.update_stripe_api_key(
        "ns", app["id"], {"secretAPIKey": new_key}, apps=other, stripe=stripe, now=AHEAD))
    apps_service.update_app("ns", app["id"], {"type": "stripe", "name": "behind"}, apps=slow, stripe=stripe,
                            now=BEHIND)
    wrong += _differs("Stripe app rename", other.get_app("ns", app["id"]), name="behind", updatedAt=STAMP_AHEAD,
                      maskedAPIKey=rules.masked_api_key(new_key), livemode=True)
    if other.app_secrets("ns", app["id"]).get("apiKey") != new_key:
        wrong.append("Stripe app rename: the new key lost")
    # a custom invoicing app edited behind an edit, and uninstalled behind one
    body = {"type": "custom_invoicing", "enableDraftSyncHook": True, "enableIssuingSyncHook": False}
    for how in ("edit", "uninstall"):
        app = rules.new_app(new_id(), "custom_invoicing", "CI", stamp, enableDraftSyncHook=False,
                            enableIssuingSyncHook=False)
        other.add_app("ns", app)
        meanwhile.pending.append(lambda app=app: apps_service.update_app(
            "ns", app["id"], {**body, "name": "ahead", "enableIssuingSyncHook": True}, apps=other, stripe=stripe,
            now=AHEAD))
        if how == "edit":
            apps_service.update_app("ns", app["id"], {**body, "name": "behind"}, apps=slow, stripe=stripe, now=BEHIND)
            wrong += _differs("app edit", other.get_app("ns", app["id"]), name="behind",
                              enableIssuingSyncHook=False, updatedAt=STAMP_AHEAD)
        else:
            from billow.adapters.sql_billing import SqlBillingStore

            apps_service.uninstall_app("ns", app["id"], apps=slow, billing=SqlBillingStore(metas[0].engine),
                                       stripe=stripe, now=BEHIND)
            wrong += _differs("app uninstall", other.get_app("ns", app["id"]), name="ahead",
                              enableIssuingSyncHook=True, updatedAt=STAMP_AHEAD)
    assert not meanwhile.pending
    assert not wrong, (len(wrong), wrong)


def test_a_channel_or_rule_edited_or_deleted_behind_another_container_s_edit_keeps_the_later_stamp_and_every_edit(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """PUT /api/v1/notification/channels/{c} (rules/{r}) read the channel, then wrote it back by id, stamped with the
    later of its clock and the updatedAt it read. Another container's PUT, its clock 5 s ahead, landing between the
    two: the write behind stamped its own earlier instant over the later one (updatedAt moved back 5 s), and a
    channel update without signingSecret (keep it) wrote back the secret as it was before the other's new one: a
    channel holding this body and a secret neither request left, both answering 200. A DELETE behind wrote the
    channel as it read it: the other's edit undone inside the deleted document. Now each writes only what it read
    (else reads again): the later stamp and both edits stay."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import notifications as notes

    meanwhile = _Meanwhile()
    slow, other = _SlowNotifications(metas[0].engine, meanwhile), SqlNotificationStore(metas[1].engine)
    ents = SqlEntitlementStore(metas[1].engine)
    hook = {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/billow"}
    keep = notes.create_channel("ns", hook, store=other, now=BEHIND)
    wrong: list[str] = []

    # a channel edited behind an edit giving it a new signing secret
    ch = notes.create_channel("ns", hook, store=other, now=BEHIND)
    meanwhile.pending.append(lambda: notes.update_channel("ns", ch["id"], {**hook, "name": "ahead",
                                                                           "signingSecret": SECRET},
                                                          store=other, now=AHEAD))
    answered = notes.update_channel("ns", ch["id"], {**hook, "name": "behind"}, store=slow, now=BEHIND)
    wrong += _differs("channel edit", other.get_channel("ns", ch["id"]), name="behind", signingSecret=SECRET,
                      updatedAt=STAMP_AHEAD)
    wrong += _differs("channel edit's answer", answered, name="behind", signingSecret=SECRET, updatedAt=STAMP_AHEAD)
    # a channel deleted behind an edit
    ch = notes.create_channel("ns", hook, store=other, now=BEHIND)
    meanwhile.pending.append(lambda: notes.update_channel("ns", ch["id"], {**hook, "name": "ahead"}, store=other,
                                                          now=AHEAD))
    notes.delete_channel("ns", ch["id"], store=slow, now=BEHIND)
    wrong += _differs("channel deletion", other.get_channel("ns", ch["id"]), name="ahead", updatedAt=STAMP_AHEAD)
    # a rule edited behind an edit, and deleted behind one
    rule = {"type": "invoice.created", "name": "r", "channels": [keep["id"]]}
    for how in ("edit", "deletion"):
        r = notes.create_rule("ns", rule, store=other, features=ents, now=BEHIND)
        meanwhile.pending.append(lambda r=r: notes.update_rule("ns", r["id"], {**rule, "name": "ahead",
                                                                               "disabled": True},
                                                               store=other, features=ents, now=AHEAD))
        if how == "edit":
            notes.update_rule("ns", r["id"], {**rule, "name": "behind", "disabled": True}, store=slow, features=ents,
                              now=BEHIND)
            wrong += _differs("rule edit", other.get_rule("ns", r["id"]), name="behind", updatedAt=STAMP_AHEAD)
        else:
            notes.delete_rule("ns", r["id"], store=slow, now=BEHIND)
            wrong += _differs("rule deletion", other.get_rule("ns", r["id"]), name="ahead", updatedAt=STAMP_AHEAD)
    assert not meanwhile.pending
    assert not wrong, (len(wrong), [w[:60] for w in wrong])
