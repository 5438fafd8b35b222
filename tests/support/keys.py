"""API keys made as an operator makes them: the `billow keys create` CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BILLOW = str(Path(sys.executable).with_name("billow"))


def make_key(data: Path, config: Path, namespace: str, *scopes: str) -> tuple[str, str]:
    """(key id, token) of a new key for `namespace` with `scopes`."""
    args = [BILLOW, "keys", "--data-dir", str(data), "--config", str(config), "create", "--name", f"{namespace} key",
            "--namespace", namespace]
    for s in scopes:
        args += ["--scope", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    token = re.search(r"token \(shown once, store it now\): (\S+)", out)
    key_id = re.search(r"created API key (\S+)", out)
    assert token and key_id, out
    return key_id.group(1), token.group(1)
