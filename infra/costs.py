"""What a stage costs at idle (no traffic; the schedules' ticks only), priced from its synthesized CloudFormation template
at us-east-1 on-demand list prices, a month being 730 hours. Issue 18 item 9.

Every resource type a stage deploys is either PRICED (a function of the resource's properties: how many brokers, which
ACU minimum, how many subnets) or FREE_AT_IDLE (with the reason). tests/infra/test_costs.py fails when a stage
deploys a type in neither, when an entry is in neither stage's template, and when docs/deploy.md (between BEGIN and
END) is not exactly what `render` makes of the dev and prod templates:

    .venv/bin/python -m infra.costs            # print the section
    .venv/bin/python -m infra.costs --write    # put it into docs/deploy.md

The prices are list prices as read from the AWS pricing pages named next to each (check them before relying on the
numbers; they change); money is Decimal throughout."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

HOURS = Decimal(730)  # hours in a month, as AWS's pricing examples count them

# us-east-1 on-demand list prices, per hour unless named otherwise.
MSK_SERVERLESS_CLUSTER_HOUR = Decimal("0.75")  # aws.amazon.com/msk/pricing: MSK Serverless, per cluster-hour
MSK_SERVERLESS_PARTITION_HOUR = Decimal("0.0015")  # same page: per partition-hour
MSK_BROKER_HOUR = {"kafka.t3.small": Decimal("0.0456"),  # aws.amazon.com/msk/pricing: provisioned, per broker-hour
                   "kafka.m7g.large": Decimal("0.204")}
MSK_STORAGE_GB_MONTH = Decimal("0.10")  # same page: provisioned broker storage, per GB-month
# aws.amazon.com/lambda/pricing: provisioned mode for event source mappings bills event poller units (EPU) per hour.
# NOT CONFIRMED here (the page could not be read); this is the higher of the figures seen, one EPU per minimum poller.
LAMBDA_EPU_HOUR = Decimal("0.185")
AURORA_ACU_HOUR = Decimal("0.12")  # aws.amazon.com/rds/aurora/pricing: Serverless v2, Aurora Standard, per ACU-hour
RDS_PROXY_ACU_HOUR = Decimal("0.015")  # aws.amazon.com/rds/proxy/pricing: per ACU-hour of the Serverless v2 target
RDS_PROXY_MIN_ACU = Decimal(8)  # same page: a Serverless v2 target is billed at least 8 ACUs
NAT_GATEWAY_HOUR = Decimal("0.045")  # aws.amazon.com/vpc/pricing: NAT gateway-hour (+ $0.045 per GB processed)
PUBLIC_IPV4_HOUR = Decimal("0.005")  # same page: every public IPv4 address (the NAT gateways' Elastic IPs)
INTERFACE_ENDPOINT_AZ_HOUR = Decimal("0.01")  # aws.amazon.com/privatelink/pricing: interface endpoint per AZ-hour
KMS_KEY_MONTH = Decimal("1.00")  # aws.amazon.com/kms/pricing: customer-managed key per month (+$1 per rotation, twice)
SECRET_MONTH = Decimal("0.40")  # aws.amazon.com/secrets-manager/pricing: per secret per month
ALARM_METRIC_MONTH = Decimal("0.10")  # aws.amazon.com/cloudwatch/pricing: standard alarm, per metric (math: each)

BEGIN = "<!-- idle-cost:begin (generated: .venv/bin/python -m infra.costs --write; tests/infra/test_costs.py) -->"
END = "<!-- idle-cost:end -->"


@dataclass(frozen=True)
class Line:
    resource_type: str
    item: str
    quantity: Decimal
    unit: str  # what one of `quantity` costs, as text
    monthly: Decimal


Template = dict[str, Any]
Resource = dict[str, Any]
Pricer = Callable[[str, Resource, Template], Iterable[Line]]


def _hourly(resource_type: str, item: str, quantity: Decimal | int, price: Decimal, unit: str) -> Line:
    q = Decimal(quantity)
    return Line(resource_type, item, q, f"${price} per {unit}-hour", q * price * HOURS)


def _monthly(resource_type: str, item: str, quantity: Decimal | int, price: Decimal, unit: str) -> Line:
    q = Decimal(quantity)
    return Line(resource_type, item, q, f"${price} per {unit}-month", q * price)


def _msk_serverless(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    yield _hourly(t, "MSK Serverless cluster", 1, MSK_SERVERLESS_CLUSTER_HOUR, "cluster")
    # the namespace topic's partitions: the migrate function creates it with BILLOW_KAFKA_PARTITIONS
    partitions = [int(v["Properties"]["Environment"]["Variables"]["BILLOW_KAFKA_PARTITIONS"])
                  for v in tpl["Resources"].values() if v["Type"] == "AWS::Lambda::Function"
                  and "BILLOW_KAFKA_PARTITIONS" in v["Properties"].get("Environment", {}).get("Variables", {})]
    yield _hourly(t, "MSK Serverless partitions", sum(partitions), MSK_SERVERLESS_PARTITION_HOUR, "partition")


def _msk_provisioned(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    p = r["Properties"]
    brokers, kind = p["NumberOfBrokerNodes"], p["BrokerNodeGroupInfo"]["InstanceType"]
    yield _hourly(t, "MSK brokers", brokers, MSK_BROKER_HOUR[kind], f"{kind} broker")
    gb = brokers * p["BrokerNodeGroupInfo"]["StorageInfo"]["EBSStorageInfo"]["VolumeSize"]
    yield _monthly(t, "MSK broker storage", gb, MSK_STORAGE_GB_MONTH, "GB")


def _event_source_mapping(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    pollers = r["Properties"].get("ProvisionedPollerConfig", {}).get("MinimumPollers")
    if pollers:  # on-demand mode (and SQS triggers without provisioned mode) cost nothing at idle
        yield _hourly(t, "MSK trigger provisioned pollers (price not confirmed)", pollers, LAMBDA_EPU_HOUR, "EPU")


def _cluster_of(r: Resource, tpl: Template) -> Resource:
    ref = r["Properties"]["DBClusterIdentifier"]["Ref"]
    return dict(tpl["Resources"][ref])


def _aurora_instance(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    assert r["Properties"]["DBInstanceClass"] == "db.serverless", "only Serverless v2 instances are priced"
    acu = Decimal(str(_cluster_of(r, tpl)["Properties"]["ServerlessV2ScalingConfiguration"]["MinCapacity"]))
    yield _hourly(t, "Aurora Serverless v2 writer at its minimum", acu, AURORA_ACU_HOUR, "ACU")


def _rds_proxy(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    clusters = [v for v in tpl["Resources"].values() if v["Type"] == "AWS::RDS::DBCluster"]
    acu = max([RDS_PROXY_MIN_ACU, *(Decimal(str(c["Properties"]["ServerlessV2ScalingConfiguration"]["MinCapacity"]))
                                    for c in clusters)])
    yield _hourly(t, "RDS Proxy (billed at 8 ACU minimum)", acu, RDS_PROXY_ACU_HOUR, "ACU")


def _interface_endpoint(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    p = r["Properties"]
    if p.get("VpcEndpointType") == "Interface":  # gateway endpoints (S3) are free
        yield _hourly(t, "Interface VPC endpoints (per AZ)", len(p["SubnetIds"]), INTERFACE_ENDPOINT_AZ_HOUR, "AZ")


def _alarm(t: str, r: Resource, tpl: Template) -> Iterable[Line]:
    p = r["Properties"]
    metrics = 1 if "MetricName" in p else sum(1 for m in p.get("Metrics", []) if "MetricStat" in m)
    yield _monthly(t, "CloudWatch alarm metrics", metrics, ALARM_METRIC_MONTH, "alarm metric")


PRICED: dict[str, Pricer] = {
    "AWS::MSK::ServerlessCluster": _msk_serverless,
    "AWS::MSK::Cluster": _msk_provisioned,
    "AWS::Lambda::EventSourceMapping": _event_source_mapping,
    "AWS::RDS::DBInstance": _aurora_instance,
    "AWS::RDS::DBProxy": _rds_proxy,
    "AWS::EC2::NatGateway": lambda t, r, tpl: [_hourly(t, "NAT gateway", 1, NAT_GATEWAY_HOUR, "gateway")],
    "AWS::EC2::EIP": lambda t, r, tpl: [_hourly(t, "Public IPv4 address (NAT)", 1, PUBLIC_IPV4_HOUR, "address")],
    "AWS::EC2::VPCEndpoint": _interface_endpoint,
    "AWS::KMS::Key": lambda t, r, tpl: [_monthly(t, "KMS key (alarm topic)", 1, KMS_KEY_MONTH, "key")],
    "AWS::SecretsManager::Secret": lambda t, r, tpl: [_monthly(t, "Secrets Manager secrets", 1, SECRET_MONTH, "secret")],
    "AWS::CloudWatch::Alarm": _alarm,
}

_PER_USE = "pay per use: nothing without traffic"
FREE_AT_IDLE: dict[str, str] = {
    "AWS::Lambda::Function": "per request and GB-second; the schedules' ~47k ticks a month cost cents",
    "AWS::Lambda::LayerVersion": "free", "AWS::Lambda::Permission": "free", "AWS::Lambda::Version": "free",
    "AWS::ApiGatewayV2::Api": _PER_USE + " (per request)", "AWS::ApiGatewayV2::Authorizer": "free",
    "AWS::ApiGatewayV2::Integration": "free", "AWS::ApiGatewayV2::Route": "free", "AWS::ApiGatewayV2::Stage": "free",
    "AWS::SQS::Queue": _PER_USE + " (per request; the ticks stay in the free tier)", "AWS::SQS::QueuePolicy": "free",
    "AWS::Scheduler::Schedule": "per invocation; the ticks stay in the free tier (14 million a month)",
    "AWS::SNS::Topic": _PER_USE, "AWS::SNS::TopicPolicy": "free",
    "AWS::S3::Bucket": _PER_USE + " (per GB stored and per request)", "AWS::S3::BucketPolicy": "free",
    "AWS::Logs::LogGroup": _PER_USE + " (per GB ingested and stored)",
    "AWS::EC2::FlowLog": _PER_USE + " (rejected traffic only, per GB logged)",
    "AWS::RDS::DBCluster": _PER_USE + " (storage and I/O; the instance is priced under AWS::RDS::DBInstance)",
    "AWS::RDS::DBProxyTargetGroup": "free", "AWS::RDS::DBSubnetGroup": "free",
    "AWS::RDS::DBClusterParameterGroup": "free",
    "AWS::SecretsManager::ResourcePolicy": "free", "AWS::SecretsManager::SecretTargetAttachment": "free",
    "AWS::SecretsManager::RotationSchedule": "free (the rotation function runs once a month)",
    "AWS::Serverless::Application": "the rotation function's nested stack: per use",
    "AWS::EC2::VPC": "free", "AWS::EC2::Subnet": "free", "AWS::EC2::RouteTable": "free", "AWS::EC2::Route": "free",
    "AWS::EC2::SubnetRouteTableAssociation": "free", "AWS::EC2::InternetGateway": "free",
    "AWS::EC2::VPCGatewayAttachment": "free", "AWS::EC2::SecurityGroup": "free",
    "AWS::EC2::SecurityGroupIngress": "free", "AWS::EC2::SecurityGroupEgress": "free",
    "AWS::IAM::Role": "free", "AWS::IAM::Policy": "free",
    "Custom::AWS": "a Lambda-backed custom resource: runs at deploy only",
    "Custom::Trigger": "runs the migrate function at deploy only",
    "Custom::S3AutoDeleteObjects": "runs at stack deletion only",
}


def idle_cost(template: Template) -> list[Line]:
    """The template's idle cost, one line per item (resources of the same item summed), in PRICED's order."""
    found: dict[str, Line] = {}
    order = {t: i for i, t in enumerate(PRICED)}
    resources = sorted(template["Resources"].items(), key=lambda kv: (order.get(kv[1]["Type"], len(order)), kv[0]))
    for _, resource in resources:
        pricer = PRICED.get(resource["Type"])
        for line in pricer(resource["Type"], resource, template) if pricer else ():
            if line.monthly <= 0:
                continue
            seen = found.get(line.item)
            found[line.item] = line if seen is None else Line(
                line.resource_type, line.item, seen.quantity + line.quantity, line.unit, seen.monthly + line.monthly)
    return list(found.values())


def total(lines: Iterable[Line]) -> Decimal:
    return sum((line.monthly for line in lines), Decimal(0))


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def render(stages: dict[str, list[Line]]) -> str:
    """The docs section: per stage, one line per item, and the total."""
    out: list[str] = []
    for stage, lines in stages.items():
        out += [f"**{stage}** at idle: **{_money(total(lines))} a month**", "",
                "| item | quantity | list price | per month |", "|---|---:|---|---:|"]
        out += [f"| {line.item} | {line.quantity.normalize():f} | {line.unit} | {_money(line.monthly)} |"
                for line in lines]
        out += [f"| **total** | | | **{_money(total(lines))}** |", ""]
    return "\n".join(out).strip() + "\n"


def _synth_template(context: dict[str, str]) -> Template:  # pragma: no cover - exercised by `make`-style use
    from aws_cdk import App
    from aws_cdk.assertions import Template as CdkTemplate

    from infra.app import build_app

    _, stack = build_app(App(context=context))
    return dict(CdkTemplate.from_stack(stack).to_json())


def stage_costs() -> dict[str, list[Line]]:  # pragma: no cover - synthesizes (tests use their own fixtures)
    return {"dev": idle_cost(_synth_template({"stage": "dev"})),
            "prod": idle_cost(_synth_template({"stage": "prod", "account": "123456789012"}))}


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a developer's command
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the section in docs/deploy.md")
    args = parser.parse_args(argv)
    section = render(stage_costs())
    if not args.write:
        print(section, end="")
        return
    docs = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
    text = docs.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")
    print(f"{docs}: idle cost section updated")


if __name__ == "__main__":  # pragma: no cover
    main()
