"""`billow` command line: `billow serve` runs the embedded host."""

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
    print(f"billow: ready, listening on http://{host}:{port} (API at http://{host}:{port}/api/v1, "
          "auth: off in this embedded default — do not expose this port)", flush=True)
    server.serve_forever()
    server.httpd.server_close()
    server.close()
    print("billow: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="billow", description="Billow usage metering and billing engine")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run Billow in one local process on embedded engines")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8888)
    s.add_argument("--data-dir", default=None, help="where data is kept across restarts (default .billow)")
    s.add_argument("--config", default=None, help="billow.yaml: namespace, meters, stores")
    s.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
