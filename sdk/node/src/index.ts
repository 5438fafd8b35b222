// Client for Billow's OpenMeter-compatible v1 API: ingest CloudEvents (one, a batch, or through a Batcher),
// query meters, check entitlement values and create customer-portal tokens. No runtime dependencies (fetch).
//
// Numbers: every JSON number in a response is exposed as its exact decimal text (a string, e.g. "0.3"), never
// a float; use Number(x) where a float will do, or a decimal library. Send exact decimals in event data as
// strings ("0.1"): Billow's meters read numeric strings exactly.

import { randomUUID } from "node:crypto";

export interface CloudEvent {
  type: string;
  subject: string;
  data?: Record<string, unknown>;
  id?: string; // default: a new UUID
  source?: string; // default: the client's source
  time?: Date | string; // default: now
  specversion?: string;
}

/** A CloudEvent with its id, source, time and specversion fixed. */
export type CompleteEvent = Required<Omit<CloudEvent, "time">> & { time: string };

export interface MeterQuery {
  from?: Date | string;
  to?: Date | string;
  windowSize?: "MINUTE" | "HOUR" | "DAY" | "MONTH";
  windowTimeZone?: string; // IANA, e.g. "Europe/Berlin"
  subject?: string[];
  groupBy?: string[];
  filterGroupBy?: Record<string, string>;
}

export interface MeterQueryRow {
  value: string; // exact decimal text
  windowStart: string;
  windowEnd: string;
  subject: string | null;
  customerId?: string;
  groupBy: Record<string, string | null>;
}

export interface MeterQueryResult {
  from?: string;
  to?: string;
  windowSize?: string;
  data: MeterQueryRow[];
}

export interface EntitlementValue {
  hasAccess: boolean;
  balance?: string;
  usage?: string;
  overage?: string;
  totalAvailableGrantAmount?: string;
  config?: string;
}

export interface PortalTokenRequest {
  subject: string;
  allowedMeterSlugs?: string[];
  expiresAt?: Date | string;
}

export interface PortalToken {
  id: string;
  subject: string;
  token: string;
  expiresAt: string;
  allowedMeterSlugs: string[];
  createdAt: string;
  expired: boolean;
}

/** Billow's ingestion receipt for a batch (`Prefer: return=representation`); counts are exact decimal text. */
export interface IngestReceipt {
  id: string; // for receipt(id)
  ingestedAt: string;
  events: string;
  accepted: string;
  duplicates: { source: string; id: string }[]; // already stored, or repeated in the batch: a resend lists them all
  digest: { events: string; hash: string }; // the same for a resent batch
  ignored?: { source: string; id: string }[];
}

export interface ClientOptions {
  url: string; // e.g. "http://127.0.0.1:8888"
  apiKey?: string; // a bk_... key, sent as `Authorization: Bearer`
  source?: string; // CloudEvents source of events made here (default "billow-sdk-node")
  retries?: number; // for 429, 503 and connection errors (default 4)
  backoffMs?: number; // first wait, doubling with jitter (default 200)
  maxBackoffMs?: number; // longest wait, also caps Retry-After (default 5000)
  timeoutMs?: number; // per attempt (default 30000)
}

/** A request Billow refused, with its RFC 7807 problem; status 0 when the connection kept failing. */
export class BillowError extends Error {
  readonly type: string;
  readonly instance?: string;
  events: CompleteEvent[] = []; // set by a Batcher: the batch that failed

  constructor(readonly status: number, readonly title: string, readonly detail: string,
              readonly problem: Record<string, unknown> = {}) {
    super(`${status} ${title}: ${detail}`);
    this.name = "BillowError";
    this.type = typeof problem.type === "string" ? problem.type : "about:blank";
    this.instance = typeof problem.instance === "string" ? problem.instance : undefined;
  }
}

