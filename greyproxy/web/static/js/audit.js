// Audit page (D16): the control-plane changes, newest first, with who made them; a row opens
// what the object was before and after.
import { $, $$, debounce, emptyRow, formValues, get, h, live, prettyBody, renderPager, reportError, startPage, timeEl } from "./core.js";

const PAGE_SIZE = 50;
const table = $("#audit-table");
const filters = $("#audit-filters");
let offset = 0;

function detailRow(entry) {
  const block = (title, value) => h("section", { class: "detail-section" }, h("h3", {}, title),
    value == null ? h("p", { class: "muted" }, "—") : h("pre", { class: "code body" }, prettyBody(value)));
  return h("tr", { class: "detail-row" }, h("td", { colspan: 4 },
    h("div", { class: "audit-diff" }, block("Before", entry.before), block("After", entry.after)),
    h("p", { class: "muted small" }, `hash ${entry.hash.slice(0, 16)}… · follows ${entry.prev_hash ? `${entry.prev_hash.slice(0, 16)}…` : "nothing (first entry)"}`)));
}

function row(entry) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  const tr = h("tr", { dataset: { id: entry.id }, tabindex: "0" },
    cell("Time", timeEl(entry.timestamp, "absolute")),
    cell("Actor", h("code", {}, entry.actor)),
    cell("Change", h("span", { class: "badge badge-info" }, entry.kind)),
    cell("Target", entry.target || ""));
  const toggle = () => {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("detail-row")) next.remove();
    else tr.after(detailRow(entry));
  };
  tr.addEventListener("click", toggle);
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter") toggle(); });
  return tr;
}

async function refresh() {
  const f = formValues(filters);
  try {
    const data = await get("/api/audit", { kind: f.kind, actor: f.actor, limit: PAGE_SIZE, offset });
    const body = $("tbody", table);
    body.replaceChildren(...data.items.map(row));
    if (!data.items.length) body.append(emptyRow(table, "No changes match."));
    renderPager($("#audit-table-pager"), { total: data.total, limit: PAGE_SIZE, offset }, (o) => { offset = o; refresh(); });
  } catch (err) {
    reportError(err);
  }
}

startPage(async () => {
  const again = debounce(() => { offset = 0; refresh(); }, 300);
  for (const el of $$("select, input", filters)) el.addEventListener("input", again);
  filters.addEventListener("submit", (e) => e.preventDefault());
  // Anything that changes policy or settings is an audit entry a moment later.
  live.on(["rule.*", "pending_request.allowed", "pending_request.dismissed", "settings.changed", "allowall.changed",
    "credential.*", "session.created", "session.deleted", "session.expired", "container_mode.*", "cert.reloaded",
    "config.reloaded"], debounce(refresh, 500));
  live.onResync(refresh);
  await refresh();
});
