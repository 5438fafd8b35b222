"""Issue 18 item 9: what a stage costs at idle. Non-prod stages run MSK provisioned (2 x kafka.t3.small, IAM on 9098;
`-c msk=serverless` switches back) and an MSK trigger without provisioned pollers; prod keeps MSK Serverless and its
pollers. infra/costs.py prices the synthesized template resource by resource, and docs/deploy.md prints exactly what
it computes, per stage."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import Synth, refs, synthesize

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "dev"}, lambda_assets)


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "account": "123456789012"},
                      lambda_assets)


def kafka_mapping(s: Synth) -> dict[str, Any]:
    (esm,) = [m for m in s.of_type("AWS::Lambda::EventSourceMapping").values() if "Topics" in m["Properties"]]
    return dict(esm["Properties"])


# --- MSK --------------------------------------------------------------------------------------------------

def test_dev_runs_msk_provisioned_on_two_t3_small_brokers_with_iam_only(dev: Synth) -> None:
    assert not dev.of_type("AWS::MSK::ServerlessCluster")
    (cluster_id, cluster), = dev.of_type("AWS::MSK::Cluster").items()
    p = cluster["Properties"]
    assert p["NumberOfBrokerNodes"] == 2 and p["BrokerNodeGroupInfo"]["InstanceType"] == "kafka.t3.small"
    assert p["ClientAuthentication"]["Sasl"] == {"Iam": {"Enabled": True}}  # SASL/IAM on 9098, as MSK Serverless
    assert p["ClientAuthentication"].get("Unauthenticated", {"Enabled": False}) == {"Enabled": False}
    assert p["EncryptionInfo"]["EncryptionInTransit"] == {"ClientBroker": "TLS", "InCluster": True}
    app_subnets = {dev.stack.resolve(sn.node.default_child.logical_id) for sn in dev.stack.network.vpc.private_subnets}
    assert refs(p["BrokerNodeGroupInfo"]["ClientSubnets"]) == app_subnets  # one broker per AZ
    assert refs(p["BrokerNodeGroupInfo"]["SecurityGroups"]) == {dev.logical_id(dev.stack.streaming.security_group)}
    assert 1 <= p["BrokerNodeGroupInfo"]["StorageInfo"]["EBSStorageInfo"]["VolumeSize"] <= 20
    assert p["LoggingInfo"]["BrokerLogs"]["CloudWatchLogs"]["Enabled"] is True
    # the functions, the trigger and the IAM grants use the cluster the same way as MSK Serverless's
    assert kafka_mapping(dev)["EventSourceArn"] == {"Ref": cluster_id}
    assert dev.stack.resolve(dev.stack.streaming.cluster_arn) == {"Ref": cluster_id}
    (brokers,) = [v for v in dev.of_type("Custom::AWS").values() if "getBootstrapBrokers" in str(v)]
    assert cluster_id in refs(brokers["Properties"])


def test_msk_serverless_is_a_context_option_and_stays_prods(prod: Synth, tmp_path_factory: pytest.TempPathFactory,
                                                            lambda_assets: Any) -> None:
    assert prod.of_type("AWS::MSK::ServerlessCluster") and not prod.of_type("AWS::MSK::Cluster")
    serverless = synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "dev", "msk": "serverless"}, lambda_assets)
    (cluster_id,) = serverless.of_type("AWS::MSK::ServerlessCluster")
    assert not serverless.of_type("AWS::MSK::Cluster")
    assert kafka_mapping(serverless)["EventSourceArn"] == {"Fn::GetAtt": [cluster_id, "Arn"]}
    from aws_cdk import App

    from infra.app import Config

    with pytest.raises(ValueError, match="msk 'kafka' must be serverless or provisioned"):
        Config.from_app(App(context={"msk": "kafka"}))


# --- the MSK trigger --------------------------------------------------------------------------------------

def test_dev_msk_trigger_has_no_provisioned_pollers_and_still_retries_until_the_store_is_back(dev: Synth) -> None:
    """On-demand mode (no ProvisionedPollerConfig): Lambda retries a failing batch until it succeeds or its records
    leave the topic; MaximumRetryAttempts and MaximumRecordAge default to -1 and there is no on-failure destination,
    so a usage-store outage blocks the partition as in prod (docs/deploy.md, MSK trigger)."""
    p = kafka_mapping(dev)
    assert "ProvisionedPollerConfig" not in p
    assert p.get("MaximumRetryAttempts", -1) == -1 and p.get("MaximumRecordAgeInSeconds", -1) == -1
    assert "DestinationConfig" not in p and p.get("BisectBatchOnFunctionError", False) is False
    assert p["StartingPosition"] == "TRIM_HORIZON" and p["BatchSize"] == 1000


def test_prod_msk_trigger_keeps_its_provisioned_pollers_and_explicit_unlimited_retries(prod: Synth) -> None:
    p = kafka_mapping(prod)
    assert p["ProvisionedPollerConfig"]["MinimumPollers"] == 1
    assert p["MaximumRetryAttempts"] == -1 and "DestinationConfig" not in p


# --- the cost table ---------------------------------------------------------------------------------------

def test_every_resource_type_of_every_stage_is_priced_or_free_at_idle(dev: Synth, prod: Synth) -> None:
    from infra.costs import FREE_AT_IDLE, PRICED, idle_cost

    assert not set(PRICED) & set(FREE_AT_IDLE)
    seen: set[str] = set()
    priced_somewhere: set[str] = set()
    for s in (dev, prod):
        types = {r["Type"] for r in s.resources.values()}
        assert types <= set(PRICED) | set(FREE_AT_IDLE), types - set(PRICED) - set(FREE_AT_IDLE)
        lines = idle_cost(s.template.to_json())
        assert {line.resource_type for line in lines} <= types & set(PRICED)
        assert all(line.monthly > 0 for line in lines)
        seen |= types
        priced_somewhere |= {line.resource_type for line in lines}
    # and the other way round: nothing in the table that no stage deploys (MSK Serverless is prod's, the provisioned
    # cluster dev's, provisioned pollers prod's)
    assert set(FREE_AT_IDLE) <= seen, set(FREE_AT_IDLE) - seen
    assert set(PRICED) == priced_somewhere, set(PRICED) - priced_somewhere


def test_idle_cost_lines_follow_the_template(dev: Synth, prod: Synth) -> None:
    from infra.costs import idle_cost

    def by_item(s: Synth) -> dict[str, Decimal]:
        return {line.item: line.monthly for line in idle_cost(s.template.to_json())}

    d, p = by_item(dev), by_item(prod)
    assert d["NAT gateway"] == Decimal("32.85") and p["NAT gateway"] == Decimal("65.70")  # 1 vs 2 x $0.045 x 730 h
    assert d["MSK brokers"] == Decimal("66.576")  # 2 x kafka.t3.small $0.0456 x 730 h
    assert p["MSK Serverless cluster"] == Decimal("547.50") and p["MSK Serverless partitions"] == Decimal("4.380")
    assert "MSK brokers" not in p and "MSK Serverless cluster" not in d
    pollers = "MSK trigger provisioned pollers (price not confirmed)"
    assert p[pollers] == Decimal("135.05") and pollers not in d  # 1 EPU x $0.185 x 730 h
    assert all(isinstance(v, Decimal) for v in (*d.values(), *p.values()))  # money is never a float


def test_the_docs_print_the_generated_idle_cost_per_stage(dev: Synth, prod: Synth) -> None:
    from infra.costs import BEGIN, END, idle_cost, render

    text = DOCS.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    expected = render({"dev": idle_cost(dev.template.to_json()), "prod": idle_cost(prod.template.to_json())})
    assert section.strip() == expected.strip(), "run `.venv/bin/python -m infra.costs --write` and review the diff"
