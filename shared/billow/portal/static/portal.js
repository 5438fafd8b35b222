// Billow consumer portal: one end customer's usage, balances and invoices, read with a portal token.
// The token arrives in the URL fragment (/portal#token=bp_...), which browsers never send to a server; it is kept
// in sessionStorage (this tab only) and sent only as `Authorization: Bearer` to /api/v1/portal/... on this origin.
// No framework, no build step: charts are SVG drawn here.
"use strict";

(() => {
  const KEY = "billow.portal.token";
  const SVG = "http://www.w3.org/2000/svg";
  const DAYS = 30;
  const TOTAL_LABEL = {SUM: "Total", COUNT: "Total", UNIQUE_COUNT: "Unique", AVG: "Average", MIN: "Minimum",
                       MAX: "Maximum", LATEST: "Latest"};
  const $ = (id) => document.getElementById(id);
  let token = null;
  let expiryTimer = null;

  class AuthError extends Error {}

  function takeToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      // Out of the address bar and the history: the link is not shared by copying the URL.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(KEY);
  }

  // Usage values are exact decimals: keep each number's JSON source text instead of rounding it to a float.
  function parseExact(text) {
    return JSON.parse(text, (key, value, ctx) =>
      typeof value === "number" ? (ctx && typeof ctx.source === "string" ? ctx.source : String(value)) : value);
  }

  async function api(path) {
    const resp = await fetch(path, {
      headers: {Authorization: "Bearer " + token, Accept: "application/json"},
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
    const text = await resp.text();
    let body = null;
    try {
      body = text ? parseExact(text) : null;
    } catch (e) {
      body = null;
    }
    const detail = body && body.detail;
    if (resp.status === 401) throw new AuthError(detail || "The link is not valid.");
    if (!resp.ok) throw new Error(detail || `The server answered ${resp.status}.`);
    return body;
  }

  // -- formatting ------------------------------------------------------------------------------------------
  function fmt(value) {
    const s = String(value ?? "0");
    const m = /^(-?)(\d+)(\.\d+)?$/.exec(s);
    if (!m) return s;
    return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (m[3] || "");
  }

  function short(n) {
    if (n === 0) return "0";
    const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
    for (const [size, unit] of units) {
      if (Math.abs(n) >= size) return +(n / size).toPrecision(3) + unit;
    }
    return String(+n.toPrecision(3));
  }

  // The axis top: the smallest of 1, 2, 2.5, 5 (times a power of ten) at or above the largest value.
  function niceCeil(n) {
    if (!(n > 0)) return 0;
    const p = 10 ** Math.floor(Math.log10(n));
    return [1, 2, 2.5, 5, 10].map((f) => f * p).find((v) => v >= n * (1 - 1e-12));
  }

  const dayLabel = (d) => d.toLocaleDateString(undefined, {month: "short", day: "numeric"});
  const dateLabel = (iso) => iso ? new Date(iso).toLocaleDateString(undefined, {year: "numeric", month: "short",
                                                                                 day: "numeric"}) : "";
  const isoDay = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- messages ----------------------------------------------------------------------------------------------
  function showMessage(state, title, text) {
    document.body.dataset.state = state;
    $("loading").hidden = true;
    for (const id of ["usage", "entitlements", "billing", "refresh"]) $(id).hidden = true;
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    $("message").hidden = false;
  }

  function denied(detail) {
    sessionStorage.removeItem(KEY);
    if (expiryTimer) clearTimeout(expiryTimer);
    showMessage("denied", "This link has expired or is no longer valid",
                `${detail} Ask your provider for a new link to see your usage.`);
  }

  // -- usage charts --------------------------------------------------------------------------------------------
  function lastDays(n) {
    const today = new Date();
    today.setHours(0, 0, 0, 0);
    const out = [];
    for (let i = n - 1; i >= 0; i--) {
      const d = new Date(today);
      d.setDate(today.getDate() - i);
      out.push(d);
    }
    return out;
  }

  function barChart(meter, days, rows) {
    const byDay = new Map(rows.map((r) => [Date.parse(r.windowStart), r.value]));
    const values = days.map((d) => byDay.get(d.getTime()) ?? "0");
    const max = niceCeil(Math.max(0, ...values.map(Number)));
    const W = 720, H = 220, left = 52, right = 8, top = 12, bottom = 26;
    const plotW = W - left - right, plotH = H - top - bottom, step = plotW / days.length;
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                              "aria-label": `${meter.name || meter.slug}: usage per day, last ${days.length} days`,
                              "data-meter": meter.slug});
    for (const f of [0, 0.5, 1]) {
      const y = top + plotH - f * plotH;
      chart.append(svg("line", {x1: left, x2: W - right, y1: y, y2: y, class: "grid"}));
      chart.append(svg("text", {x: left - 6, y: y + 4, class: "axis", "text-anchor": "end"}, short(max * f)));
    }
    values.forEach((value, i) => {
      const v = Number(value);
      let h = max > 0 ? (v / max) * plotH : 0;
      if (v > 0 && h < 1.5) h = 1.5;
      const bar = svg("rect", {x: (left + i * step + step * 0.15).toFixed(2), y: (top + plotH - h).toFixed(2),
                               width: (step * 0.7).toFixed(2), height: h.toFixed(2), class: "bar",
                               "data-day": isoDay(days[i]), "data-window-start": days[i].toISOString(),
                               "data-value": value});
      bar.append(svg("title", {}, `${dayLabel(days[i])}: ${fmt(value)}`));
      chart.append(bar);
      if ((days.length - 1 - i) % 7 === 0) {  // today, and every week before it
        chart.append(svg("text", {x: (left + i * step + step / 2).toFixed(2), y: H - 8, class: "axis",
                                  "text-anchor": "middle"}, dayLabel(days[i])));
      }
    });
    return chart;
  }

  async function renderUsage(me) {
    const charts = $("charts");
    charts.replaceChildren();
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const days = lastDays(DAYS);
    const range = `from=${encodeURIComponent(days[0].toISOString())}&to=${encodeURIComponent(new Date().toISOString())}` +
                  `&windowTimeZone=${encodeURIComponent(tz)}`;
    if (!me.meters.length) charts.append(el("p", {class: "muted"}, "No usage is shared with you yet."));
    const cards = await Promise.all(me.meters.map(async (meter) => {
      const base = `/api/v1/portal/meters/${encodeURIComponent(meter.slug)}/query?${range}`;
      const [daily, total] = await Promise.all([api(`${base}&windowSize=DAY`), api(base)]);
      const sum = total.data.length ? total.data[0].value : "0";
      return el("article", {class: "card meter", "data-meter": meter.slug, "data-total": sum, "data-time-zone": tz},
        el("header", {class: "card-head"},
          el("h3", {}, meter.name || meter.slug),
          el("span", {class: "total"}, `${TOTAL_LABEL[meter.aggregation] || "Total"}: `,
             el("strong", {}, fmt(sum)))),
        meter.description ? el("p", {class: "muted"}, meter.description) : "",
        barChart(meter, days, daily.data));
    }));
    charts.append(...cards);
    $("usage").hidden = false;
  }

  // -- balances --------------------------------------------------------------------------------------------------
  function renderBalances(items) {
    const box = $("balances");
    box.replaceChildren();
    if (!items.length) box.append(el("p", {class: "muted"}, "No entitlements."));
    for (const ent of items) {
      const v = ent.value || {};
      const card = el("div", {class: "card ent" + (v.hasAccess === false ? " no-access" : ""),
                              "data-feature": ent.featureKey, "data-type": ent.type,
                              "data-has-access": String(v.hasAccess)});
      const badge = v.hasAccess === false ? "No access" : (ent.type === "metered" ? (ent.isSoftLimit ? "Soft limit" : "Metered") : "Included");
      card.append(el("div", {class: "card-head"}, el("h3", {}, ent.featureName || ent.featureKey),
                     el("span", {class: "badge"}, badge)));
      if (ent.type === "metered" && ent.value) {
        const used = Number(v.usage), available = Number(v.totalAvailableGrantAmount);
        const pct = available > 0 ? Math.min(100, (used / available) * 100) : (used > 0 ? 100 : 0);
        for (const k of ["balance", "usage", "overage", "totalAvailableGrantAmount"]) card.setAttribute(`data-${k}`, v[k]);
        const fill = el("div", {class: "fill" + (pct >= 100 ? " full" : pct >= 80 ? " high" : "")});
        fill.style.width = `${pct.toFixed(1)}%`;
        const bar = el("div", {class: "progress", role: "progressbar"}, fill);
        bar.setAttribute("aria-valuemin", "0");
        bar.setAttribute("aria-valuemax", "100");
        bar.setAttribute("aria-valuenow", pct.toFixed(1));
        card.append(bar);
        card.append(el("p", {class: "figures"}, el("strong", {class: "balance"}, fmt(v.balance)), " left · ",
                       el("span", {class: "used"}, fmt(v.usage)), ` used of ${fmt(v.totalAvailableGrantAmount)}`,
                       Number(v.overage) > 0 ? el("span", {class: "overage"}, ` · ${fmt(v.overage)} over`) : ""));
        if (ent.currentUsagePeriod) {
          card.append(el("p", {class: "muted"}, `Current period ${dateLabel(ent.currentUsagePeriod.from)} – ` +
                                               `${dateLabel(ent.currentUsagePeriod.to)}`));
        }
      } else if (ent.valueError) {
        card.append(el("p", {class: "muted"}, ent.valueError));
      }
      box.append(card);
    }
    $("entitlements").hidden = false;
  }

  // -- invoices --------------------------------------------------------------------------------------------------
  function renderInvoices(items) {
    const body = $("invoices").querySelector("tbody");
    body.replaceChildren();
    if (!items.length) body.append(el("tr", {class: "empty"}, el("td", {colSpan: 4}, "No invoices yet.")));
    for (const inv of items) {
      const period = inv.period ? `${dateLabel(inv.period.from)} – ${dateLabel(inv.period.to)}` : dateLabel(inv.issuedAt);
      const total = inv.totals ? inv.totals.total : inv.total;
      body.append(el("tr", {"data-invoice": inv.id},
        el("td", {}, inv.number || inv.id), el("td", {}, period), el("td", {}, inv.status || ""),
        el("td", {class: "num"}, `${fmt(total)} ${inv.currency || ""}`.trim())));
    }
    $("billing").hidden = false;
  }

  // -- the page ------------------------------------------------------------------------------------------------
  async function load() {
    document.body.dataset.state = "loading";
    try {
      const me = await api("/api/v1/portal/me");
      const who = me.customer ? `${me.customer.name || me.customer.key || me.customer.id} · ${me.subject}` : me.subject;
      $("who").textContent = who;
      $("who").dataset.subject = me.subject;
      $("expiry").textContent = `Link valid until ${new Date(me.expiresAt).toLocaleString()}`;
      if (expiryTimer) clearTimeout(expiryTimer);
      const left = Date.parse(me.expiresAt) - Date.now();
      if (left < 2 ** 31) expiryTimer = setTimeout(() => denied(`The link expired at ${me.expiresAt}.`), Math.max(0, left));
      const [, ents, invs] = await Promise.all([renderUsage(me), api("/api/v1/portal/entitlements"),
                                                api("/api/v1/portal/invoices")]);
      renderBalances(ents);
      renderInvoices(invs);
      $("loading").hidden = true;
      $("refresh").hidden = false;
      document.body.dataset.state = "ready";
    } catch (err) {
      if (err instanceof AuthError) denied(err.message);
      else showMessage("error", "Something went wrong", `${err.message} Try again in a moment.`);
    }
  }

  function start() {
    token = takeToken();
    if (!token) {
      showMessage("denied", "No access link", "Open this page with the link you were given (it ends in #token=…).");
      return;
    }
    $("refresh").addEventListener("click", load);
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
