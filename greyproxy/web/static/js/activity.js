// Activity page: connections (the request log) and captured HTTP traffic (transactions), with a
// transaction detail view: headers, pretty-printed bodies, HAR download and curl command.
// The transactions API arrives with TLS interception; until then its tab shows an empty state.
import {
  $, $$, api, debounce, emptyRow, formValues, get, h, isMissing, live, prettyBody, query, renderPager,
  reportError, startPage, timeEl, toast, returnTo, revealDetail,
} from "./core.js";
import { LogTable } from "./logtable.js";

const PAGE_SIZE = 50;
const trafficTable = $("#traffic-table");
const trafficFilters = $("#traffic-filters");
const detailBox = $("#txn-detail");
let trafficOffset = 0;
let trafficAvailable = true;
let selectedTxn = null;

// ---- tabs ---------------------------------------------------------------------------------------

function showTab(name) {
  for (const tab of $$("[role=tab]")) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
  }
  const params = new URLSearchParams(location.search);
  if (name === "connections") params.delete("tab"); else params.set("tab", name);
  history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
}

// ---- transactions -------------------------------------------------------------------------------

function statusBadge(code) {
  if (!code) return h("span", { class: "muted" }, "—");
  const kind = code >= 500 ? "bad" : code >= 400 ? "warn" : code >= 300 ? "info" : "ok";
  return h("span", { class: `badge badge-${kind}` }, String(code));
}

// What external middlewares did to an exchange (§13): deny/block in red, rewrites and tags in blue.
function middlewareBadges(t) {
  return (t.middleware_actions || []).map((a) => {
    const kind = ["deny", "block", "error"].includes(a.action) ? "bad" : "info";
    const title = `${a.middleware} · ${a.hook}${a.tags ? ` · ${JSON.stringify(a.tags)}` : ""}`;
    return h("span", { class: `badge badge-${kind} badge-mw`, title }, a.action);
  });
}

async function refreshTraffic() {
  if (!trafficAvailable) return;
  const f = formValues(trafficFilters);
  try {
    const data = await get("/api/transactions", {
      container: f.container, destination: f.destination, method: f.method, limit: PAGE_SIZE, offset: trafficOffset,
    });
    const body = $("tbody", trafficTable);
    body.replaceChildren(...data.items.map((t) => {
      const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
      return h("tr", { dataset: { id: t.id }, tabindex: "0", class: selectedTxn === t.id ? "is-selected" : "" },
        cell("Time", timeEl(t.timestamp, "absolute")),
        cell("Method", h("code", {}, t.method)),
        cell("URL", h("span", { class: "url" }, t.url)),
        cell("Status", statusBadge(t.status_code), ...middlewareBadges(t)),
        cell("Container", t.container_name),
        cell("Took", t.duration_ms == null ? "" : `${t.duration_ms} ms`));
    }));
    if (!data.items.length) body.append(emptyRow(trafficTable, "No HTTP traffic matches."));
    renderPager($("#traffic-table-pager"), { total: data.total, limit: PAGE_SIZE, offset: trafficOffset }, (o) => {
      trafficOffset = Math.max(0, o);
      refreshTraffic();
    });
  } catch (err) {
    if (isMissing(err)) {
      trafficAvailable = false;
      $("#traffic-empty").hidden = false;
      $("#traffic-body").hidden = true;
      return;
    }
    reportError(err);
  }
}

function headersBlock(title, headers) {
  const rows = [];
  for (const [name, values] of Object.entries(headers || {})) {
    for (const value of [].concat(values)) rows.push(h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, String(value))));
  }
  return h("section", { class: "detail-section" },
    h("h3", {}, title),
    rows.length ? h("table", { class: "headers" }, h("tbody", {}, rows)) : h("p", { class: "muted" }, "none"));
}

function bodyBlock(title, body, contentType, size, truncated) {
  const meta = [contentType, size != null ? `${size} bytes` : null, truncated ? "truncated" : null].filter(Boolean).join(" · ");
  return h("section", { class: "detail-section" },
    h("h3", {}, title, meta ? h("span", { class: "muted small" }, ` ${meta}`) : null),
    body ? h("pre", { class: "code body" }, prettyBody(body)) : h("p", { class: "muted" }, size ? "(not stored: binary content)" : "empty"));
}

// The export routes arrive with their own issue; a button appears only once its route answers.
// GET, not HEAD: gevent's server answers a HEAD without Content-Length with a stray chunked
// terminator, which breaks the browser's next response on that keep-alive connection.
async function routeExists(path) {
  try {
    const res = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    return res.ok;
  } catch {
    return false;
  }
}

