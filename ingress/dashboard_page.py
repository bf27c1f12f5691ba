"""The dashboard's two HTML pages: the login form and the dashboard itself.

Plain HTML with a little JavaScript, no build step. The dashboard page is rendered with
the current data embedded (as JSON in a ``<script type="application/json">`` element);
its script draws the tables from it, then refreshes from ``GET /admin/data`` every few
seconds. Every value is put in the page with ``textContent`` (never as HTML), and a
Content-Security-Policy with a per-response nonce allows only our own inline script,
forbids framing (so the replay button cannot be clickjacked) and sends no data elsewhere.
"""

from __future__ import annotations

import html
import json
import secrets
from typing import Any, Final

from aiohttp import web

__all__ = ["REFRESH_S", "dashboard_page", "login_page"]

REFRESH_S: Final = 5
"""Seconds between the page's refreshes of ``/admin/data``."""

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:.5em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.n{text-align:right;font-variant-numeric:tabular-nums}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.4em .8em;margin:.3em 0}
.muted{color:#777} .grid{display:flex;flex-wrap:wrap;gap:2em}
button{cursor:pointer} #replay-result{margin:.4em 0}
"""

_SCRIPT = """
"use strict";
const csrf = document.querySelector('meta[name="sluice-csrf"]').content;
const refreshMs = Number(document.body.dataset.refreshMs);
let previous = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function table(id, head, rows) {
  const box = document.getElementById(id);
  box.replaceChildren();
  if (!rows.length) { box.append(el("p", "none", "muted")); return; }
  const t = el("table"), tr = el("tr");
  head.forEach(h => tr.append(el("th", h)));
  t.append(tr);
  rows.forEach(cells => {
    const row = el("tr");
    cells.forEach(c => {
      if (c instanceof Node) { const td = el("td"); td.append(c); row.append(td); }
      else row.append(el("td", c, typeof c === "number" ? "n" : ""));
    });
    t.append(row);
  });
  box.append(t);
}
function byStatus(id, label, nested) {
  const statuses = [...new Set(Object.values(nested).flatMap(o => Object.keys(o)))].sort();
  table(id, [label, ...statuses],
    Object.keys(nested).sort().map(k => [k, ...statuses.map(s => nested[k][s] || 0)]));
}
function notices(sources) {
  const box = document.getElementById("notices");
  box.replaceChildren();
  Object.entries(sources).forEach(([name, s]) => {
    if (!s.ok) box.append(el("div", `503 ${name} unavailable: ${s.detail}`, "notice"));
  });
}
function rate(agent, consumed, seconds) {
  if (!previous || !(agent in previous.consumed) || seconds <= 0) return "";
  return ((consumed - previous.consumed[agent]) / seconds).toFixed(1);
}
async function replay(eventId, button) {
  button.disabled = true;
  const out = document.getElementById("replay-result");
  try {
    const response = await fetch("/admin/replay", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Sluice-CSRF": csrf},
      body: JSON.stringify({eventId}),
    });
    const body = await response.json();
    out.textContent = response.ok
      ? `replayed ${body.replayed.join(", ")} to ${body.topics.join(", ")}`
      : `replay failed (${response.status}): ${body.detail}`;
  } catch (err) {
    out.textContent = `replay failed: ${err}`;
  } finally {
    button.disabled = false;
  }
}
function render(data) {
  notices(data.sources);
  document.getElementById("generated").textContent = data.generatedAt;
  const now = Date.parse(data.generatedAt) / 1000;
  const seconds = previous ? now - previous.at : 0;
  table("agents", ["agent", "topics", "consumed", "records/s", "lag"],
    data.agents.map(a => [a.agent, a.topics.join(", "), a.consumed,
                          rate(a.agent, a.consumed, seconds), a.lag]));
  previous = {at: now, consumed: Object.fromEntries(data.agents.map(a => [a.agent, a.consumed]))};
  const f = data.funnel;
  table("funnel", ["created", "pending", "paid", "failed"],
        f ? [[f.created, f.pending, f.paid, f.failed]] : []);
  table("order-statuses", ["status", "orders"],
        Object.entries(data.orders || {}).sort().map(([s, n]) => [s, n]));
  table("webhook-statuses", ["status", "webhooks"],
        Object.entries(data.webhookStatuses || {}).sort().map(([s, n]) => [s, n]));
  table("webhooks", ["received", "provider", "event id", "type", "status", "reason"],
    (data.latestWebhooks || []).map(w => [w.receivedAt, w.provider, w.eventId, w.eventType,
                                          w.status, w.reason || ""]));
  byStatus("leads", "partner", data.leads || {});
  byStatus("notifications", "channel", data.notifications || {});
  const dl = data.deadLetters;
  document.getElementById("dlq-total").textContent = dl ? dl.total : "?";
  table("dead-letters", ["failed at", "origin", "key", "reason", "error", "attempts", ""],
    (dl ? dl.latest : []).map(d => {
      const button = el("button", "Replay");
      button.dataset.eventId = d.eventId;
      button.addEventListener("click", () => replay(d.eventId, button));
      return [new Date(d.failedAt).toISOString(),
              `${d.originTopic}[${d.originPartition}]@${d.originOffset}`,
              d.key || "", d.reason, d.errorClass, d.attempts, button];
    }));
}
async function refresh() {
  try {
    const response = await fetch("/admin/data", {credentials: "same-origin"});
    if (response.ok) render(await response.json());
    else if (response.status === 401) location.reload();
  } catch (err) { /* the next tick tries again */ }
}
render(JSON.parse(document.getElementById("initial-data").textContent));
setInterval(refresh, refreshMs);
"""

_DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="sluice-csrf" content="{csrf}">
<title>Sluice operations</title><style>{style}</style></head>
<body data-refresh-ms="{refresh_ms}">
<h1>Sluice operations</h1>
<p class="muted">As of <span id="generated"></span>; refreshed every {refresh_s} s.</p>
<div id="notices"></div>
<h2>Agents: throughput and lag (group <code>{group}</code>)</h2><div id="agents"></div>
<h2>Dead letters (<span id="dlq-total"></span>)</h2>
<div id="replay-result" class="muted"></div><div id="dead-letters"></div>
<div class="grid">
<div><h2>Order funnel</h2><div id="funnel"></div><div id="order-statuses"></div></div>
<div><h2>Webhooks by status</h2><div id="webhook-statuses"></div></div>
<div><h2>Lead delivery by partner</h2><div id="leads"></div></div>
<div><h2>Notifications by channel</h2><div id="notifications"></div></div>
</div>
<h2>Latest webhooks</h2><div id="webhooks"></div>
<script type="application/json" id="initial-data">{data}</script>
<script nonce="{nonce}">{script}</script>
</body></html>
"""

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice operations: sign in</title>
<style>{style}</style></head><body>
<h1>Sluice operations</h1>
{message}
<form method="post" action="/admin/login">
<label>Admin token <input type="password" name="token" autocomplete="off" required
autofocus></label> <button type="submit">Sign in</button>
</form>
<p class="muted">The token is kept in an HttpOnly cookie for this browser session.</p>
</body></html>
"""


def _headers(nonce: str | None = None) -> dict[str, str]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {script}; style-src 'unsafe-inline'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }


def login_page(message: str | None = None, status: int = 401) -> web.Response:
    """The login form (401: the page itself was refused), saying ``message`` if given."""
    shown = f'<p class="notice">{html.escape(message)}</p>' if message else ""
    return web.Response(
        text=_LOGIN.format(style=_STYLE, message=shown),
        status=status,
        content_type="text/html",
        headers=_headers(),
    )


def dashboard_page(data: dict[str, Any], *, csrf: str, group: str) -> web.Response:
    """The dashboard with ``data`` (what ``GET /admin/data`` answers) drawn in."""
    nonce = secrets.token_urlsafe(16)
    # "<" escaped, so no value can close the script element or open a comment.
    embedded = json.dumps(data).replace("<", "\\u003c")
    page = _DASHBOARD.format(
        csrf=html.escape(csrf),
        style=_STYLE,
        refresh_ms=REFRESH_S * 1000,
        refresh_s=REFRESH_S,
        group=html.escape(group),
        data=embedded,
        nonce=nonce,
        script=_SCRIPT,
    )
    return web.Response(text=page, content_type="text/html", headers=_headers(nonce))
