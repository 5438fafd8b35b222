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


@pytest.fixture(scope="session")
def host_assets(lambda_assets: tuple[Path, Path, Any]) -> tuple[Path, Path, Any]:
    """The same assets built for this machine's architecture, for tests that import the handlers from the layer with
    this machine's Python: an arm64 layer's compiled extensions (msgspec, confluent-kafka, ...) cannot load on
    x86_64, and not every one has a pure-Python fallback. The same lockfile, so the same packages as the arm64 layer."""
    import platform

    from layers.build import build

    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    return lambda_assets if arch == "arm64" else build(arch)
