"""`billow` command line: `billow serve` runs the embedded host, `billow migrate` the schema migrations."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"billow: config file {path} not found")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"billow: config file {path} must hold a mapping")
    return data


def serve(args: argparse.Namespace) -> int:
    from billow.bootstrap import Settings
    from billow.errors import BillowError
    from billow.local.server import BillowServer

    cfg = load_config(args.config)
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    try:
        settings = Settings.parse({k.replace("-", "_"): v for k, v in cfg.items()})
    except ValueError as exc:
        print(f"billow: invalid config: {exc}", file=sys.stderr)
        return 2
    bus = f"kafka at {settings.kafka_bootstrap}" if settings.bus == "kafka" else "in-process"
    print(f"billow: starting (usage store: {settings.usage_store}, bus: {bus}, "
          f"data dir: {Path(settings.data_dir).resolve()})", flush=True)
    try:
        server = BillowServer(settings, args.host, args.port)
    except BillowError as exc:
        print(f"billow: cannot start: {exc.detail}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"billow: cannot reach the event bus: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"billow: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = server.address

    def stop(*_: Any) -> None:
        import threading

        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from billow.local.server import welcome

    print(welcome(settings, host, port), flush=True)
    from billow import heap

    heap.settle()  # start-up's objects out of the collector's scans: ingest's CPU per event (billow.heap)
    server.serve_forever()
    server.httpd.server_close()
    server.close()
    print("billow: stopped", flush=True)
    return 0


def keys(args: argparse.Namespace) -> int:
    """`billow keys create|list|revoke` against the same meta store `billow serve` (or AWS) uses."""
    import sqlalchemy as sa

    from billow.adapters.sql_keys import SqlKeyStore
    from billow.bootstrap import Settings
    from billow.errors import BillowError
    from billow.services import apikeys
    from billow.timeutil import utcnow

    cfg = load_config(args.config)
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    settings = Settings.parse({k.replace("-", "_"): v for k, v in cfg.items()})
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    store = SqlKeyStore(sa.create_engine(settings.meta_store_url or f"sqlite:///{(data / 'billow.db').resolve()}"))
    store.migrate()
    try:
        if args.action == "create":
            token, doc = apikeys.create_key(args.namespace or settings.namespace, args.name, args.scope or ["admin"],
                                            store=store, now=utcnow())
            print(f"created API key {doc['id']} for namespace {doc['namespace']!r}, scopes {', '.join(doc['scopes'])}")
            print(f"token (shown once, store it now): {token}")
            from billow.adapters.sql_apps import SqlAppStore
            from billow.adapters.sql_billing import SqlBillingStore
            from billow.services.apps import provision

            # A new namespace gets the sandbox app and a default billing profile, as OpenMeter's do (issue 16).
            provision(doc["namespace"], apps=SqlAppStore(store.engine), billing=SqlBillingStore(store.engine),
                      now=utcnow())
        elif args.action == "list":
            listed = store.list_keys(args.namespace)
            if not listed:
                print(f"no API keys in namespace {args.namespace!r}" if args.namespace else
                      "no API keys yet: create one with `billow keys create --name NAME --scope admin`")
            for d in listed:
                state = f"revoked {d['revokedAt']}" if d.get("revokedAt") else "active"
                print(f"{d['id']}  {d['namespace']}  {','.join(d['scopes'])}  {d['name']}  {state}")
        else:
            doc = apikeys.revoke_key(args.key_id, store=store, now=utcnow())
            print(f"revoked {doc['id']} at {doc['revokedAt']}")
    except BillowError as exc:
        print(f"billow: {exc.detail}", file=sys.stderr)
        return 2
    return 0


def migrate(args: argparse.Namespace) -> int:
    """`billow migrate`: the meta database (Alembic revisions) and the usage store (ClickHouse migrations) to the
    schema this code needs. `billow serve` does the same at start; in AWS the deploy runs functions/migrate."""
    from billow.bootstrap import Settings
    from billow.migrations import SchemaNotCurrent, migrate_all

    cfg = load_config(args.config)
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    try:
        settings = Settings.parse({k.replace("-", "_"): v for k, v in cfg.items()}).with_secrets()
    except ValueError as exc:
        print(f"billow: invalid config: {exc}", file=sys.stderr)
        return 2
    from billow.local.datadir import DataDirInUse, hold

    try:
        held = hold(settings.data_dir) if settings.usage_store == "chdb" else None  # not beside a running serve
    except DataDirInUse as exc:
        print(f"billow: cannot migrate: {exc.detail}", file=sys.stderr)
        return 2
    try:
        done = migrate_all(settings)
    except SchemaNotCurrent as exc:
        print(f"billow: {exc}", file=sys.stderr)
        return 2
    finally:
        if held is not None:
            held.close()
    print(f"billow: meta database at schema revision {done['meta']}; usage store: {done['usage']}", flush=True)
    return 0


Request = Any  # (method, path, body | None, accept) -> (status, text): how `backtest` reaches the API


def http_requester(url: str, token: str | None) -> Request:
    """Calls to a Billow API at `url` (urllib; the token as a Bearer header)."""
    import json
    import urllib.error
    import urllib.request

    def call(method: str, path: str, body: Any, accept: str) -> tuple[int, str]:
        headers = {"Accept": accept, **({"Authorization": f"Bearer {token}"} if token else {})}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return call


def run_backtest(call: Request, body: dict[str, Any], *, out: Any, err: Any, poll_s: float = 0.2) -> int:
    """`billow backtest`: start the job, draw its progress (GET /api/v1/info/progress/{id}) and write the result's
    CSV to `out`; a 4xx prints the problem's detail and returns 2."""
    import json
    import threading

    status, text = call("POST", "/api/v1/billing/backtests", body, "application/json")
    if status != 202:
        print(f"billow: backtest refused ({status}): {json.loads(text).get('detail', text) if text else ''}", file=err)
        return 2
    job = json.loads(text)
    pause = threading.Event()

    def draw(p: dict[str, Any]) -> None:
        done, total = p["success"] + p["failed"], p["total"]
        filled = 30 * done // total if total else 30
        failed = f", {p['failed']} failed" if p["failed"] else ""
        print(f"\rbacktest [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} customers{failed}", end="", file=err,
              flush=True)

    while True:
        st, ptext = call("GET", f"/api/v1/info/progress/{job['id']}", None, "application/json")
        if st != 200:
            print(f"\nbillow: progress unavailable ({st}): {ptext}", file=err)
            return 1
        draw(json.loads(ptext))
        st, rtext = call("GET", f"/api/v1/billing/backtests/{job['id']}", None, "application/json")
        result = json.loads(rtext)  # small while it runs (the rows come with the result)
        if result["status"] not in ("queued", "running"):  # done, or failed as a whole (then not every customer was counted)
            break
        pause.wait(poll_s)
    draw(result["progress"])  # as the job ended (it may have ended after the progress was read)
    print("", file=err)
    if result["status"] != "succeeded":
        print(f"billow: backtest failed: {result.get('error')}", file=err)
        return 1
    t = result["totals"]
    print(f"current {t['current']} {t['currency']}, candidate {t['candidate']}, difference {t['difference']}"
          f" ({t['differencePercent'] or '-'} %) over {t['customers']} customers", file=err)
    st, csv_text = call("GET", f"/api/v1/billing/backtests/{job['id']}", None, "text/csv")
    out.write(csv_text)
    return 0


