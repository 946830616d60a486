// Audit page: the control-plane changes, newest first, with who made them; a row opens
// what the object was before and after.
import {
  $, $$, api, debounce, emptyRow, formValues, h, live, prettyBody, renderPager, newestGet, reportError, startPage, timeEl,
} from "./core.js";

const PAGE_SIZE = 50;
const table = $("#audit-table");
const filters = $("#audit-filters");
let offset = 0;

// "rule #25 allow agent1 → *.github.com:443" instead of "rule:25": the object as it was (or is).
function readableTarget(entry) {
  const target = entry.target || "";
  const obj = entry.after || entry.before || {};
  const [family, ident] = target.split(/:(.*)/s);
  const rule = obj.container_pattern !== undefined ? obj : obj.rule;
  const ruleText = (r) => `${r.action} ${r.container_pattern} → ${r.destination_pattern}:${r.port_pattern}`;
  if (family === "rule" && rule) return `rule #${ident} ${ruleText(rule)}`;
  if (family === "pending") {
    const what = obj.container_name ? ` ${obj.container_name} → ${obj.destination_host}:${obj.destination_port}` : "";
    return `pending request #${ident}${what}${obj.rule ? ` (rule #${obj.rule.id} ${ruleText(obj.rule)})` : ""}`;
  }
  if (family === "session") return `session ${ident}${obj.container_name ? ` (${obj.container_name})` : ""}`;
  if (family === "credential") return `credential ${obj.label || ident}`;
  if (family === "container_mode") return `container mode ${obj.container_pattern || ident}${obj.mode ? ` → ${obj.mode}` : ""}`;
  if (target) return target.replace(":", " ");
  return { "silent_mode": "silent mode", settings: "settings", ca: "the CA", config: "the configuration" }[entry.kind.split(".")[0]] || "";
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const shown = (v) => (v === undefined || v === null || v === "" ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));

// Only the fields that differ: a create lists what was set, a delete what was there.
function changedFields(entry) {
  const before = entry.before && typeof entry.before === "object" ? entry.before : {};
  const after = entry.after && typeof entry.after === "object" ? entry.after : {};
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  return keys.filter((k) => !same(before[k], after[k]) && !(before[k] == null && after[k] == null))
    .map((k) => [k, before[k], after[k]]);
}

function summary(entry) {
  const fields = changedFields(entry);
  if (!entry.before && entry.after) return "created";
  if (entry.before && !entry.after) return "deleted";
  if (!fields.length) return "no field changed";
  return fields.slice(0, 3).map(([k, b, a]) => `${k}: ${shown(b)} → ${shown(a)}`).join(" · ") +
    (fields.length > 3 ? ` · +${fields.length - 3} more` : "");
}

function detailRow(entry) {
  const fields = changedFields(entry);
  const table = fields.length
    ? h("table", { class: "headers audit-fields" },
      h("thead", {}, h("tr", {}, h("th", {}, "Field"), h("th", {}, "Before"), h("th", {}, "After"))),
      h("tbody", {}, fields.map(([k, b, a]) => h("tr", { dataset: { field: k } },
        h("th", { scope: "row" }, k), h("td", { class: "before" }, shown(b)), h("td", { class: "after" }, shown(a))))))
    : h("p", { class: "muted" }, "No field changed.");
  const raw = h("details", {}, h("summary", {}, "Whole objects"),
    h("div", { class: "audit-diff" },
      ...[["Before", entry.before], ["After", entry.after]].map(([title, value]) => h("section", { class: "detail-section" },
        h("h3", {}, title), value == null ? h("p", { class: "muted" }, "—") : h("pre", { class: "code body" }, prettyBody(value))))));
  return h("tr", { class: "detail-row" }, h("td", { colspan: 5 }, table, raw,
    h("p", { class: "muted small" }, `hash ${entry.hash.slice(0, 16)}… · follows ${entry.prev_hash ? `${entry.prev_hash.slice(0, 16)}…` : "nothing (first entry)"}`)));
}

function row(entry) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  const tr = h("tr", { dataset: { id: entry.id }, tabindex: "0" },
    cell("Time", timeEl(entry.timestamp, "absolute")),
    cell("Actor", h("code", {}, entry.actor)),
    cell("Change", h("span", { class: "badge badge-info" }, entry.kind)),
    cell("Target", h("span", { class: "audit-target", title: entry.target || "" }, readableTarget(entry))),
    cell("What changed", h("span", { class: "audit-summary small" }, summary(entry))));
  const toggle = () => {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("detail-row")) next.remove();
    else tr.after(detailRow(entry));
  };
  tr.addEventListener("click", toggle);
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter") toggle(); });
  return tr;
}

async function verifyChain() {
  const box = $("#verify-result");
  const button = $("#audit-verify");
  button.disabled = true;
  box.hidden = false;
  box.className = "notice";
  box.textContent = "Checking every entry…";
  try {
    const res = await api("POST", "/api/dashboard/audit-verify");
    box.textContent = res.intact
      ? `Audit log intact: ${res.checked} entr${res.checked === 1 ? "y" : "ies"}, each linked to the one before.`
      : `Audit log BROKEN: ${res.problem} (${res.checked} entries before it are intact).`;
    box.className = res.intact ? "notice notice-ok" : "notice notice-bad";
  } catch (err) {
    box.textContent = `Could not check: ${err.message}`;
  }
  button.disabled = false;
}

const listGet = newestGet();

async function refresh() {
  const f = formValues(filters);
  try {
    const data = await listGet("/api/audit", { kind: f.kind, actor: f.actor, limit: PAGE_SIZE, offset });
    const body = $("tbody", table);
    body.replaceChildren(...data.items.map(row));
    if (!data.items.length) body.append(emptyRow(table, "No changes match."));
    renderPager($("#audit-table-pager"), { total: data.total, limit: PAGE_SIZE, offset }, (o) => { offset = o; refresh(); });
  } catch (err) {
    reportError(err);
  }
}

startPage(async () => {
  $("#audit-verify").addEventListener("click", verifyChain);
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
