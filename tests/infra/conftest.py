"""jsii starts a Node process per Python process and every synthesis costs seconds, so each test module
synthesizes once (module-scoped fixtures) and the Lambda assets are built once per session
(layers/build.py caches the dependencies layer by lockfile hash; a cold build downloads wheels from PyPI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@pytest.fixture(scope="session")
def lambda_assets() -> tuple[Path, Path, Any]:
    from layers.build import build

    return build("arm64")
