// Rules page: list with filters and expiry, create, edit (dialog) and delete.
// Validation is the API's: its message is shown next to the form and nothing is saved.
import {
  $, api, badge, debounce, destExtras, emptyRow, formValues, get, h, isoToLocal, live, localToIso, relative,
  renderPager, newestGet, reportError, showFormError, startPage, timeEl, toast,
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
  if (rule.rule_type === "until_restart") return h("span", { class: "muted" }, "at restart");
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
  // Who made it, as the audit log says (the same name the Audit page shows).
  const who = rule.audit_actor || rule.created_by || "";
  const title = rule.audit_actor && rule.created_by && rule.created_by !== rule.audit_actor
    ? `audit actor ${rule.audit_actor}; created_by ${rule.created_by}` : `created by ${who}`;
  return h("span", { class: "muted", title }, who);
}

function row(rule) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  const what = `rule #${rule.id} ${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}`;
  const off = rule.enabled === false;
  return h("tr", { dataset: { id: rule.id }, class: [rule.is_active ? "" : "is-expired", off ? "is-disabled" : ""].join(" ").trim() },
    h("td", { class: "select-cell" }, rule.source === "builtin" ? null : h("input", {
      type: "checkbox", class: "select", checked: selected.has(String(rule.id)), "aria-label": `Select ${what}` })),
    cell("Action", badge(rule.action), off ? [" ", badge("off", "muted")] : null),
    cell("Container", h("code", {}, rule.container_pattern)),
    cell("Destination", h("code", {}, rule.destination_pattern), ...destExtras(rule)),
    cell("Port", h("code", {}, rule.port_pattern)),
    cell("Expires", expiryCell(rule)),
    cell("Hits", h("span", { class: "count", title: "Connections the log says this rule decided" },
      rule.hits === undefined ? "—" : rule.hits.toLocaleString())),
    cell("Last used", timeEl(rule.last_used_at)),
    cell("Source", sourceCell(rule)),
    cell("Notes", rule.notes || ""),
    h("td", { class: "row-actions" },
      rule.enabled === undefined || rule.source === "builtin" ? null : h("label", { class: "check rule-enabled",
        title: off ? "Off: kept and listed, decides nothing" : "On: this rule decides connections" },
      h("input", { type: "checkbox", class: "enabled-toggle", checked: !off, dataset: { toggle: rule.id },
        "aria-label": `Rule ${rule.id} enabled` }), h("span", {}, "On")),
      h("button", { type: "button", class: "btn btn-small", dataset: { edit: rule.id },
        "aria-label": `Edit rule ${rule.id}` }, "Edit"),
      h("button", { type: "button", class: "btn btn-small btn-bad", dataset: { delete: rule.id },
        "aria-label": `Delete rule ${rule.id}` }, "Delete")),
  );
}

let sortKey = "created_at";
let sortDir = "desc";

function listParams() {
  const f = formValues(filters);
  return { search: f.search, container: f.container, destination: f.destination, action: f.action,
    include_expired: f.include_expired };
}

// The view (filters, sort, page) is in the address bar, so a link or a reload shows the same rules.
function writeUrl() {
  const params = new URLSearchParams(location.search);
  for (const key of ["new", "port", "blocked_for"]) params.delete(key); // the form's pre-fill, read once
  const f = listParams();
  for (const key of ["search", "container", "destination", "action", "include_expired"]) {
    if (f[key]) params.set(key, String(f[key])); else params.delete(key);
  }
  if (sortKey !== "created_at" || sortDir !== "desc") { params.set("sort", sortKey); params.set("dir", sortDir); } else { params.delete("sort"); params.delete("dir"); }
  if (offset) params.set("offset", String(offset)); else params.delete("offset");
  history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  // With ?new=1 the container/destination/action parameters pre-fill the form, not the filters.
  const keys = params.has("new") ? ["search"] : ["search", "container", "destination", "action"];
  for (const key of keys) if (params.has(key)) filters.elements[key].value = params.get(key);
  if (params.get("include_expired") === "true") filters.elements.include_expired.checked = true;
  if (params.get("sort")) sortKey = params.get("sort");
  if (params.get("dir") === "asc") sortDir = "asc";
  offset = Number(params.get("offset")) || 0;
}