async function showTransaction(id) {
  selectedTxn = id;
  for (const tr of $$("tbody tr", trafficTable)) tr.classList.toggle("is-selected", Number(tr.dataset.id) === id);
  detailBox.hidden = false;
  detailBox.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  revealDetail(detailBox);
  let t;
  try {
    t = await get(`/api/transactions/${id}`);
  } catch (err) {
    detailBox.replaceChildren(h("p", { class: "form-error" }, err.message));
    return;
  }
  const tools = h("div", { class: "row" });
  const close = h("button", { type: "button", class: "btn btn-small", onclick: () => {
    detailBox.hidden = true;
    selectedTxn = null;
    returnTo($(`tbody tr[data-id="${id}"]`, trafficTable));
  } }, "Close");
  detailBox.replaceChildren(
    h("div", { class: "card-head" }, h("h2", {}, `${t.method} `, h("span", { class: "url" }, t.url)), close),
    h("dl", { class: "kv" },
      h("dt", {}, "Time"), h("dd", {}, new Date(t.timestamp).toLocaleString()),
      h("dt", {}, "Container"), h("dd", {}, t.container_name),
      h("dt", {}, "Status"), h("dd", {}, statusBadge(t.status_code)),
      t.duration_ms != null ? [h("dt", {}, "Duration"), h("dd", {}, `${t.duration_ms} ms`)] : null,
      t.substituted_credentials?.length ? [h("dt", {}, "Credentials substituted"), h("dd", {}, t.substituted_credentials.join(", "))] : null,
      t.session_id ? [h("dt", {}, "Session"), h("dd", {}, t.session_id)] : null,
      t.replay_of ? [h("dt", {}, "Replay of"), h("dd", {}, `#${t.replay_of}`)] : null,
      t.middleware_actions?.length ? [h("dt", {}, "Middlewares"), h("dd", {}, middlewareBadges(t))] : null),
    tools,
    headersBlock("Request headers", t.request_headers),
    bodyBlock("Request body", t.request_body, t.request_content_type, t.request_body_size, t.request_body_truncated),
    headersBlock("Response headers", t.response_headers),
    bodyBlock("Response body", t.response_body, t.response_content_type, t.response_body_size, t.response_body_truncated),
  );
  revealDetail(detailBox); // again, now that it has its full height
  const har = `/api/transactions/${id}/har`;
  const curl = `/api/transactions/${id}/curl`;
  if (await routeExists(har)) {
    tools.append(h("a", { class: "btn btn-small", href: har, download: `transaction-${id}.har` }, "Download HAR"));
    tools.append(h("button", { type: "button", class: "btn btn-small", title: "Send this request again (subject to the rules)",
      onclick: () => replayTransaction(id) }, "Replay"));
  }
  if (await routeExists(curl)) {
    tools.append(h("button", { type: "button", class: "btn btn-small", onclick: async () => {
      try {
        const text = await api("GET", curl);
        await navigator.clipboard.writeText(text);
        toast("curl command copied");
      } catch (err) {
        reportError(err);
      }
    } }, "Copy as curl"));
  }
}

async function replayTransaction(id) {
  try {
    const copy = await api("POST", `/api/transactions/${id}/replay`);
    toast(`Replayed: transaction #${copy.id}, status ${copy.status_code ?? "—"}`, "ok");
    trafficOffset = 0;
    await refreshTraffic();
    showTransaction(copy.id);
  } catch (err) {
    reportError(err);
  }
}

// "Export HAR" downloads what the filters select (the export route takes the list filters).
async function setUpExport() {
  if (!trafficAvailable || !(await routeExists("/api/transactions/export/har?limit=1"))) return;
  const link = h("a", { class: "btn btn-small", id: "har-export", download: "greyproxy.har" }, "Export HAR");
  const update = () => {
    const f = formValues(trafficFilters);
    link.href = `/api/transactions/export/har?${query({ container: f.container, destination: f.destination, method: f.method })}`;
  };
  update();
  trafficFilters.addEventListener("input", update);
  trafficFilters.addEventListener("change", update);
  trafficFilters.append(link);
}

startPage(async () => {
  const logs = new LogTable({ table: $("#activity-table"), filters: $("#activity-filters"), pager: $("#activity-table-pager") });
  for (const tab of $$("[role=tab]")) tab.addEventListener("click", () => showTab(tab.id.replace("tab-", "")));
  const refilter = debounce(() => { trafficOffset = 0; refreshTraffic(); }, 300);
  trafficFilters.addEventListener("input", refilter);
  trafficFilters.addEventListener("change", refilter);
  trafficFilters.addEventListener("submit", (e) => e.preventDefault());
  const open = (e) => {
    const tr = e.target.closest("tr[data-id]");
    if (tr && (e.type === "click" || e.key === "Enter")) showTransaction(Number(tr.dataset.id));
  };
  $("tbody", trafficTable).addEventListener("click", open);
  $("tbody", trafficTable).addEventListener("keydown", open);
  live.on("transaction.new", debounce(() => { if (trafficOffset === 0) refreshTraffic(); }, 500));
  live.on(["pending_request.allowed", "pending_request.dismissed"], debounce(() => logs.refresh(), 1500));
  live.onResync(() => { logs.refresh(); refreshTraffic(); });
  showTab(new URLSearchParams(location.search).get("tab") === "traffic" ? "traffic" : "connections");
  await Promise.all([logs.refresh(), refreshTraffic()]);
  await setUpExport();
});
