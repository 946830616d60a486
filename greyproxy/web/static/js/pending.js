// Pending page: the live queue of held connections, with the §4.4 decisions.
//
// Cards are kept by id and updated in place, so a live update never closes the "More options"
// panel someone is reading or unticks a checkbox.
import {
  $, $$, api, debounce, destExtras, destText, formValues, get, h, HOLD_SECONDS, live, relative, reportError,
  startPage, timeEl, toast,
} from "./core.js";

// The decisions offered, as (action, scope, duration, label). The first group is on every card;
// the wider scopes sit under "More options". Labels say exactly what the rule will cover.
const QUICK = [
  ["allow", "exact", "once", "Allow once"],
  ["allow", "exact", "1h", "1 h"],
  ["allow", "exact", "12h", "12 h"],
  ["allow", "exact", "24h", "24 h"],
  ["allow", "exact", "permanent", "Always"],
  ["deny", "exact", "permanent", "Deny"],
];
const MORE = [
  { title: "Any port on this host", buttons: [
    ["allow", "any_port", "1h", "Allow 1 h"],
    ["allow", "any_port", "24h", "Allow 24 h"],
    ["allow", "any_port", "permanent", "Allow always"],
  ] },
  { title: "This site and its subdomains", buttons: [
    ["allow", "subdomain_wildcard", "24h", "Allow 24 h"],
    ["allow", "subdomain_wildcard", "permanent", "Allow always"],
    ["deny", "subdomain_wildcard", "permanent", "Deny always"],
  ] },
  { title: "Every container, this host and port", buttons: [
    ["allow", "all_containers", "permanent", "Allow always"],
    ["deny", "all_containers", "permanent", "Deny always"],
  ] },
];
const DURATION_WORDS = { once: "once (30 s)", "1h": "for 1 hour", "12h": "for 12 hours", "24h": "for 24 hours", permanent: "always" };
const SCOPE_WORDS = {
  exact: (i) => `${destText(i)}:${i.destination_port}`,
  any_port: (i) => `any port of ${destText(i)}`,
  subdomain_wildcard: (i) => `${destText(i)} and its sibling subdomains, any port`,
  all_containers: (i) => `${destText(i)}:${i.destination_port} for every container`,
};

const list = $("#pending-list");
const cards = new Map(); // pending id -> card element
let items = new Map(); // pending id -> item
// When the newest hold of a (container, host, port) began, from waiters.changed (client clock).
const holdStarts = new Map();
const highlight = new URLSearchParams(location.search).get("highlight");
let highlightDone = false;

const waiterKey = (container, host, port) => `${container}|${host}|${port}`;

function describe(action, scope, duration, item) {
  const verb = action === "allow" ? "Allow" : "Deny";
  const when = action === "deny" ? "" : ` ${DURATION_WORDS[duration] || duration}`;
  return `${verb} ${item.container_name} → ${SCOPE_WORDS[scope](item)}${when}`;
}

function decisionButton([action, scope, duration, label], item) {
  return h("button", {
    type: "button",
    class: `btn btn-small ${action === "allow" ? "btn-ok" : "btn-bad"}`,
    dataset: { action, scope, duration },
    title: describe(action, scope, duration, item),
    "aria-label": describe(action, scope, duration, item),
  }, label);
}