/** JSON.parse, except that every number comes back as its decimal text. */
export function parseExact(text: string): unknown {
  return JSON.parse(text.replace(/"(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*/g, (m) => (m[0] === '"' ? m : `"${m}"`)));
}

const iso = (t: Date | string): string => (t instanceof Date ? t.toISOString() : t);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Client {
  private readonly url: string;
  private readonly opts: Required<Omit<ClientOptions, "apiKey">> & { apiKey?: string };

  constructor(options: ClientOptions) {
    this.opts = { source: "billow-sdk-node", retries: 4, backoffMs: 200, maxBackoffMs: 5000, timeoutMs: 30000, ...options };
    this.url = options.url.replace(/\/+$/, "");
  }

  /** Fixes a new event's id (a UUID) and time (now), so retries and batching keep them. */
  event(e: CloudEvent): CompleteEvent {
    return { specversion: "1.0", id: e.id ?? randomUUID(), source: e.source ?? this.opts.source, type: e.type,
             subject: e.subject, time: iso(e.time ?? new Date()), data: e.data ?? {} };
  }

  async ingest(e: CloudEvent): Promise<void> {
    await this.call("POST", "/api/v1/events", {}, [], this.event(e), "application/cloudevents+json");
  }

  /** All or nothing: Billow stores every event of the batch or, if one is invalid, none. */
  async ingestBatch(events: CloudEvent[]): Promise<void> {
    await this.call("POST", "/api/v1/events", {}, [], events.map((e) => this.event(e)), "application/cloudevents-batch+json");
  }

  /** ingestBatch, answered with Billow's ingestion receipt (`Prefer: return=representation`). */
  async ingestBatchWithReceipt(events: CloudEvent[]): Promise<IngestReceipt> {
    return (await this.call("POST", "/api/v1/events", {}, [], events.map((e) => this.event(e)),
      "application/cloudevents-batch+json", true, { Prefer: "return=representation" })) as IngestReceipt;
  }

  /** An ingestion receipt by id (Billow). */
  async receipt(id: string): Promise<IngestReceipt> {
    return (await this.call("GET", "/api/v1/events/receipts/{receiptId}", { receiptId: id }, [])) as IngestReceipt;
  }

  batcher(options: BatcherOptions = {}): Batcher {
    return new Batcher(this, options);
  }

  async queryMeter(slug: string, q: MeterQuery = {}): Promise<MeterQueryResult> {
    const params: [string, string][] = [];
    for (const [k, v] of [["from", q.from], ["to", q.to], ["windowSize", q.windowSize], ["windowTimeZone", q.windowTimeZone]] as const) {
      if (v !== undefined) params.push([k, iso(v)]);
    }
    for (const s of q.subject ?? []) params.push(["subject", s]);
    for (const g of q.groupBy ?? []) params.push(["groupBy", g]);
    for (const [k, v] of Object.entries(q.filterGroupBy ?? {})) params.push([`filterGroupBy[${k}]`, v]);
    return (await this.call("GET", "/api/v1/meters/{meterIdOrSlug}/query", { meterIdOrSlug: slug }, params)) as MeterQueryResult;
  }

  async entitlementValue(subject: string, featureKey: string, at?: Date | string): Promise<EntitlementValue> {
    return (await this.call("GET", "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value",
      { subjectIdOrKey: subject, entitlementIdOrFeatureKey: featureKey }, at ? [["time", iso(at)]] : [])) as EntitlementValue;
  }

  /** Not retried after a lost connection: the server may have made the token already. */
  async createPortalToken(req: PortalTokenRequest): Promise<PortalToken> {
    const body = { ...req, ...(req.expiresAt ? { expiresAt: iso(req.expiresAt) } : {}) };
    return (await this.call("POST", "/api/v1/portal/tokens", {}, [], body, "application/json", false)) as PortalToken;
  }

  private async call(method: string, template: string, pathParams: Record<string, string>, params: [string, string][],
                     body?: unknown, contentType = "application/json", idempotent = true,
                     extraHeaders: Record<string, string> = {}): Promise<unknown> {
    const path = template.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(pathParams[name]));
    const query = params.length ? `?${new URLSearchParams(params)}` : "";
    const headers: Record<string, string> = { Accept: "application/json", "User-Agent": "billow-sdk-node", ...extraHeaders };
    if (body !== undefined) headers["Content-Type"] = contentType;
    if (this.opts.apiKey) headers.Authorization = `Bearer ${this.opts.apiKey}`;
    const payload = body === undefined ? undefined : JSON.stringify(body); // encoded once: retries resend the same ids
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= this.opts.retries;
      let status: number, text: string, retryAfter: string | null;
      try {
        const resp = await fetch(this.url + path + query, { method, headers, body: payload,
                                                            signal: AbortSignal.timeout(this.opts.timeoutMs) });
        [status, text, retryAfter] = [resp.status, await resp.text(), resp.headers.get("Retry-After")];
      } catch (err) {
        if (!idempotent || last) {
          throw new BillowError(0, "Connection failed", String((err as Error).cause ?? err));
        }
        await this.backoff(attempt, null);
        continue;
      }
      if (status < 300) return text ? parseExact(text) : undefined;
      if ((status === 429 || status === 503) && !last) {
        await this.backoff(attempt, retryAfter);
        continue;
      }
      throw problem(status, text);
    }
  }

  private backoff(attempt: number, retryAfter: string | null): Promise<void> {
    let ms = Math.min(this.opts.maxBackoffMs, this.opts.backoffMs * 2 ** attempt) * (0.5 + Math.random() / 2);
    if (retryAfter && /^\d+$/.test(retryAfter)) ms = Math.min(Number(retryAfter) * 1000, this.opts.maxBackoffMs);
    return sleep(ms);
  }
}

