"""Billing use-cases, one module per job (this module re-exports what the API routes and jobs call):

- billow.services.billing_profiles: billing profiles and customer overrides, the profile a customer is billed by
- billow.services.billing_run: the billing run (due points and differences are billow.domain.billing's rules)
- billow.services.invoices: a new invoice, its lifecycle actions, issuing through the apps, payments, credit
- billow.services.pending_lines: one-off lines waiting on a customer's gathering invoice
- billow.services.jobs: the scheduled jobs (billing run, documents, notification dispatch, entitlement sync)"""

from __future__ import annotations

from billow.domain.billing import CORRECTION_WINDOW, Point, plain
from billow.services.billing_profiles import (
    APP_TYPES,
    WORKFLOW_DEFAULTS,
    bad,
    create_profile,
    delete_override,
    delete_profile,
    get_override,
    get_profile,
    put_override,
    resolve_customer,
    resolved_profile,
    update_profile,
)
from billow.services.billing_run import COMMIT_BATCH, BatchedUsage, RunResult, run
from billow.services.invoices import (
    act,
    add_credit,
    custom_invoicing_synced,
    delete_invoice,
    get_invoice,
    handle_payment_event,
    issue,
    list_invoices,
    new_invoice,
    record_payment,
    update_invoice,
)
from billow.services.pending_lines import add_pending_lines

__all__ = [
    "APP_TYPES", "COMMIT_BATCH", "CORRECTION_WINDOW", "WORKFLOW_DEFAULTS", "BatchedUsage", "Point", "RunResult", "act",
    "add_credit", "add_pending_lines", "bad", "create_profile", "custom_invoicing_synced", "delete_invoice",
    "delete_override", "delete_profile", "get_invoice", "get_override", "get_profile", "handle_payment_event", "issue",
    "list_invoices", "new_invoice", "plain", "put_override", "record_payment", "resolve_customer", "resolved_profile",
    "run", "update_invoice", "update_profile",
]