function buildCard(item) {
  const card = h("article", { class: "pending-card card", id: `pending-${item.id}`, dataset: { id: item.id } },
    h("div", { class: "pending-top" },
      h("input", { type: "checkbox", class: "select", "aria-label": `Select ${destText(item)}:${item.destination_port}` }),
      h("div", { class: "pending-dest" },
        h("span", { class: "dest-host" }),
        h("span", { class: "dest-port" }),
        h("span", { class: "dest-ip muted" }),
        h("span", { class: "dest-ptr muted small",
          title: "Reverse DNS (PTR): written by whoever owns this IP block, so rules never match it" })),
      h("span", { class: "chip chip-container", title: "Container (the proxy user name)" })),
    h("div", { class: "pending-meta" },
      h("span", { class: "waiting" }),
      h("span", { class: "attempts" }),
      h("span", { class: "seen" })),
    h("div", { class: "hold-bar", "aria-hidden": "true" }, h("span")),
    h("div", { class: "actions" },
      h("span", { class: "actions-label" }, "Allow"),
      QUICK.filter((b) => b[0] === "allow").map((b) => decisionButton(b, item)),
      h("span", { class: "actions-gap" }),
      QUICK.filter((b) => b[0] === "deny").map((b) => decisionButton(b, item)),
      h("button", { type: "button", class: "btn btn-small", dataset: { action: "dismiss" },
        title: "Dismiss: refuse the waiting connection, create no rule" }, "Dismiss")),
    h("details", { class: "more" },
      h("summary", {}, "More options"),
      h("div", { class: "scope-grid" }, MORE.map((group) => [
        h("span", { class: "scope-title" }, group.title),
        h("div", { class: "scope-buttons" }, group.buttons.map((b) => decisionButton(b, item))),
      ]))),
  );
  return card;
}

function updateCard(card, item) {
  const resolved = item.resolved_hostname && item.resolved_hostname !== item.destination_host;
  $(".dest-host", card).replaceChildren(destText(item), ...destExtras(item));
  $(".dest-port", card).textContent = `:${item.destination_port}`;
  $(".dest-ip", card).textContent = resolved ? item.destination_host : "";
  $(".dest-ptr", card).textContent = item.ptr_hostname ? ` PTR ${item.ptr_hostname} (unverified)` : "";
  $(".chip-container", card).textContent = item.container_name;
  $(".attempts", card).textContent = `${item.attempt_count} attempt${item.attempt_count === 1 ? "" : "s"}`;
  $(".seen", card).replaceChildren("first ", timeEl(item.first_seen), " · last ", timeEl(item.last_seen));
  card.dataset.waiters = String(item.waiter_count || 0);
  updateCountdown(card, item);
}

function holdDeadline(item) {
  const key = waiterKey(item.container_name, item.destination_host, item.destination_port);
  // Before any event arrived (page just loaded) the newest hold began at last_seen.
  const start = Math.max(holdStarts.get(key) || 0, Date.parse(item.last_seen) || 0);
  return start + HOLD_SECONDS * 1000;
}

function updateCountdown(card, item) {
  const waiting = $(".waiting", card);
  const bar = $(".hold-bar > span", card);
  const n = item.waiter_count || 0;
  if (!n) {
    waiting.textContent = "not waiting — appears again when the agent retries";
    waiting.className = "waiting idle";
    card.classList.remove("is-held");
    bar.style.width = "0";
    return;
  }
  const left = Math.max(0, Math.ceil((holdDeadline(item) - Date.now()) / 1000));
  waiting.textContent = `${n} waiting · ${left} s left`;
  waiting.className = "waiting held";
  card.classList.add("is-held");
  bar.style.width = `${Math.min(100, (left / HOLD_SECONDS) * 100)}%`;
}

