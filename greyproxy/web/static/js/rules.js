// Rules page: list with filters and expiry, create, edit (dialog) and delete.
// Validation is the API's: its message is shown next to the form and nothing is saved.
import {
  $, api, badge, debounce, destExtras, emptyRow, formValues, get, h, isoToLocal, live, localToIso, relative,
  renderPager, reportError, showFormError, startPage, timeEl, toast,
} from "./core.js";

const PAGE_SIZE = 50;
const table = $("#rules-table");
const filters = $("#rule-filters");
const createPanel = $("#rule-create");
const createForm = $("#rule-form");
const toggle = $("#new-rule-toggle");
const dialog = $("#rule-dialog");
const editForm = $("#rule-edit-form");
let offset = 0;
let rules = new Map();
let editing = null;
const selected = new Set(); // rule ids (strings) ticked for a bulk delete; kept across live refreshes

function expiryCell(rule) {
  if (!rule.expires_at) return h("span", { class: "muted" }, "never");
  const expired = !rule.is_active;
  return h("time", {
    datetime: rule.expires_at,
    title: new Date(rule.expires_at).toLocaleString(),
    class: expired ? "expired" : "expires",
    dataset: { mode: "relative" },
  }, expired ? `expired ${relative(rule.expires_at)}` : relative(rule.expires_at));
}

function sourceCell(rule) {
  if (rule.source === "builtin") return badge("built-in", "muted");
  if (rule.source === "session") return h("span", { title: rule.session_id || "" }, badge("session", "info"));
  return h("span", { class: "muted" }, rule.created_by || "");
}

function row(rule) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  const what = `rule #${rule.id} ${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}`;
  return h("tr", { dataset: { id: rule.id }, class: rule.is_active ? "" : "is-expired" },
    h("td", { class: "select-cell" }, rule.source === "builtin" ? null : h("input", {
      type: "checkbox", class: "select", checked: selected.has(String(rule.id)), "aria-label": `Select ${what}` })),
    cell("Action", badge(rule.action)),
    cell("Container", h("code", {}, rule.container_pattern)),
    cell("Destination", h("code", {}, rule.destination_pattern), ...destExtras(rule)),
    cell("Port", h("code", {}, rule.port_pattern)),
    cell("Expires", expiryCell(rule)),
    cell("Last used", timeEl(rule.last_used_at)),
    cell("Source", sourceCell(rule)),
    cell("Notes", rule.notes || ""),
    h("td", { class: "row-actions" },
      h("button", { type: "button", class: "btn btn-small", dataset: { edit: rule.id },
        "aria-label": `Edit rule ${rule.id}` }, "Edit"),
      h("button", { type: "button", class: "btn btn-small btn-bad", dataset: { delete: rule.id },
        "aria-label": `Delete rule ${rule.id}` }, "Delete")),
  );
}

async function refresh() {
  const f = formValues(filters);
  const params = {
    container: f.container, destination: f.destination, action: f.action,
    include_expired: f.include_expired, limit: PAGE_SIZE, offset,
  };
  try {
    const data = await get("/api/rules", params);
    if (!data.items.length && offset > 0) { // the last rule of a page went away
      offset = Math.max(0, offset - PAGE_SIZE);
      return refresh();
    }
    rules = new Map(data.items.map((r) => [String(r.id), r]));
    const body = $("tbody", table);
    body.replaceChildren(...data.items.map(row));
    if (!data.items.length) body.append(emptyRow(table, "No rules match."));
    renderPager($("#rules-pager"), { total: data.total, limit: PAGE_SIZE, offset }, (o) => { offset = o; refresh(); });
    for (const id of [...selected]) if (!rules.has(id)) selected.delete(id); // only what is shown stays ticked
    shownTotal = data.total;
    updateBulk();
  } catch (err) {
    reportError(err);
  }
}
const refreshSoon = debounce(refresh, 150);

// ---- create -------------------------------------------------------------------------------------

