// Held HTTP requests (docs/request-rules.md), on the Pending page: single requests a request-level
// hold rule stopped on an allowed connection. Each card shows the method, URL, container, the
// redacted headers and a body preview, and answers it once, for a while, always, or denies it
// with a reason the agent is told. Live over /ws (pending_http.*); re-read after a reconnect.
import { $, api, h, live, newestGet, reportError, timeEl, toast } from "./core.js";

const ALLOW = [["once", "Allow once"], ["1h", "1 h"], ["24h", "24 h"], ["permanent", "Always"]];
const cards = new Map(); // request id -> card

function section() {
  return $("#held-requests");
}

function headersBlock(headers) {
  const lines = Object.entries(headers || {}).flatMap(([name, values]) => values.map((v) => `${name}: ${v}`));
  return h("details", {}, h("summary", {}, `${lines.length} header(s)`), h("pre", { class: "code small" }, lines.join("\n")));
}

async function answer(item, allow, duration, reason) {
  const card = cards.get(item.id);
  if (card) card.querySelectorAll("button, input").forEach((el) => { el.disabled = true; });
  try {
    const body = { duration };
    if (!allow && reason) body.reason = reason;
    const out = await api("POST", `/api/pending-http/${item.id}/${allow ? "allow" : "deny"}`, body);
    toast(`${item.method} ${item.url} ${allow ? "allowed" : "denied"}${out.rule ? ` (rule #${out.rule.id})` : ""}`, "ok");
    drop(item.id);
  } catch (err) {
    if (card) card.querySelectorAll("button, input").forEach((el) => { el.disabled = false; });
    if (err.status === 409 || err.status === 404) { drop(item.id); return; } // answered elsewhere, or gone
    reportError(err);
  }
}

function render(item) {
  const reason = h("input", { type: "text", placeholder: "Reason told to the agent (optional)", maxlength: "1000",
                              "aria-label": "Reason for a denial" });
  const allowButtons = ALLOW.map(([duration, label]) =>
    h("button", { type: "button", class: "btn btn-small btn-ok", onclick: () => answer(item, true, duration) }, label));
  const preview = item.body_preview != null
    ? h("pre", { class: "code small held-body" }, item.body_preview || "(empty body)")
    : h("p", { class: "muted small" }, "Body not read (too large, or the client waits for 100 Continue).");
  const card = h("article", { class: "card held-request", "data-id": String(item.id) },
    h("h3", {}, h("code", {}, item.method), " ", h("span", { class: "held-url" }, item.url)),
    h("p", { class: "muted small" }, `${item.container_name} · ${item.destination_host}:${item.destination_port} · `,
      timeEl(item.created_at), item.body_size != null ? ` · ${item.body_size} bytes` : ""),
    headersBlock(item.headers), preview,
    h("div", { class: "actions" }, ...allowButtons,
      h("button", { type: "button", class: "btn btn-small btn-bad", onclick: () => answer(item, false, "once", reason.value.trim()) }, "Deny"),
      h("button", { type: "button", class: "btn btn-small btn-bad", onclick: () => answer(item, false, "permanent", reason.value.trim()) }, "Deny always")),
    reason);
  return card;
}

function add(item) {
  const box = section();
  if (!box || cards.has(item.id) || item.status !== "pending") return;
  const card = render(item);
  cards.set(item.id, card);
  $("#held-requests-list", box).append(card);
  box.hidden = false;
}

function drop(id) {
  const card = cards.get(id);
  if (card) card.remove();
  cards.delete(id);
  const box = section();
  if (box) box.hidden = cards.size === 0;
}

const listGet = newestGet();

async function refresh() {
  try {
    const data = await listGet("/api/pending-http", { status: "pending", limit: 200 });
    const ids = new Set(data.items.map((i) => i.id));
    for (const id of [...cards.keys()]) if (!ids.has(id)) drop(id);
    data.items.forEach(add);
  } catch (err) {
    reportError(err);
  }
}

if (section()) {
  live.on("pending_http.created", add);
  live.on(["pending_http.allowed", "pending_http.denied", "pending_http.expired", "pending_http.gone"], (d) => drop(d.id));
  live.onResync(refresh);
  refresh();
}