function setSort(key, dir) {
  sortKey = key;
  sortDir = dir;
  const select = $("#rules-sort");
  if ([...select.options].some((o) => o.value === `${key}:${dir}`)) select.value = `${key}:${dir}`;
  offset = 0;
  refresh();
}

const listGet = newestGet();

async function refresh() {
  const params = { ...listParams(), sort: sortKey, dir: sortDir, limit: PAGE_SIZE, offset };
  for (const th of table.querySelectorAll("thead th")) {
    const key = th.querySelector("button.sort")?.dataset.sort;
    if (key === sortKey) th.setAttribute("aria-sort", sortDir === "asc" ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  writeUrl();
  try {
    const data = await listGet("/api/dashboard/rules", params);
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
  body.created_by = "dashboard"; // the same name the audit log gives this browser (provenance = audit actor)
  if (f.lifetime) {
    body.rule_type = "temporary";
    body.expires_in_seconds = Number(f.lifetime);
  }
  showFormError(createForm, "");
  if (!(await checkAll(createForm, body))) return;
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

// Every field's problem at once, in the API's own words, each field marked; true when all is well.
async function checkAll(form, body) {
  const fields = ["container_pattern", "destination_pattern", "port_pattern"];
  for (const name of fields) form.elements[name].removeAttribute("aria-invalid");
  let errors = {};
  try {
    ({ errors } = await api("POST", "/api/dashboard/check-rule",
      Object.fromEntries(fields.filter((n) => body[n] !== undefined).map((n) => [n, body[n]]))));
  } catch (err) {
    if (err.status !== 404) { showFormError(form, err.message); return false; }
    return true; // an older greyproxy: the save itself reports the first problem
  }
  const names = fields.filter((n) => errors[n]);
  for (const name of names) form.elements[name].setAttribute("aria-invalid", "true");
  if (!names.length) return true;
  showFormError(form, names.map((n) => errors[n]).join("\n"));
  form.elements[names[0]].focus();
  return false;
}

// Links such as "Rule…" on the dashboard open the form pre-filled: /rules?new=1&destination=…
function prefillFromUrl() {
  const params = new URLSearchParams(location.search);
  if (!params.has("new")) return;
  for (const name of ["container_pattern", "destination_pattern", "port_pattern", "action"]) {
    const short = name.replace("_pattern", "");
    if (params.has(short)) createForm.elements[name].value = params.get(short);
  }
  if (params.get("container") === "*") createForm.elements.container_pattern.value = ""; // never pre-fill "everyone"
  const hint = $("#prefill-hint");
  if (params.get("blocked_for")) {
    hint.textContent = `Blocked for: ${params.get("blocked_for")}. Name the container this rule is for` +
      " (a pattern such as agent* or * is your explicit choice).";
    hint.hidden = false;
  }
  showCreate(true);
}

// ---- export / import ------------------------------------------------------------------------------

// Export: every rule the filters select (all pages), in the shape POST /api/rules/ingest takes
// back. Built-in and session rules are left out: they are not the user's to move.
async function exportRules(event) {
  event.preventDefault();
  const out = [];
  try {
    for (let from = 0; ; from += 1000) {
      const data = await get("/api/rules", { container: listParams().container, destination: listParams().destination,
        action: listParams().action, limit: 1000, offset: from });
      for (const r of data.items) {
        if (r.source === "builtin" || r.source === "session") continue;
        const rule = { container_pattern: r.container_pattern, destination_pattern: r.destination_pattern,
          port_pattern: r.port_pattern, action: r.action, created_by: r.created_by };
        if (r.notes) rule.notes = r.notes;
        if (r.expires_at) rule.expires_at = r.expires_at;
        if (r.method_pattern) rule.method_pattern = r.method_pattern;
        if (r.path_pattern) rule.path_pattern = r.path_pattern;
        out.push(rule);
      }
      if (from + 1000 >= data.total || !data.items.length) break;
    }
  } catch (err) {
    reportError(err);
    return;
  }
  const blob = new Blob([JSON.stringify(out, null, 2)], { type: "application/json" });
  const link = h("a", { href: URL.createObjectURL(blob), download: "greyproxy-rules.json" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  toast(`Exported ${out.length} rule${out.length === 1 ? "" : "s"}`, "ok");
}

async function importRules(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  const box = $("#import-result");
  box.hidden = false;
  let items;
  try {
    items = JSON.parse(await file.text());
  } catch {
    box.textContent = `${file.name} is not JSON: nothing was imported.`;
    return;
  }
  if (!Array.isArray(items)) items = items && Array.isArray(items.rules) ? items.rules : null;
  if (!items) {
    box.textContent = `${file.name} holds no list of rules: nothing was imported.`;
    return;
  }
  try {
    const res = await api("POST", "/api/rules/ingest", items);
    box.textContent = `Imported ${res.imported} rule${res.imported === 1 ? "" : "s"} from ${file.name}` +
      (res.skipped ? ` (${res.skipped} already there)` : "") + ".";
    refresh();
  } catch (err) {
    // All or nothing: the API names the item that is wrong.
    box.textContent = `Nothing was imported from ${file.name}: ${err.message}`;
  }
}

// ---- tester ---------------------------------------------------------------------------------------

async function testConnection(event) {
  event.preventDefault();
  const form = event.target;
  const f = formValues(form);
  const out = $("#tester-result");
  showFormError(form, "");
  const body = { container: f.container, destination: f.destination, port: Number(f.port || 443) };
  if (f.method) body.method = f.method;
  if (f.path) body.path = f.path;
  try {
    const res = await api("POST", "/api/rules/test", body);
    const verdict = { allow: "allowed", deny: "denied", hold: "held for a decision" }[res.decision] || res.decision;
    const rule = res.rule;
    out.replaceChildren(
      h("p", {}, h("span", { class: `badge badge-${res.decision === "allow" ? "ok" : res.decision === "deny" ? "bad" : "warn"}` }, res.decision),
        " ", h("strong", {}, `${f.container} → ${f.destination}:${body.port} is ${verdict}`)),
      rule ? h("p", {}, "Decided by ", h("a", { href: `/rules?rule=${rule.id}` }, `rule #${rule.id}`), " ",
        h("code", {}, `${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}`))
        : h("p", { class: "muted" }, "No rule matches."),
      h("p", { class: "muted" }, `Why: ${String(res.reason || "").replaceAll("_", " ")}`));
    out.hidden = false;
  } catch (err) {
    out.hidden = true;
    showFormError(form, err.message);
  }
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
  showFormError(editForm, "");
  const fields = {};
  for (const name of ["container_pattern", "destination_pattern", "port_pattern"]) fields[name] = f[name];
  if (!(await checkAll(editForm, fields))) return;
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
  table.addEventListener("change", async (event) => {
    const toggle = event.target.closest(".enabled-toggle");
    if (toggle) {
      const id = toggle.dataset.toggle;
      toggle.disabled = true;
      try {
        await api("PUT", `/api/rules/${id}`, { enabled: toggle.checked });
        toast(`Rule #${id} ${toggle.checked ? "on: it decides connections again" : "off: kept, decides nothing"}`, "ok");
      } catch (err) {
        toggle.checked = !toggle.checked;
        reportError(err);
      }
      toggle.disabled = false;
      refresh();
      return;
    }
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
  readUrl();
  const tester = $("#rule-tester");
  $("#tester-toggle").addEventListener("click", () => {
    tester.hidden = !tester.hidden;
    $("#tester-toggle").setAttribute("aria-expanded", String(!tester.hidden));
    if (!tester.hidden) $("#tester-form").elements.container.focus();
  });
  $("#tester-form").addEventListener("submit", testConnection);
  $("#rules-export").addEventListener("click", exportRules);
  $("#rules-import").addEventListener("change", importRules);
  $("thead", table).addEventListener("click", (e) => {
    const button = e.target.closest("button.sort");
    if (button) setSort(button.dataset.sort, button.dataset.sort === sortKey && sortDir === "desc" ? "asc" : "desc");
  });
  $("#rules-sort").addEventListener("change", (e) => { e.stopPropagation(); setSort(...e.target.value.split(":")); });
  const refilter = debounce(() => { offset = 0; refresh(); }, 250);
  filters.addEventListener("input", refilter);
  filters.addEventListener("change", (e) => { if (e.target.name !== "sort") refilter(); });
  filters.addEventListener("submit", (e) => e.preventDefault());
  live.on("rule.*", refreshSoon);
  live.onResync(refresh);
  prefillFromUrl();
  await showLinkedRule();
  await refresh();
  markLinkedRule();
});
