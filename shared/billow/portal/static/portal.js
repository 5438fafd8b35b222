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
    if (resp.status === 401) throw new AuthError(detail || "");
    if (!resp.ok) throw new Error(detail || `The server answered ${resp.status}.`);  // for the console only
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

  // What the customer reads about a refused link: our words, never the server's (which speak of tokens and
  // show raw timestamps); API Gateway's own refusal has no detail at all.
  function linkProblem(detail) {
    const expired = /expired at (\S+?)\.?$/.exec(detail || "");
    const at = expired ? new Date(expired[1]) : null;
    if (at && !isNaN(at)) return `This link expired at ${at.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"})}.`;
    if (expired) return "This link has expired.";
    if (/invalidated/.test(detail || "")) return "This link was invalidated by your provider.";
    return "This link is not valid: it may be incomplete or mistyped.";
  }

  function denied(detail) {
    sessionStorage.removeItem(KEY);
    if (expiryTimer) clearTimeout(expiryTimer);
    showMessage("denied", "This link has expired or is no longer valid",
                `${linkProblem(detail)} Ask your provider for a new link to see your usage.`);
  }

  // -- usage charts --------------------------------------------------------------------------------------------
  // Each chart is drawn at the pixel width of its card (1 SVG unit = 1 CSS pixel), so axis labels keep their size
  // on a phone; it is drawn again when the width changes. A bar's exact value stays in data-value; a stacked
  // breakdown by the meter's first group-by (SUM and COUNT only: other aggregations do not add up) sits on top.
  const STACKED = new Set(["SUM", "COUNT"]);
  const MAX_GROUPS = 6;  // more groups than this: the rest are summed as "Other"

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

  // Exact sum of decimal strings (for "Other"): scaled BigInts, never floats.
  function addExact(values) {
    const texts = values.map((v) => String(v ?? "0"));
    if (!texts.every((t) => /^-?\d+(\.\d+)?$/.test(t))) return String(texts.reduce((a, t) => a + Number(t), 0));
    const scale = Math.max(0, ...texts.map((t) => (t.split(".")[1] || "").length));
    let sum = 0n;
    for (const t of texts) {
      const neg = t.startsWith("-");
      const [i, f = ""] = (neg ? t.slice(1) : t).split(".");
      const v = BigInt(i + f.padEnd(scale, "0"));
      sum += neg ? -v : v;
    }
    const neg = sum < 0n;
    const digits = (neg ? -sum : sum).toString().padStart(scale + 1, "0");
    let out = scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
    if (scale) out = out.replace(/0+$/, "").replace(/\.$/, "");
    return (neg && out !== "0" ? "-" : "") + out;
  }

  // The browser's local day (isoDay) a server window stands for: the day holding its middle. The server draws days
  // with the engine's time-zone data and the browser with its own; they can differ (Vancouver from November 2026:
  // local midnight is 07:00Z in chdb's, 08:00Z in Chromium's), so a window start is not always a browser midnight.
  // The window is taken within the range asked for (`span`: [from, to] in ms): a window's end is its whole day's,
  // after `to` for the day in progress.
  const dayOf = (r, span) => isoDay(new Date((Math.max(Date.parse(r.windowStart), span[0]) +
                                              Math.min(Date.parse(r.windowEnd), span[1])) / 2));

  // Map(isoDay -> value) of server windows. Two windows can fall in one browser day: from 07:00Z to 08:00Z in
  // Vancouver the engine's new day has begun and the browser's has not. Their values add up exactly for SUM and
  // COUNT; of other aggregations (which do not add up) the later window's stands. Before, the new day's window held
  // its middle in the browser's tomorrow (its end is the day's, not now) and was not drawn: today's bar lacked its
  // usage under a total that had it.
  function byDayOf(rows, additive, span) {
    const out = new Map();
    for (const r of rows) {
      const day = dayOf(r, span);
      out.set(day, additive && out.has(day) ? addExact([out.get(day), r.value]) : r.value);
    }
    return out;
  }

  // The breakdown: [{name, byDay: Map(isoDay -> value)}], largest first, at most MAX_GROUPS (+ "Other").
  function breakdown(key, rows, span) {
    const grouped = new Map();
    for (const r of rows) {
      const g = r.groupBy && r.groupBy[key] != null && r.groupBy[key] !== "" ? String(r.groupBy[key]) : "(none)";
      if (!grouped.has(g)) grouped.set(g, []);
      grouped.get(g).push(r);
    }
    const groups = new Map([...grouped].map(([g, rs]) => [g, byDayOf(rs, true, span)]));  // (SUM and COUNT only)
    const size = (m) => [...m.values()].reduce((a, v) => a + Math.abs(Number(v)), 0);
    const list = [...groups].map(([name, byDay]) => ({name, byDay})).sort((a, b) => size(b.byDay) - size(a.byDay));
    if (list.length <= MAX_GROUPS + 1) return list;
    const rest = list.slice(MAX_GROUPS), other = new Map();
    for (const t of new Set(rest.flatMap((g) => [...g.byDay.keys()]))) {
      other.set(t, addExact(rest.map((g) => g.byDay.get(t) ?? "0")));
    }
    return [...list.slice(0, MAX_GROUPS), {name: "Other", byDay: other}];
  }

  const withUnit = (value, unit) => unit ? `${fmt(value)} ${unit}` : fmt(value);

  function showTip(card, x, lines) {
    const tip = card.querySelector(".tip"), box = card.querySelector(".chart-box");
    tip.replaceChildren(...lines);
    tip.hidden = false;
    const w = tip.offsetWidth, cx = box.offsetLeft + x;
    tip.style.left = `${Math.max(4, Math.min(card.clientWidth - w - 4, cx - w / 2))}px`;
    tip.style.top = `${box.offsetTop + 2}px`;
  }

  function hideTip(card) {
    card.querySelector(".tip").hidden = true;
    for (const h of card.querySelectorAll(".hit.active")) h.classList.remove("active");
  }

  function barChart(card, meter, days, rows, groups, width, span) {
    const byDay = byDayOf(rows, STACKED.has(meter.aggregation), span);
    const values = days.map((d) => byDay.get(isoDay(d)) ?? "0");
    const max = niceCeil(Math.max(0, ...values.map(Number)));
    const W = Math.max(260, Math.floor(width)), H = W < 520 ? 190 : 230;
    const left = 46, right = 6, top = 24, bottom = 24;
    const plotW = W - left - right, plotH = H - top - bottom, step = plotW / days.length;
    const unit = meter.unit || "";
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", role: "img",
                              "aria-label": `${meter.name || meter.slug}: ${unit || "usage"} per day, last ${days.length} days`,
                              "data-meter": meter.slug});
    chart.append(svg("text", {x: 0, y: 12, class: "unit"}, unit ? `${unit} per day` : "per day"));
    for (const f of [0, 0.5, 1]) {
      const y = top + plotH - f * plotH;
      chart.append(svg("line", {x1: left, x2: W - right, y1: y, y2: y, class: "grid"}));
      chart.append(svg("text", {x: left - 6, y: y + 4, class: "axis", "text-anchor": "end"}, short(max * f)));
    }
    const every = step * 7 >= 48 ? 7 : 14;  // a label per week, or per fortnight when a week is too narrow
    const height = (v) => {
      let h = max > 0 ? (Number(v) / max) * plotH : 0;
      if (Number(v) > 0 && h < 1.5) h = 1.5;
      return h;
    };
    values.forEach((value, i) => {
      const x = left + i * step + step * 0.15, bw = step * 0.7;
      const h = height(value);
      const bar = svg("rect", {x: x.toFixed(2), y: (top + plotH - h).toFixed(2), width: bw.toFixed(2),
                               height: h.toFixed(2), class: "bar" + (groups ? " stacked" : ""),
                               "data-day": isoDay(days[i]), "data-window-start": days[i].toISOString(),
                               "data-value": value});
      bar.append(svg("title", {}, `${dayLabel(days[i])}: ${withUnit(value, unit)}`));
      chart.append(bar);
      if (groups) {
        let y = top + plotH;
        groups.forEach((g, k) => {
          const v = g.byDay.get(isoDay(days[i]));
          if (v === undefined || !(Number(v) > 0) || !(max > 0)) return;
          const sh = Math.min(y - top, (Number(v) / max) * plotH);
          y -= sh;
          chart.append(svg("rect", {x: x.toFixed(2), y: y.toFixed(2), width: bw.toFixed(2), height: sh.toFixed(2),
                                    class: `seg c${k}`, "data-group": g.name, "data-value": v,
                                    "data-day": isoDay(days[i])}));
        });
      }
      if ((days.length - 1 - i) % every === 0) {  // today (flush right, inside the chart), and every week before
        const last = i === days.length - 1;
        chart.append(svg("text", {x: (last ? W - right : left + i * step + step / 2).toFixed(2), y: H - 6,
                                  class: "axis day", "text-anchor": last ? "end" : "middle"}, dayLabel(days[i])));
      }
      // The hover / tap / keyboard target: the whole column, so thin bars are easy to hit.
      const hit = svg("rect", {x: (left + i * step).toFixed(2), y: top, width: step.toFixed(2), height: plotH,
                               class: "hit", tabindex: 0, "data-day": isoDay(days[i])});
      const tip = () => {
        const head = el("div", {class: "tip-head"}, el("strong", {}, dayLabel(days[i])), " ",
                        el("span", {class: "tip-value"}, withUnit(value, unit)));
        const lines = [head];
        for (const [k, g] of (groups || []).entries()) {
          const v = g.byDay.get(isoDay(days[i]));
          if (v !== undefined && Number(v) !== 0) {
            lines.push(el("div", {class: "tip-group", "data-group": g.name},
                          el("span", {}, el("i", {class: `sw c${k}`}), g.name), el("span", {}, withUnit(v, unit))));
          }
        }
        hideTip(card);
        hit.classList.add("active");
        showTip(card, left + i * step + step / 2, lines);
      };
      hit.addEventListener("pointerenter", tip);
      hit.addEventListener("pointerdown", tip);
      hit.addEventListener("focus", tip);
      hit.addEventListener("pointerleave", () => hideTip(card));
      hit.addEventListener("blur", () => hideTip(card));
      chart.append(hit);
    });
    return chart;
  }

  function legend(groups) {
    return el("ul", {class: "legend"}, ...groups.map((g, k) =>
      el("li", {"data-group": g.name}, el("i", {class: `sw c${k}`}), g.name)));
  }

  const cards = [];  // [card, draw(width)] to draw again when the width changes

  async function renderUsage(me) {
    const charts = $("charts");
    charts.replaceChildren();
    cards.length = 0;
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const days = lastDays(DAYS);
    const until = new Date();
    const span = [days[0].getTime(), until.getTime()];
    const range = `from=${encodeURIComponent(days[0].toISOString())}&to=${encodeURIComponent(until.toISOString())}` +
                  `&windowTimeZone=${encodeURIComponent(tz)}`;
    if (!me.meters.length) charts.append(el("p", {class: "muted"}, "No usage is shared with you yet."));
    const made = await Promise.all(me.meters.map(async (meter) => {
      const base = `/api/v1/portal/meters/${encodeURIComponent(meter.slug)}/query?${range}`;
      const key = STACKED.has(meter.aggregation) && (meter.groupBy || []).length ? meter.groupBy[0] : null;
      const [daily, total, grouped] = await Promise.all([
        api(`${base}&windowSize=DAY`), api(base),
        key ? api(`${base}&windowSize=DAY&groupBy=${encodeURIComponent(key)}`) : null]);
      const sum = total.data.length ? total.data[0].value : "0";
      const groups = grouped ? breakdown(key, grouped.data, span) : null;
      const shown = groups && groups.length > 1 ? groups : null;  // one group: nothing to break down
      const card = el("article", {class: "card meter", "data-meter": meter.slug, "data-total": sum,
                                  "data-time-zone": tz, "data-unit": meter.unit || ""},
        el("header", {class: "card-head"},
          el("h3", {}, meter.name || meter.slug),
          el("span", {class: "total"}, `${TOTAL_LABEL[meter.aggregation] || "Total"}: `,
             el("strong", {}, fmt(sum)), meter.unit ? ` ${meter.unit}` : "")),
        meter.description ? el("p", {class: "muted"}, meter.description) : "");
      if (shown) card.dataset.groupBy = key;
      const holder = el("div", {class: "chart-box"});
      const tip = el("div", {class: "tip", role: "status"});
      tip.hidden = true;
      card.append(holder, tip);
      if (shown) card.append(legend(shown));
      const draw = (width) => holder.replaceChildren(barChart(card, meter, days, daily.data, shown, width, span));
      cards.push([card, holder, draw]);
      return card;
    }));
    charts.append(...made);
    $("usage").hidden = false;
    for (const [, holder, draw] of cards) draw(holder.clientWidth);
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [card, holder, draw] of cards) {
        hideTip(card);
        if (Math.floor(holder.clientWidth) !== Number(holder.firstChild?.getAttribute("width"))) draw(holder.clientWidth);
      }
    }, 100);
  });

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
  const STATUS = {issued: "Due", payment_processing: "Payment processing", overdue: "Overdue", paid: "Paid",
                  uncollectible: "Uncollectible", voided: "Void"};

  function statusCell(inv) {
    const label = STATUS[inv.status] || (inv.status || "").replace(/_/g, " ");
    const text = inv.status === "issued" && inv.dueAt ? `Due ${dateLabel(inv.dueAt)}` : label;
    return el("span", {class: `status status-${inv.status}`, "data-status": inv.status}, text);
  }

  function save(href, name) {
    const a = el("a", {href, rel: "noopener"});
    if (name) a.download = name;
    else a.target = "_blank";
    document.body.append(a);
    a.click();
    a.remove();
  }

  // A document through the portal token: the links are this API's (local documents: fetched with the token and
  // saved from memory) or presigned S3 URLs (AWS: opened as they are).
  async function download(inv, format, button) {
    button.disabled = true;
    $("billing-note").hidden = true;
    try {
      const links = await api(`/api/v1/portal/invoices/${encodeURIComponent(inv.id)}/documents`);
      const url = new URL(links[format], location.href);
      if (url.origin !== location.origin) {
        save(url.href, null);
        return;
      }
      const resp = await fetch(url.href, {headers: {Authorization: "Bearer " + token}, cache: "no-store",
                                          credentials: "omit", referrerPolicy: "no-referrer"});
      if (resp.status === 401) throw new AuthError("");
      if (!resp.ok) throw new Error(`The server answered ${resp.status}.`);
      const named = /filename="([^"]+)"/.exec(resp.headers.get("content-disposition") || "");
      const href = URL.createObjectURL(await resp.blob());
      save(href, named ? named[1] : `${inv.number || "invoice"}.${format}`);
      setTimeout(() => URL.revokeObjectURL(href), 60_000);
    } catch (err) {
      if (err instanceof AuthError) return denied(err.message);
      console.error(err);
      $("billing-note").textContent = "The document could not be downloaded just now. Try again in a moment.";
      $("billing-note").hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  function renderInvoices(items) {
    const body = $("invoices").querySelector("tbody");
    body.replaceChildren();
    if (!items.length) body.append(el("tr", {class: "empty"}, el("td", {colSpan: 5}, "No invoices yet.")));
    for (const inv of items) {
      const period = inv.period ? `${dateLabel(inv.period.from)} – ${dateLabel(inv.period.to)}` : dateLabel(inv.issuedAt);
      const total = inv.totals ? inv.totals.total : inv.total;
      const buttons = el("span", {});
      const docs = el("td", {class: "docs", "data-label": "Download"}, buttons);
      for (const [format, name] of [["pdf", "PDF"], ["html", "HTML"]]) {
        const b = el("button", {type: "button", class: "doc", "data-format": format}, name);
        b.setAttribute("aria-label", `Download invoice ${inv.number || ""} as ${name}`.replace("  ", " "));
        b.addEventListener("click", () => download(inv, format, b));
        buttons.append(b);
      }
      body.append(el("tr", {"data-invoice": inv.id, "data-status": inv.status || ""},
        el("td", {"data-label": "Invoice"}, inv.number || ""), el("td", {"data-label": "Period"}, period),
        el("td", {"data-label": "Status"}, statusCell(inv)),
        el("td", {class: "num", "data-label": "Total"}, `${fmt(total)} ${inv.currency || ""}`.trim()), docs));
    }
    $("billing").hidden = false;
  }

  // -- the page ------------------------------------------------------------------------------------------------
  async function load() {
    document.body.dataset.state = "loading";
    try {
      const me = await api("/api/v1/portal/me");
      // The customer's name only: subject keys and ids are the provider's internal references.
      $("who").textContent = me.customer && me.customer.name ? me.customer.name : "";
      $("expiry").textContent = `Link valid until ${new Date(me.expiresAt).toLocaleString()}`;
      if (expiryTimer) clearTimeout(expiryTimer);
      const left = Date.parse(me.expiresAt) - Date.now();
      if (left < 2 ** 31) expiryTimer = setTimeout(() => denied(`expired at ${me.expiresAt}`), Math.max(0, left));
      const [, ents, invs] = await Promise.all([renderUsage(me), api("/api/v1/portal/entitlements"),
                                                api("/api/v1/portal/invoices")]);
      renderBalances(ents);
      renderInvoices(invs);
      $("loading").hidden = true;
      $("refresh").hidden = false;
      document.body.dataset.state = "ready";
    } catch (err) {
      if (err instanceof AuthError) denied(err.message);
      else {
        console.error(err);
        showMessage("error", "Something went wrong", "Your usage could not be loaded just now. Try again in a moment.");
      }
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