def backtest(args: argparse.Namespace) -> int:
    """`billow backtest --plan KEY[@version] --from --to [--customers a,b]` against a running Billow (`--url`)."""
    import os

    body: dict[str, Any] = {"plan": args.plan, "from": getattr(args, "from"), "to": args.to}
    if args.customers:
        body["customers"] = [c for c in args.customers.split(",") if c]
    call = http_requester(args.url, args.token or os.environ.get("BILLOW_TOKEN"))
    if args.out and args.out != "-":
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            code = run_backtest(call, body, out=f, err=sys.stderr)
        if code == 0:
            print(f"wrote {args.out}", file=sys.stderr)
        return code
    return run_backtest(call, body, out=sys.stdout, err=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from billow import __version__

    parser = argparse.ArgumentParser(prog="billow", description="Billow usage metering and billing engine")
    parser.add_argument("--version", action="version", version=f"billow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run Billow in one local process on embedded engines")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface "
                   "(default: %(default)s)")
    s.add_argument("--port", type=int, default=8888, help="TCP port to listen on, 0 for any free one "
                   "(default: %(default)s)")
    s.add_argument("--data-dir", default=None, help="where data is kept across restarts (default: .billow)")
    s.add_argument("--config", default=None, help="billow.yaml: namespace, meters, stores, auth")
    s.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the server logs to stderr (default: %(default)s)")
    k = sub.add_parser("keys", help="create, list and revoke API keys")
    k.add_argument("--data-dir", default=None)
    k.add_argument("--config", default=None)
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="a new key; its token is printed once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--scope", action="append", choices=["ingest", "read", "admin"],
                    help="repeat for several (default: admin)")
    kc.add_argument("--namespace", default=None, help="default: the config's namespace")
    kl = ksub.add_parser("list")
    kl.add_argument("--namespace", default=None)
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    m = sub.add_parser("migrate", help="migrate the meta database and the usage store to this version's schema")
    m.add_argument("--data-dir", default=None)
    m.add_argument("--config", default=None, help="billow.yaml: meta_store_url, usage_store, clickhouse_dsn")
    bt = sub.add_parser("backtest", help="what a plan would have charged each customer over a window of real usage "
                        "(docs/pricing-lab.md); writes CSV")
    bt.add_argument("--plan", required=True, help="KEY or KEY@version (a draft or any published version)")
    bt.add_argument("--from", required=True, help="start of the window (RFC 3339)")
    bt.add_argument("--to", required=True, help="end of the window (RFC 3339), not in the future")
    bt.add_argument("--customers", default=None, help="comma-separated customer ids or keys (default: all)")
    bt.add_argument("--url", default="http://127.0.0.1:8888", help="the Billow API (default: %(default)s)")
    bt.add_argument("--token", default=None, help="an admin API key (default: $BILLOW_TOKEN)")
    bt.add_argument("--out", default="-", help="CSV file to write (default: standard output)")
    from billow.conformance import add_arguments as conformance_arguments
    from billow.conformance import run as conformance

    conformance_arguments(sub.add_parser("conformance", help="run the metering conformance suite against any "
                                         "OpenMeter v1 API server (docs/conformance.md)"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        return serve(args)
    if args.command == "keys":
        return keys(args)
    if args.command == "migrate":
        return migrate(args)
    if args.command == "backtest":
        return backtest(args)
    if args.command == "conformance":
        return conformance(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