function showCreate(open) {
  createPanel.hidden = !open;
  toggle.setAttribute("aria-expanded", String(open));
  if (open) createForm.elements.container_pattern.focus();
}

async function create(event) {
  event.preventDefault();
  const f = formValues(createForm);
  const body = {
    container_pattern: f.container_pattern,
    destination_pattern: f.destination_pattern,
    port_pattern: f.port_pattern || "*",
    action: f.action,
    notes: f.notes || null,
  };
  if (f.lifetime) {
    body.rule_type = "temporary";
    body.expires_in_seconds = Number(f.lifetime);
  }
  showFormError(createForm, "");
  try {
    const rule = await api("POST", "/api/rules", body);
    toast(`Rule #${rule.id} saved: ${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}`, "ok");
    createForm.reset();
    showCreate(false);
    refresh();
  } catch (err) {
    showFormError(createForm, err.message);
  }
}

// Links such as "Rule…" on the dashboard open the form pre-filled: /rules?new=1&destination=…
function prefillFromUrl() {
  const params = new URLSearchParams(location.search);
  if (!params.has("new")) return;
  for (const name of ["container_pattern", "destination_pattern", "port_pattern", "action"]) {
    const short = name.replace("_pattern", "");
    if (params.has(short)) createForm.elements[name].value = params.get(short);
  }
  showCreate(true);
}

// /rules?rule=N (a link from a transaction or the audit log): filter down to that rule and mark it.
const linkedRule = new URLSearchParams(location.search).get("rule");
async function showLinkedRule() {
  if (!linkedRule) return;
  try {
    const rule = await get(`/api/rules/${encodeURIComponent(linkedRule)}`);
    filters.elements.container.value = rule.container_pattern;
    filters.elements.destination.value = rule.destination_pattern;
    filters.elements.include_expired.checked = true;
  } catch (err) {
    toast(err.status === 404 ? `Rule #${linkedRule} no longer exists` : err.message, "error");
  }
}
function markLinkedRule() {
  const tr = linkedRule && table.querySelector(`tbody tr[data-id="${CSS.escape(linkedRule)}"]`);
  if (!tr) return;
  tr.classList.add("is-selected");
  tr.scrollIntoView({ block: "center" });
}

// ---- edit / delete ------------------------------------------------------------------------------

function openEdit(rule) {
  editing = rule;
  for (const name of ["container_pattern", "destination_pattern", "port_pattern", "action"]) {
    editForm.elements[name].value = rule[name];
  }
  editForm.elements.notes.value = rule.notes || "";
  editForm.elements.expires_at.value = isoToLocal(rule.expires_at);
  showFormError(editForm, "");
  dialog.showModal();
}

async function saveEdit(event) {
  event.preventDefault();
  const f = formValues(editForm);
  const changes = {};
  for (const name of ["container_pattern", "destination_pattern", "port_pattern", "action"]) {
    if (f[name] !== editing[name]) changes[name] = f[name];
  }
  if ((f.notes || null) !== (editing.notes || null)) changes.notes = f.notes;
  if (f.expires_at !== isoToLocal(editing.expires_at)) changes.expires_at = localToIso(f.expires_at); // "" = never
  try {
    if (Object.keys(changes).length) await api("PUT", `/api/rules/${editing.id}`, changes);
    dialog.close();
    toast(`Rule #${editing.id} saved`, "ok");
    refresh();
  } catch (err) {
    showFormError(editForm, err.message);
  }
}

async function remove(rule) {
  const what = `${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}`;
  if (!window.confirm(`Delete rule #${rule.id} (${what})? Connections it allowed are closed.`)) return;
  try {
    await api("DELETE", `/api/rules/${rule.id}`);
    toast(`Rule #${rule.id} deleted`);
    refresh();
  } catch (err) {
    reportError(err);
  }
}

// ---- bulk delete ----------------------------------------------------------------------------------

let shownTotal = 0;
const bulkProgress = $("#rules-bulk-progress");

