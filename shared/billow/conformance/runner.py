"""`billow conformance`: run the scenarios against a URL, print a pass/fail table, exit 1 when any failed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from billow.conformance.http import Client
from billow.conformance.scenarios import SCENARIOS, Ctx, Fail, Skip

PROFILES = {
    "billow": "Billow's stricter behaviour: exact decimals, invalid values and bad batches refused with a 400 naming "
              "the field",
    "openmeter": "OpenMeter's documented behaviour: float64 values (1e-9 relative), invalid values accepted and "
                 "not counted",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the server's base URL, e.g. http://localhost:8888 (its API under /api/v1)")
    p.add_argument("--token", default=os.environ.get("BILLOW_CONFORMANCE_TOKEN"),
                   help="API key sent as `Authorization: Bearer` (default: $BILLOW_CONFORMANCE_TOKEN)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="billow",
                   help="where OpenMeter and Billow differ, whose behaviour to check (default: %(default)s)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long each check waits for usage to become queryable (default: %(default)s)")
    p.add_argument("--only", action="append", metavar="NAME", help="run the scenarios whose name contains NAME "
                   "(repeatable)")
    p.add_argument("--restart-phase", choices=["before", "after"], help="dedup across a restart: run `before`, "
                   "restart the server, then run `after` with the same --state")
    p.add_argument("--state", default="billow-conformance-state.json",
                   help="where the restart phases keep what they sent (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the meters the run made (default: delete them)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    chosen = [s for s in SCENARIOS if not args.only or any(o in s.key for o in args.only)]
    if args.list:
        for s in SCENARIOS:
            print(f"{s.key:<22} {s.title}", file=out)
        return 0
    if not args.url:
        print("billow conformance: --url is required (e.g. --url http://localhost:8888)", file=sys.stderr)
        return 2
    if not chosen:
        print(f"billow conformance: no scenario matches {args.only} (see --list)", file=sys.stderr)
        return 2
    client = Client(args.url.rstrip("/"), args.token)
    problem = _reachable(client)
    if problem:
        print(f"billow conformance: {problem}", file=sys.stderr)
        return 2
    state_path = Path(args.state)
    state: dict[str, object] = {}
    if args.restart_phase == "after":
        if not state_path.exists():
            print(f"billow conformance: --restart-phase after needs {state_path} from the before phase",
                  file=sys.stderr)
            return 2
        state = json.loads(state_path.read_text())
    ctx = Ctx(client=client, run=uuid.uuid4().hex[:8], profile=args.profile, wait_s=args.wait,
              now=datetime.now(UTC), restart_phase=args.restart_phase, state=state)
    print(f"billow conformance against {client.base_url}: profile {args.profile} ({PROFILES[args.profile]}); "
          f"run {ctx.run}, meters conf_{ctx.run}_*", file=out)
    width = max(len(s.key) for s in chosen)
    print(f"{'scenario':<{width}}  result  detail", file=out)
    print(f"{'-' * width}  ------  ------", file=out)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for s in chosen:
        ctx.notes = []
        started = time.monotonic()
        try:
            s.run(ctx)
            result, detail = "PASS", "; ".join(ctx.notes)
        except Fail as exc:
            result, detail = "FAIL", str(exc)
        except Skip as exc:
            result, detail = "SKIP", str(exc)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a dropped connection, an unreadable answer
            result, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        counts[result] += 1
        took = time.monotonic() - started
        print(f"{s.key:<{width}}  {result:<6}  {detail} ({took:.1f} s)".replace("\n", " "), file=out, flush=True)
    if args.restart_phase == "before" and ctx.state:
        state_path.write_text(json.dumps(ctx.state, indent=1))
        print(f"restart phase: state in {state_path}; restart the server and run again with --restart-phase after",
              file=out)
    if not args.keep:
        left = [slug for slug in ctx.created
                if client.request("DELETE", f"/api/v1/meters/{slug}").status not in (200, 204, 404)]
        if left:
            print(f"note: could not delete meters {', '.join(left)}", file=out)
    print(f"{len(chosen)} scenarios: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped",
          file=out)
    return 1 if counts["FAIL"] else 0


def _reachable(client: Client) -> str | None:
    try:
        got = client.request("GET", "/api/v1/meters")
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot reach {client.base_url}: {exc}"
    if got.status in (401, 403):
        return f"{client.base_url} refused the credentials ({got.status}): pass an API key with --token"
    if got.status != 200:
        return f"GET {client.base_url}/api/v1/meters answered {got.brief()}: is this an OpenMeter v1 API?"
    return None
