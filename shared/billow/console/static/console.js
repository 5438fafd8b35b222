// Billow operator console: meters and their usage, customers (subscriptions, balances, invoices), the pricing lab
// (backtests) and LLM margin, read from this origin's API with an admin API key. The key is kept in sessionStorage
// (this tab only) and sent only as `Authorization: Bearer`. No framework, no build step: charts are SVG drawn here.
// Every number shown is the API's own text (exact decimals are never rounded through floats).
"use strict";

(() => {
  const KEY = "billow.console.key";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY) || "";

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  // Meter values are JSON numbers: keep each number's source text instead of rounding it to a float.
  function parseExact(text) {
    return JSON.parse(text, (k, value, ctx) =>
      typeof value === "number" ? (ctx && typeof ctx.source === "string" ? ctx.source : String(value)) : value);
  }

  async function api(path, options = {}) {
    const headers = {Accept: options.accept || "application/json"};
    if (key) headers.Authorization = "Bearer " + key;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {method: options.method || "GET", headers, cache: "no-store", credentials: "omit",
                                    referrerPolicy: "no-referrer",
                                    body: options.body === undefined ? undefined : JSON.stringify(options.body)});
    const text = await resp.text();
    if (!resp.ok) {
      let detail = text;
      try { detail = JSON.parse(text).detail || text; } catch (e) { /* not JSON */ }
      throw new ApiError(resp.status, detail);
    }
    if (options.accept === "text/csv") return text;
    return text ? parseExact(text) : null;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return node;
  }

  function table(headers, rows, numeric = []) {
    const t = el("table");
    const head = el("tr");
    headers.forEach((h, i) => head.append(el("th", numeric.includes(i) ? {class: "num"} : {}, h)));
    t.append(el("thead", {}, head));
    const body = el("tbody");
    for (const r of rows) {
      const tr = el("tr");
      r.forEach((v, i) => tr.append(el("td", numeric.includes(i) ? {class: "num"} : {}, v == null ? "" : v)));
      body.append(tr);
    }
    t.append(body);
    return t;
  }

  // Bars for (label, value[, second value]) rows; values are decimal strings (scaled as numbers only to draw).
  function barChart(rows, opts = {}) {
    const svg = document.createElementNS(SVG, "svg");
    const w = 600, h = 160, pad = 18;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("role", "img");
    const values = rows.flatMap((r) => [Number(r[1]) || 0, Number(r[2]) || 0]);
    const max = Math.max(1e-12, ...values.map(Math.abs));
    const n = Math.max(1, rows.length);
    const slot = (w - 2 * pad) / n;
    const base = values.some((v) => v < 0) ? h / 2 : h - pad;
    const scale = (values.some((v) => v < 0) ? h / 2 - pad : h - 2 * pad) / max;
    rows.forEach((r, i) => {
      const series = r.length > 2 ? [[r[1], "bar"], [r[2], "cost"]] : [[r[1], Number(r[1]) < 0 ? "neg" : "bar"]];
      series.forEach(([v, cls], j) => {
        if (v == null) return;
        const num = Number(v) || 0;
        const bw = Math.max(1, slot * 0.8 / series.length);
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", String(pad + i * slot + slot * 0.1 + j * bw));
        rect.setAttribute("y", String(num >= 0 ? base - num * scale : base));
        rect.setAttribute("width", String(bw));
        rect.setAttribute("height", String(Math.max(num === 0 ? 0 : 1, Math.abs(num) * scale)));
        rect.setAttribute("class", cls);
        const title = document.createElementNS(SVG, "title");
        title.textContent = `${r[0]}: ${v}${opts.series ? " " + opts.series[j] : ""}`;
        rect.append(title);
        svg.append(rect);
      });
      if (rows.length <= 12) {
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", String(pad + i * slot + slot / 2));
        label.setAttribute("y", String(h - 4));
        label.setAttribute("text-anchor", "middle");
        label.textContent = String(r[0]).slice(0, 16);
        svg.append(label);
      }
    });
    return svg;
  }

  function show(id, on = true) { $(id).hidden = !on; }

  function message(text) {
    $("message").textContent = text;
    show("message", Boolean(text));
  }

  // -- meters ------------------------------------------------------------------------------------------------
  async function loadMeters() {
    const list = $("meter-list");
    list.replaceChildren();
    const meters = await api("/api/v1/meters");
    const now = new Date();
    const from = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - 29)).toISOString()
      .replace(".000Z", "Z");
    for (const m of meters) {
      const card = el("div", {class: "card meter", "data-meter": m.slug}, el("h3", {}, `${m.name || m.slug} (${m.aggregation})`));
      list.append(card);
      try {
        const q = await api(`/api/v1/meters/${encodeURIComponent(m.slug)}/query?windowSize=DAY&from=${encodeURIComponent(from)}`);
        const rows = q.data.map((r) => [r.windowStart.slice(0, 10), r.value]);
        const byDay = new Map(rows);
        const days = [...Array(30).keys()].map((i) => new Date(Date.parse(from) + i * 86400000).toISOString().slice(0, 10));
        card.append(el("div", {class: "chart"}, barChart(days.map((d) => [d, byDay.get(d) || "0"]))));
        card.append(table(["Day (UTC)", "Value"], rows.filter((r) => Number(r[1]) !== 0), [1]));
      } catch (e) {
        card.append(el("p", {class: "muted"}, e.message));
      }
    }
  }

  // -- customers ---------------------------------------------------------------------------------------------
  async function loadCustomers() {
    const list = $("customer-list");
    list.replaceChildren();
    const page = await api("/api/v1/customers?pageSize=100");
    for (const c of page.items) {
      const card = el("div", {class: "card customer", "data-customer": c.key || c.id},
                      el("h3", {}, `${c.name} (${c.key || c.id})`));
      list.append(card);
      const id = encodeURIComponent(c.id);
      const [subs, invoices, ents] = await Promise.all([
        api(`/api/v1/customers/${id}/subscriptions`),
        api(`/api/v1/billing/invoices?customers=${id}`),
        api(`/api/v2/customers/${id}/entitlements`).catch(() => ({items: []})),
      ]);
      card.append(el("h4", {}, "Subscriptions"),
                  table(["Plan", "Status", "From", "To"], subs.items.map((s) =>
                    [s.plan ? `${s.plan.key}@${s.plan.version}` : "custom", s.status, s.activeFrom, s.activeTo || ""]), []));
      const balances = [];
      for (const e of ents.items.filter((x) => x.type === "metered")) {
        try {
          const v = await api(`/api/v1/customers/${id}/entitlements/${encodeURIComponent(e.featureKey)}/value`);
          balances.push([e.featureKey, v.balance, v.usage, v.overage]);
        } catch (err) { balances.push([e.featureKey, err.message, "", ""]); }
      }
      card.append(el("h4", {}, "Balances"), table(["Feature", "Balance", "Usage", "Overage"], balances, [1, 2, 3]));
      card.append(el("h4", {}, "Invoices"),
                  table(["Number", "Status", "Issued", "Total"], invoices.items.filter((i) => i.status !== "gathering")
                    .map((i) => [i.number, i.status, i.issuedAt || "", `${i.totals.total} ${i.currency}`]), [3]));
    }
  }

  // -- backtest ----------------------------------------------------------------------------------------------
  function signClass(v) { return v && v.startsWith("-") ? "less" : (Number(v) > 0 ? "more" : ""); }

  function renderBacktest(r) {
    const t = r.totals;
    const totals = $("bt-totals").tBodies[0];
    totals.replaceChildren(el("tr", {}, el("td", {}, t.customers), el("td", {}, t.currency),
                              el("td", {class: "num"}, t.current), el("td", {class: "num"}, t.candidate),
                              el("td", {class: `num ${signClass(t.difference)}`}, t.difference),
                              el("td", {class: "num"}, t.differencePercent == null ? "" : t.differencePercent)));
    const d = r.distribution;
    $("bt-counts").textContent = `${d.more} pay more, ${d.less} pay less, ${d.same} the same` +
      (Number(d.fromZero) ? `, ${d.fromZero} from zero` : "");
    $("bt-histogram").replaceChildren(barChart(d.buckets.map((b) => [b.label, String(b.customers)]), {}));
    const body = $("bt-table").tBodies[0];
    body.replaceChildren(...r.customers.map((c) => el("tr", {"data-customer": c.customerKey || c.customerId},
      el("td", {}, c.customerKey || c.customerId), el("td", {class: "num"}, c.periods),
      el("td", {class: "num"}, c.current), el("td", {class: "num"}, c.candidate),
      el("td", {class: `num ${signClass(c.difference)}`}, c.difference),
      el("td", {class: "num"}, c.differencePercent == null ? "" : c.differencePercent))));
    show("bt-result");
  }

  async function runBacktest(ev) {
    ev.preventDefault();
    show("bt-error", false);
    show("bt-result", false);
    const body = {plan: $("bt-plan").value.trim(), from: $("bt-from").value.trim(), to: $("bt-to").value.trim()};
    const who = $("bt-customers").value.trim();
    if (who && who !== "all") body.customers = who.split(",").map((s) => s.trim()).filter(Boolean);
    try {
      const job = await api("/api/v1/billing/backtests", {method: "POST", body});
      const bar = $("bt-progress");
      show("bt-progress");
      let result = job;
      const draw = (p) => {
        const [done, failed, total] = [Number(p.success) + Number(p.failed), Number(p.failed), Number(p.total)];
        bar.max = Math.max(1, total);
        bar.value = done;
        $("bt-progress-text").textContent = `${done} of ${total} customers` + (failed ? `, ${failed} failed` : "");
      };
      for (;;) {
        draw(await api(`/api/v1/info/progress/${job.id}`));
        result = await api(`/api/v1/billing/backtests/${job.id}`);  // small while it runs
        if (result.status !== "queued" && result.status !== "running") break;  // done, or failed as a whole
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      draw(result.progress);  // as the job ended (it may have ended after the progress was read)
      if (result.status !== "succeeded") throw new Error(result.error || "the backtest failed");
      const csv = await api(`/api/v1/billing/backtests/${job.id}`, {accept: "text/csv"});
      $("bt-csv").href = URL.createObjectURL(new Blob([csv], {type: "text/csv"}));
      renderBacktest(result);
    } catch (e) {
      $("bt-error").textContent = e.message;
      show("bt-error");
    }
  }

  // -- margin ------------------------------------------------------------------------------------------------
  function renderMargin(which, r) {
    const label = which === "model" ? (x) => `${x.provider || ""} ${x.model || "(no LLM usage)"}`.trim()
                                    : (x) => x.customerKey || x.customerId || "(no customer)";
    const headers = [which === "model" ? "Model" : "Customer", "Currency", "Revenue", "Cost (USD)", "Margin", "Margin %"];
    const rows = r.data.map((x) => [label(x), x.currency, x.revenue, x.unpriced ? "unpriced" : x.cost,
                                    x.margin == null ? "" : x.margin, x.marginPercent == null ? "" : x.marginPercent]);
    const t = $(`mg-${which}`);
    t.replaceChildren(...table(headers, rows, [2, 3, 4, 5]).childNodes);
    [...t.tBodies[0].rows].forEach((tr, i) => tr.setAttribute("data-row", label(r.data[i])));
    $(`mg-${which}-chart`).replaceChildren(barChart(r.data.map((x) => [label(x), x.revenue, x.unpriced ? null : x.cost]),
                                                    {series: ["revenue", "cost"]}));
  }

  async function runMargin(ev) {
    ev.preventDefault();
    show("mg-error", false);
    const q = `from=${encodeURIComponent($("mg-from").value.trim())}&to=${encodeURIComponent($("mg-to").value.trim())}`;
    try {
      const [byModel, byCustomer] = await Promise.all([api(`/api/v1/llm/margin?groupBy=provider&groupBy=model&${q}`),
                                                       api(`/api/v1/llm/margin?groupBy=customer&${q}`)]);
      renderMargin("model", byModel);
      renderMargin("customer", byCustomer);
      show("mg-result");
    } catch (e) {
      $("mg-error").textContent = e.message;
      show("mg-error");
    }
  }

  // -- start -------------------------------------------------------------------------------------------------
  async function connect() {
    message("");
    $("status").textContent = "Connecting…";
    try {
      await api("/api/v1/admin/keys");  // admin scope only: a read or ingest key is refused here
    } catch (e) {
      document.body.dataset.state = "locked";
      $("status").textContent = "";
      message(e.status === 401 || e.status === 403 ? "The console needs an admin API key: " + e.message : e.message);
      return;
    }
    sessionStorage.setItem(KEY, key);
    for (const id of ["tabs", "meters", "customers", "lab", "margin"]) show(id);
    $("status").textContent = key ? "Connected with an admin key." : "Connected (authentication is off).";
    try {
      await Promise.all([loadMeters(), loadCustomers()]);
      document.body.dataset.state = "ready";
    } catch (e) {
      message(e.message);
    }
  }

  $("login").addEventListener("submit", (ev) => { ev.preventDefault(); key = $("key").value.trim(); connect(); });
  $("backtest-form").addEventListener("submit", runBacktest);
  $("margin-form").addEventListener("submit", runMargin);
  if (key) connect();
})();
