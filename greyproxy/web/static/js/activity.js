// Activity page: connections (the request log) and captured HTTP traffic (transactions), with a
// transaction detail view: headers, pretty-printed bodies, HAR download and curl command.
// The transactions API arrives with TLS interception; until then its tab shows an empty state.
import {
  $, $$, api, debounce, emptyRow, formValues, get, h, isMissing, live, prettyBody, query, renderPager,
  newestGet, reportError, startPage, timeEl, toast, returnTo, revealDetail,
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

// What external middlewares did to an exchange: deny/block in red, rewrites and tags in blue.
function middlewareBadges(t) {
  return (t.middleware_actions || []).map((a) => {
    const kind = ["deny", "block", "error"].includes(a.action) ? "bad" : "info";
    const title = `${a.middleware} · ${a.hook}${a.tags ? ` · ${JSON.stringify(a.tags)}` : ""}`;
    return h("span", { class: `badge badge-${kind} badge-mw`, title }, a.action);
  });
}

// The traffic view lives in the address bar (t_* filters, sort, txn): a link reopens it as is.
const TRAFFIC_KEYS = ["search", "body", "container", "destination", "method", "status"];
const STATUS_RANGES = { "2xx": [200, 299], "3xx": [300, 399], "4xx": [400, 499], "5xx": [500, 599] };
let sortKey = "timestamp";
let sortDir = "desc";
let trafficItems = [];

function trafficParams() {
  const f = formValues(trafficFilters);
  const [min, max] = STATUS_RANGES[f.status] || [];
  return {
    search: f.search, body: f.body, container: f.container, destination: f.destination, method: f.method,
    status_min: min, status_max: max, has_error: f.status === "error" ? "true" : undefined,
  };
}

function readTrafficUrl() {
  const params = new URLSearchParams(location.search);
  for (const key of TRAFFIC_KEYS) if (params.has(`t_${key}`)) trafficFilters.elements[key].value = params.get(`t_${key}`);
  if (params.get("sort")) sortKey = params.get("sort");
  if (params.get("dir") === "asc") sortDir = "asc";
  trafficOffset = Number(params.get("t_offset")) || 0;
  return Number(params.get("txn")) || null;
}

function writeTrafficUrl() {
  const params = new URLSearchParams(location.search);
  const f = formValues(trafficFilters);
  for (const key of TRAFFIC_KEYS) if (f[key]) params.set(`t_${key}`, f[key]); else params.delete(`t_${key}`);
  if (sortKey !== "timestamp" || sortDir !== "desc") { params.set("sort", sortKey); params.set("dir", sortDir); } else { params.delete("sort"); params.delete("dir"); }
  if (trafficOffset) params.set("t_offset", String(trafficOffset)); else params.delete("t_offset");
  if (selectedTxn) params.set("txn", String(selectedTxn)); else params.delete("txn");
  history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
}

function sizeText(bytes) {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
const sizeOf = (t) => (t.request_body_size || 0) + (t.response_body_size || 0);

function sortValue(t, key) {
  if (key === "size") return sizeOf(t);
  if (key === "timestamp") return Date.parse(t.timestamp) || 0;
  return t[key] ?? "";
}

function sortedItems() {
  const sign = sortDir === "asc" ? 1 : -1;
  return [...trafficItems].sort((a, b) => {
    const x = sortValue(a, sortKey);
    const y = sortValue(b, sortKey);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sign * (c || a.id - b.id);
  });
}

function setSort(key, dir) {
  sortKey = key;
  sortDir = dir;
  const select = $("#traffic-sort");
  const value = `${key}:${dir}`;
  if ([...select.options].some((o) => o.value === value)) select.value = value;
  renderTraffic();
  writeTrafficUrl();
}

function renderTraffic() {
  for (const th of $$("thead th", trafficTable)) {
    const key = $("button.sort", th)?.dataset.sort;
    if (key === sortKey) th.setAttribute("aria-sort", sortDir === "asc" ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  const body = $("tbody", trafficTable);
  body.replaceChildren(...sortedItems().map((t) => {
    const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
    return h("tr", { dataset: { id: t.id }, tabindex: "0", class: selectedTxn === t.id ? "is-selected" : "" },
      cell("Time", timeEl(t.timestamp, "absolute")),
      cell("Method", h("code", {}, t.method)),
      cell("URL", h("span", { class: "url" }, t.url)),
      cell("Status", statusBadge(t.status_code), ...middlewareBadges(t)),
      cell("Container", t.container_name),
      cell("Size", h("span", { title: `request ${t.request_body_size ?? 0} B · response ${t.response_body_size ?? 0} B` },
        sizeText(sizeOf(t)))),
      cell("Took", t.duration_ms == null ? "" : `${t.duration_ms} ms`));
  }));
  if (!trafficItems.length) body.append(emptyRow(trafficTable, "No HTTP traffic matches."));
}

let trafficTotal = 0;

const trafficGet = newestGet();

async function refreshTraffic() {
  if (!trafficAvailable) return;
  try {
    const data = await trafficGet("/api/dashboard/transactions", { ...trafficParams(), limit: PAGE_SIZE, offset: trafficOffset });
    trafficItems = data.items;
    trafficTotal = data.total;
    renderTraffic();
    $("#traffic-summary").textContent = `${data.total} matching · sorting applies to the ${data.items.length} on this page`;
    updateExport();
    writeTrafficUrl();
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

// From a transaction to its connection (the log), the rule that let it through and its session.
function relatedLinks(t) {
  const host = t.destination_host;
  const logs = new URLSearchParams({ container: t.container_name, destination: host });
  const links = [h("a", { href: `/logs?${logs}`, class: "link-connection" }, "Connection log")];
  if (t.rule_id) links.push(" · ", h("a", { href: `/rules?rule=${t.rule_id}`, class: "link-rule" }, `Rule #${t.rule_id}`));
  if (t.session_id) links.push(" · ", h("a", { href: `/sessions?highlight=${encodeURIComponent(t.session_id)}`, class: "link-session" },
    `Session ${t.session_id}`));
  links.push(" · ", h("a", { href: `/activity?tab=traffic&txn=${t.id}`, class: "link-self" }, "Link to this"));
  return links;
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
  writeTrafficUrl();
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
    writeTrafficUrl();
    returnTo($(`tbody tr[data-id="${id}"]`, trafficTable));
  } }, "Close");
  detailBox.replaceChildren(
    h("div", { class: "card-head" }, h("h2", {}, `${t.method} `, h("span", { class: "url" }, t.url)), close),
    h("dl", { class: "kv" },
      h("dt", {}, "Time"), h("dd", {}, new Date(t.timestamp).toLocaleString()),
      h("dt", {}, "Container"), h("dd", {}, t.container_name),
      h("dt", {}, "Status"), h("dd", {}, statusBadge(t.status_code)),
      t.duration_ms != null ? [h("dt", {}, "Duration"), h("dd", {}, `${t.duration_ms} ms`)] : null,
      h("dt", {}, "Sizes"), h("dd", {}, `request ${sizeText(t.request_body_size ?? 0)} · response ${sizeText(t.response_body_size ?? 0)}`),
      h("dt", {}, "Related"), h("dd", { class: "related" }, relatedLinks(t)),
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

// "Export HAR" downloads everything the filters select, every page (the route streams it).
let exportLink = null;
function updateExport() {
  if (!exportLink) return;
  const { body, ...params } = trafficParams();
  exportLink.href = `/api/transactions/export/har?${query(params)}`;
  // The export route takes every filter but the body search: say so rather than export more.
  exportLink.toggleAttribute("aria-disabled", Boolean(body));
  exportLink.classList.toggle("is-disabled", Boolean(body));
  exportLink.title = body ? "HAR export does not take the body search: clear it to export what the other filters select" : "";
  exportLink.textContent = body ? "Export HAR (clear the body search)" : `Export HAR (all ${trafficTotal} matching)`;
}

async function setUpExport() {
  if (!trafficAvailable || !(await routeExists("/api/transactions/export/har?limit=1"))) return;
  exportLink = h("a", { class: "btn btn-small", id: "har-export", download: "greyproxy.har",
    onclick: (e) => { if (exportLink.classList.contains("is-disabled")) e.preventDefault(); } }, "Export HAR");
  updateExport();
  trafficFilters.append(exportLink);
}

startPage(async () => {
  const logs = new LogTable({ table: $("#activity-table"), filters: $("#activity-filters"), pager: $("#activity-table-pager") });
  for (const tab of $$("[role=tab]")) tab.addEventListener("click", () => showTab(tab.id.replace("tab-", "")));
  const refilter = debounce(() => { trafficOffset = 0; refreshTraffic(); }, 300);
  trafficFilters.addEventListener("input", refilter);
  trafficFilters.addEventListener("change", refilter);
  trafficFilters.addEventListener("submit", (e) => e.preventDefault());
  $("thead", trafficTable).addEventListener("click", (e) => {
    const button = e.target.closest("button.sort");
    if (!button) return;
    const key = button.dataset.sort;
    setSort(key, key === sortKey && sortDir === "desc" ? "asc" : "desc");
  });
  $("#traffic-sort").addEventListener("change", (e) => setSort(...e.target.value.split(":")));
  const deepTxn = readTrafficUrl();
  if ([...$("#traffic-sort").options].some((o) => o.value === `${sortKey}:${sortDir}`)) $("#traffic-sort").value = `${sortKey}:${sortDir}`;
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
  if (deepTxn && trafficAvailable) {
    showTab("traffic");
    showTransaction(deepTxn);
  }
});