function problem(status: number, text: string): BillowError {
  let doc: unknown;
  try {
    doc = parseExact(text);
  } catch {
    doc = undefined;
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) return new BillowError(status, "HTTP error", text);
  const p = doc as Record<string, unknown>;
  return new BillowError(status, String(p.title ?? "HTTP error"), String(p.detail ?? ""), p);
}

export interface BatcherOptions {
  maxEvents?: number; // a batch goes out when this many events wait (default 500)
  intervalMs?: number; // and at least this often (default 1000)
  /** Gets a batch that still failed after the retries. Without it, the next flush() or close() throws the
   * BillowError, its events in `error.events`. */
  onError?: (error: BillowError, events: CompleteEvent[]) => void;
}

/** Buffers events and sends them in batches: on size, on interval and on close(). One batch in flight at a time. */
export class Batcher {
  private buf: CompleteEvent[] = [];
  private failed?: BillowError;
  private closed = false;
  private sending: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
  private readonly maxEvents: number;

  constructor(private readonly client: Client, private readonly options: BatcherOptions = {}) {
    this.maxEvents = options.maxEvents ?? 500;
    this.timer = setInterval(() => void this.send(), options.intervalMs ?? 1000);
    this.timer.unref();
  }

  /** Buffers an event (its id and time fixed now) and returns it; when that fills a batch, resolves once it is sent. */
  async add(e: CloudEvent): Promise<CompleteEvent> {
    if (this.closed) throw new Error("the batcher is closed");
    const event = this.client.event(e);
    this.buf.push(event);
    if (this.buf.length >= this.maxEvents) await this.send();
    return event;
  }

  async flush(): Promise<void> {
    await this.send();
    const failed = this.failed;
    this.failed = undefined;
    if (failed) throw failed;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.flush();
  }

  private send(): Promise<void> {
    this.sending = this.sending.then(async () => {
      while (this.buf.length) {
        const batch = this.buf.splice(0, this.maxEvents);
        try {
          await this.client.ingestBatch(batch);
        } catch (err) {
          const error = err instanceof BillowError ? err : new BillowError(0, "Send failed", String(err));
          error.events = batch;
          try {
            if (!this.options.onError) throw error;
            this.options.onError(error, batch);
          } catch {
            this.failed ??= error; // never an unhandled rejection from the interval timer
          }
        }
      }
    });
    return this.sending;
  }
}