function render(newItems) {
  items = new Map(newItems.map((i) => [String(i.id), i]));
  for (const [id, card] of cards) {
    if (!items.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  // Newest first, as the API orders them; re-appending an existing node just moves it.
  for (const item of newItems) {
    const id = String(item.id);
    let card = cards.get(id);
    if (!card) {
      card = buildCard(item);
      cards.set(id, card);
    }
    updateCard(card, item);
    list.append(card);
  }
  if (!newItems.length) {
    list.replaceChildren(h("div", { class: "empty" },
      h("h2", {}, "Nothing is waiting"),
      h("p", {}, "When an agent asks for a destination no rule covers, it appears here at once.")));
  } else {
    $(".empty", list)?.remove();
  }
  applyHighlight();
  updateBulk();
}

function applyHighlight() {
  if (!highlight || highlightDone) return;
  highlightDone = true;
  const card = cards.get(highlight);
  if (card) {
    card.classList.add("highlight");
    card.scrollIntoView({ block: "center" });
  } else {
    const note = $("#highlight-missing");
    note.textContent = `Request #${highlight} is no longer pending: it was decided or dismissed already.`;
    note.hidden = false;
  }
}

const filters = $("#pending-filters");

async function refresh() {
  const f = formValues(filters);
  try {
    const data = await get("/api/pending", { container: f.container, destination: f.destination, limit: 500 });
    render(data.items);
  } catch (err) {
    reportError(err);
  }
}
const refreshSoon = debounce(refresh, 100);

// ---- decisions ----------------------------------------------------------------------------------

async function decide(card, button) {
  const item = items.get(card.dataset.id);
  const { action, scope, duration } = button.dataset;
  const buttons = $$("button", card);
  buttons.forEach((b) => { b.disabled = true; });
  try {
    if (action === "dismiss") {
      await api("DELETE", `/api/pending/${item.id}`);
      toast(`Dismissed ${item.container_name} → ${destText(item)}:${item.destination_port}`);
    } else {
      const res = await api("POST", `/api/pending/${item.id}/${action}`, { scope, duration });
      const rule = res.rule;
      const expiry = rule.expires_at ? `, expires ${relative(rule.expires_at)}` : "";
      toast(`${action === "allow" ? "Allowed" : "Denied"}: rule #${rule.id} ${rule.container_pattern} → ` +
        `${rule.destination_pattern}:${rule.port_pattern}${expiry}`, action === "allow" ? "ok" : "info");
    }
    card.remove();
    cards.delete(String(item.id));
    items.delete(String(item.id));
    updateBulk();
  } catch (err) {
    reportError(err);
    buttons.forEach((b) => { b.disabled = false; });
  }
  refreshSoon();
}

list.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  decide(button.closest(".pending-card"), button);
});

// ---- bulk actions -------------------------------------------------------------------------------

const selectAll = $("#select-all");

function selectedIds() {
  return $$(".pending-card .select:checked", list).map((box) => Number(box.closest(".pending-card").dataset.id));
}

function updateBulk() {
  const ids = selectedIds();
  $("#selected-count").textContent = `${ids.length} selected`;
  $("#bulk-allow").disabled = !ids.length;
  $("#bulk-dismiss").disabled = !ids.length;
  selectAll.checked = ids.length > 0 && ids.length === cards.size;
  selectAll.indeterminate = ids.length > 0 && ids.length < cards.size;
  $("#bulkbar").hidden = cards.size === 0;
}

list.addEventListener("change", (event) => {
  if (event.target.matches(".select")) updateBulk();
});
selectAll.addEventListener("change", () => {
  $$(".select", list).forEach((box) => { box.checked = selectAll.checked; });
  updateBulk();
});

async function bulk(kind) {
  const ids = selectedIds();
  if (!ids.length) return;
  try {
    if (kind === "allow") {
      const duration = $("#bulk-duration").value;
      const res = await api("POST", "/api/pending/bulk-allow", { pending_ids: ids, duration });
      toast(`Allowed ${res.pending_removed} request${res.pending_removed === 1 ? "" : "s"}`, "ok");
    } else {
      const res = await api("POST", "/api/pending/bulk-dismiss", { pending_ids: ids });
      toast(`Dismissed ${res.removed} request${res.removed === 1 ? "" : "s"}`);
    }
  } catch (err) {
    reportError(err);
  }
  refresh();
}
$("#bulk-allow").addEventListener("click", () => bulk("allow"));
$("#bulk-dismiss").addEventListener("click", () => bulk("dismiss"));

// ---- live -----------------------------------------------------------------------------------

startPage(async () => {
  filters.addEventListener("input", debounce(refresh, 250));
  filters.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  live.on("waiters.changed", (d) => {
    if (d.current_count > d.previous_count) holdStarts.set(waiterKey(d.container_name, d.host, d.port), Date.now());
    refreshSoon();
  });
  live.on(["pending_request.*", "rule.*", "allowall.changed"], refreshSoon);
  live.onResync(refresh);
  setInterval(() => {
    for (const [id, card] of cards) {
      const item = items.get(id);
      if (item) updateCountdown(card, item);
    }
  }, 1000);
  await refresh();
});
