// These tests run against a live `billow serve` (BILLOW_URL, and BILLOW_API_KEY with `auth: keys`) that has
// the tokens_total meter of tests/sdk/billow.yaml.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { promisify } from "node:util";

import { BillowError, Client, parseExact, type CompleteEvent } from "../src/index.js";

const BASE = process.env.BILLOW_URL ?? "";
const API_KEY = process.env.BILLOW_API_KEY || undefined;
const METER = "tokens_total", FEATURE = "sdk_tokens";
if (!BASE) throw new Error("set BILLOW_URL to a running `billow serve` (see README.md)");

const client = (url = BASE, extra = {}) => new Client({ url, apiKey: API_KEY, backoffMs: 5, ...extra });

/** Raw HTTP for set-up the SDK does not cover (subjects, features, entitlements). */
async function admin(method: string, path: string, body: unknown): Promise<number> {
  const resp = await fetch(BASE + path, { method, body: JSON.stringify(body), headers: {
    "Content-Type": "application/json", ...(API_KEY ? { Authorization: `Bearer ${API_KEY}` } : {}) } });
  await resp.text();
  return resp.status;
}

/** A fresh subject with a metered entitlement to FEATURE: 100 tokens a month. */
async function subject(): Promise<string> {
  const key = `sdk-node-${randomUUID().slice(0, 10)}`;
  assert.equal(await admin("POST", "/api/v1/subjects", [{ key }]), 200);
  await admin("POST", "/api/v1/features", { key: FEATURE, name: "SDK tokens", meterSlug: METER });
  assert.equal(await admin("POST", `/api/v1/subjects/${key}/entitlements`, {
    type: "metered", featureKey: FEATURE, usagePeriod: { interval: "MONTH" }, issueAfterReset: 100 }), 201);
  return key;
}

async function total(subj: string): Promise<string> {
  const { data } = await client().queryMeter(METER, { subject: [subj] });
  return data.length ? data[0].value : "0";
}

const tokens = (v: unknown) => ({ tokens: v, model: "gpt" });

/** Forwards to Billow; the answers to the first `faults` requests are lost (a 503, or with drop a dropped
 * connection). Records each body once Billow has answered it. */
async function proxy(faults = 0, drop = false): Promise<{ url: string; bodies: string[]; close: () => void }> {
  const bodies: string[] = [];
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString();
    const headers = Object.fromEntries(["content-type", "authorization", "accept"].filter((h) => req.headers[h])
      .map((h) => [h, String(req.headers[h])]));
    const upstream = await fetch(BASE + req.url, { method: req.method, headers, body: body || undefined });
    let [status, payload] = [upstream.status, await upstream.text()];
    bodies.push(body);
    if (bodies.length <= faults) {
      if (drop) return void req.socket.destroy();
      [status, payload] = [503, JSON.stringify({ type: "about:blank", title: "Service Unavailable", status: 503, detail: "fault" })];
      res.setHeader("Retry-After", "0");
    }
    res.writeHead(status, { "Content-Type": upstream.headers.get("Content-Type") ?? "application/json" }).end(payload);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, bodies, close: () => server.close() };
}

test("ingest and query are exact, in windows of a time zone", async () => {
  const c = client(), subj = await subject();
  const at = new Date("2026-11-28T23:30:00Z"); // 00:30 on the 29th in Berlin
  await c.ingest({ type: "prompt", subject: subj, data: tokens("0.1"), time: at });
  await c.ingestBatch([{ type: "prompt", subject: subj, data: tokens("0.2"), time: at },
                       { type: "prompt", subject: subj, data: { tokens: 7, model: "o3" }, time: "2026-11-28T22:30:00Z" }]);
  const res = await c.queryMeter(METER, { from: "2026-11-26T23:30:00Z", to: new Date("2026-11-29T23:30:00Z"),
    windowSize: "DAY", windowTimeZone: "Europe/Berlin", subject: [subj], groupBy: ["model"] });
  assert.deepEqual(res.data.map((r) => [r.windowStart, r.groupBy.model, r.value]),
                   [["2026-11-27T23:00:00Z", "o3", "7"], ["2026-11-28T23:00:00Z", "gpt", "0.3"]]);
  const gpt = await c.queryMeter(METER, { subject: [subj], filterGroupBy: { model: "gpt" } });
  assert.deepEqual(gpt.data.map((r) => r.value), ["0.3"]); // 0.1 + 0.2, not 0.30000000000000004
});

test("numbers are parsed as their exact text", () => {
  assert.deepEqual(parseExact('{"a":12345678901234567890.123456789,"b":[-1e-3,0],"s":"x 1.5 \\" 2","t":true}'),
                   { a: "12345678901234567890.123456789", b: ["-1e-3", "0"], s: 'x 1.5 " 2', t: true });
});

test("entitlement value", async () => {
  const c = client(), subj = await subject();
  await c.ingestBatch(["0.1", "0.2"].map((t) => ({ type: "prompt", subject: subj, data: tokens(t) })));
  assert.deepEqual(await c.entitlementValue(subj, FEATURE),
                   { hasAccess: true, balance: "99.7", usage: "0.3", overage: "0", totalAvailableGrantAmount: "100" });
});

