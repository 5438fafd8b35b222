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
    try:
        done = migrate_all(settings)
    except SchemaNotCurrent as exc:
        print(f"billow: {exc}", file=sys.stderr)
        return 2
    print(f"billow: meta database at schema revision {done['meta']}; usage store: {done['usage']}", flush=True)
    return 0


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
    if args.command == "conformance":
        return conformance(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