function updateBulk() {
  const boxes = [...table.querySelectorAll("tbody .select")];
  $("#rules-selected-count").textContent = `${selected.size} selected`;
  $("#rules-select-all-text").textContent = shownTotal > rules.size
    ? `Select all ${boxes.length} on this page (of ${shownTotal} matching)` : `Select all ${boxes.length} shown`;
  const all = $("#rules-select-all");
  all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
  all.indeterminate = !all.checked && boxes.some((b) => b.checked);
  $("#rules-bulk-delete").disabled = !selected.size || bulkProgress.dataset.running === "1";
}

async function bulkDelete() {
  const ids = [...selected];
  if (!ids.length) return;
  const list = ids.slice(0, 5).map((id) => {
    const r = rules.get(id);
    return r ? `#${id} ${r.action} ${r.container_pattern} → ${r.destination_pattern}:${r.port_pattern}` : `#${id}`;
  }).join("\n");
  const more = ids.length > 5 ? `\n… and ${ids.length - 5} more` : "";
  if (!window.confirm(`Delete ${ids.length} rule${ids.length === 1 ? "" : "s"}? Connections they allowed are closed.\n\n${list}${more}`)) return;
  bulkProgress.dataset.running = "1";
  bulkProgress.hidden = false;
  const bar = $("progress", bulkProgress);
  const text = $(".bulk-progress-text", bulkProgress);
  bar.max = ids.length;
  let done = 0;
  const failed = [];
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try {
        await api("DELETE", `/api/rules/${id}`);
      } catch (err) {
        if (err.status !== 404) failed.push(`#${id}: ${err.message}`); // gone already counts as deleted
      }
      selected.delete(id);
      done += 1;
      bar.value = done;
      text.textContent = `Deleting ${done} of ${ids.length}…`;
    }
  };
  updateBulk();
  await Promise.all([worker(), worker(), worker(), worker()]);
  bulkProgress.dataset.running = "0";
  const summary = `Deleted ${ids.length - failed.length} of ${ids.length} rule${ids.length === 1 ? "" : "s"}` +
    (failed.length ? `; not deleted: ${failed.join("; ")}` : "");
  text.textContent = summary;
  toast(summary, failed.length ? "error" : "ok");
  refresh();
}

startPage(async () => {
  table.addEventListener("change", (event) => {
    const box = event.target.closest(".select");
    if (!box) return;
    const id = box.closest("tr").dataset.id;
    if (box.checked) selected.add(id); else selected.delete(id);
    updateBulk();
  });
  $("#rules-select-all").addEventListener("change", (event) => {
    // Only the rows the filter shows on this page: a hidden rule is never deleted by accident.
    for (const box of table.querySelectorAll("tbody .select")) {
      box.checked = event.target.checked;
      const id = box.closest("tr").dataset.id;
      if (box.checked) selected.add(id); else selected.delete(id);
    }
    updateBulk();
  });
  $("#rules-bulk-delete").addEventListener("click", bulkDelete);
  toggle.addEventListener("click", () => showCreate(createPanel.hidden));
  $("#rule-cancel").addEventListener("click", () => { createForm.reset(); showFormError(createForm, ""); showCreate(false); });
  createForm.addEventListener("submit", create);
  editForm.addEventListener("submit", saveEdit);
  $("[data-close]", dialog).addEventListener("click", () => dialog.close());
  table.addEventListener("click", (event) => {
    const edit = event.target.closest("[data-edit]");
    const del = event.target.closest("[data-delete]");
    if (edit) openEdit(rules.get(edit.dataset.edit));
    if (del) remove(rules.get(del.dataset.delete));
  });
  const refilter = debounce(() => { offset = 0; refresh(); }, 250);
  filters.addEventListener("input", refilter);
  filters.addEventListener("change", refilter);
  filters.addEventListener("submit", (e) => e.preventDefault());
  live.on("rule.*", refreshSoon);
  live.onResync(refresh);
  prefillFromUrl();
  await showLinkedRule();
  await refresh();
  markLinkedRule();
});