test("ingestion receipt reports a resent batch as duplicates", async () => {
  const c = client(), subj = await subject();
  const batch = ["1", "2"].map((t) => c.event({ type: "prompt", subject: subj, data: tokens(t) }));
  const first = await c.ingestBatchWithReceipt(batch);
  assert.deepEqual([first.events, first.accepted, first.duplicates], ["2", "2", []]);
  const again = await c.ingestBatchWithReceipt(batch);
  assert.equal(again.accepted, "0");
  assert.deepEqual(again.duplicates.map((d) => d.id), batch.map((e) => e.id));
  assert.deepEqual(again.digest, first.digest);
  assert.deepEqual(await c.receipt(first.id), first);
  assert.equal(await total(subj), "3"); // stored once
});

test("errors carry the problem", async () => {
  const c = client(), subj = await subject();
  await assert.rejects(c.queryMeter("no_such_meter"), (e: BillowError) =>
    e instanceof BillowError && e.status === 404 && e.title === "Not Found" && e.detail.includes("no_such_meter"));
  await assert.rejects(c.ingestBatch([{ type: "prompt", subject: subj, data: tokens("1") },
                                      { type: "prompt", subject: subj, data: tokens("x") }]),
    (e: BillowError) => e.status === 400 && Array.isArray(e.problem.validationErrors));
  assert.equal(await total(subj), "0"); // all or nothing
});

test("bearer API key", { skip: !API_KEY && "the server runs without auth: keys" }, async () => {
  await assert.rejects(client(BASE, { apiKey: "bk_not_a_key" }).queryMeter(METER),
    (e: BillowError) => e.status === 401 && e.title === "Unauthorized");
});

for (const drop of [false, true]) {
  test(`retries resend the same ids (${drop ? "dropped connection" : "503"})`, async () => {
    const subj = await subject(), p = await proxy(2, drop); // Billow stores the batch, the client never hears so twice
    try {
      await client(p.url).ingestBatch([1, 2].map(() => ({ type: "prompt", subject: subj, data: tokens("1.5") })));
      assert.equal(p.bodies.length, 3);
      assert.equal(new Set(p.bodies).size, 1);
      assert.equal(await total(subj), "3"); // counted once
    } finally {
      p.close();
    }
  });
}

test("retries give up with the last problem", async () => {
  const subj = await subject(), p = await proxy(10);
  try {
    await assert.rejects(client(p.url, { retries: 2 }).ingest({ type: "prompt", subject: subj, data: tokens("1") }),
                         (e: BillowError) => e.status === 503);
    assert.equal(p.bodies.length, 3);
  } finally {
    p.close();
  }
});

test("batcher flushes on size, interval and close", async () => {
  const subj = await subject(), p = await proxy();
  try {
    const batch = client(p.url).batcher({ maxEvents: 3, intervalMs: 60_000 });
    for (let i = 0; i < 7; i++) await batch.add({ type: "prompt", subject: subj, data: tokens("0.5") });
    assert.equal(p.bodies.length, 2); // two full batches; one event waits
    await batch.close();
    assert.equal(p.bodies.length, 3);
    assert.equal(await total(subj), "3.5");

    const timed = client(p.url).batcher({ intervalMs: 100 });
    await timed.add({ type: "prompt", subject: subj, data: tokens("0.5") });
    for (const deadline = Date.now() + 10_000; p.bodies.length < 4 && Date.now() < deadline;) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(p.bodies.length, 4);
    assert.equal(await total(subj), "4");
    await timed.close();
  } finally {
    p.close();
  }
});

test("batcher reports a refused batch", async () => {
  const subj = await subject(), failed: [number, string[]][] = [];
  const batch = client().batcher({ onError: (e, events: CompleteEvent[]) => failed.push([e.status, events.map((ev) => ev.id)]) });
  const bad = await batch.add({ type: "prompt", subject: subj, data: { tokens: "x" } });
  await batch.close();
  assert.deepEqual(failed, [[400, [bad.id]]]);
  const plain = client().batcher();
  await plain.add({ type: "prompt", subject: subj, data: { tokens: "x" } });
  await assert.rejects(plain.close(), (e: BillowError) => e.status === 400 && e.events.length === 1);
});

test("portal token", async (t) => {
  const subj = await subject(), expiresAt = new Date(Math.floor(Date.now() / 1000) * 1000 + 7_200_000);
  let token;
  try {
    token = await client().createPortalToken({ subject: subj, allowedMeterSlugs: [METER], expiresAt });
  } catch (e) {
    if (e instanceof BillowError && e.status === 404) return t.skip("the server has no POST /api/v1/portal/tokens yet");
    throw e;
  }
  assert.deepEqual([token.subject, token.allowedMeterSlugs, token.expired], [subj, [METER], false]);
  assert.ok(token.id && token.token && token.createdAt);
  assert.equal(new Date(token.expiresAt).getTime(), expiresAt.getTime());
});

test("the quick start is the README's and runs", async () => {
  const example = readFileSync("examples/quickstart.mjs", "utf8");
  assert.ok(readFileSync("README.md", "utf8").includes("```js\n" + example + "```"), "README differs from examples/quickstart.mjs");
  const { stdout } = await promisify(execFile)(process.execPath, ["examples/quickstart.mjs"]);
  assert.equal(stdout, "gpt 0.3\n"); // fixed ids: a second run against the same server prints the same
});
