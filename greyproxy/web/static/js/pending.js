// Pending page: the live queue of held connections and the decisions on them.
//
// Precision: every decision shows the exact rule it creates before it is created (the patterns
// come from /api/dashboard/pending, computed by the code that creates the rule). Stability: cards
// keep their place; new ones are added at the end and a card that goes away (decided here, in
// another tab or by the API) first turns into a same-height note, removed only once the pointer
// has left the list, so the card under the cursor never changes between two clicks.
import {
  $, $$, api, connection, debounce, destExtras, destText, get, h, hostNodes, HOLD_SECONDS, live, relative, newestGet, reportError,
  startPage, timeEl, toast,
} from "./core.js";

const DURATIONS = [
  ["once", "once (30 s)", 30],
  ["1h", "1 hour", 3600],
  ["12h", "12 hours", 43200],
  ["24h", "24 hours", 86400],
  ["7d", "7 days", 604800],
  ["30d", "30 days", 2592000],
  // No expiry, removed when greyproxy next starts: "seconds" is this marker, not a number.
  ["restart", "until restart", "restart"],
  ["permanent", "always", null],
  ["custom", "custom…", undefined],
];
const SECONDS = Object.fromEntries(DURATIONS.filter((d) => d[2] !== undefined).map((d) => [d[0], d[2]]));
// The one-click decisions on every card: (action, scope, duration, label). Deny sits apart.
const QUICK_ALLOW = [
  ["allow", "exact", "once", "Allow once"],
  ["allow", "exact", "1h", "1 h"],
  ["allow", "exact", "24h", "24 h"],
  ["allow", "exact", "permanent", "Always"],
];
const QUICK_DENY = ["deny", "exact", "permanent", "Deny"];
const SCOPE_NAMES = {
  exact: "this host and port",
  any_port: "this host, any port",
  subdomain_wildcard: "this site and its subdomains",
  all_containers: "this host and port, every container",
};
const GHOST_MIN_MS = 1500; // a gone card's note stays at least this long, so it can be read

const list = $("#pending-list");
const filters = $("#pending-filters");
const cards = new Map(); // "container|host|port" -> live card element
let items = new Map(); // same key -> item
const choices = new Map(); // same key -> {scope, duration, custom, customSeconds, customError}
const ghosts = new Set(); // {node, since}
const deciding = new Set(); // keys with a decision of ours in flight
let pointerInList = false;
let current = null; // the card the keyboard acts on
let lastFilterKey = null;
let loadedTotal = 0; // matching requests on the server (the list shows at most 500)
const holdStarts = new Map(); // "container|host|port" (raw host) -> when the newest hold began
const params = new URLSearchParams(location.search);
const highlight = params.get("highlight");
let highlightDone = false;

const keyOf = (item) => `${item.container_name}|${destText(item)}|${item.destination_port}`;
const waiterKey = (container, host, port) => `${container}|${host}|${port}`;

// ---- what a decision creates ----------------------------------------------------------------

function choiceOf(key) {
  if (!choices.has(key)) choices.set(key, { scope: "exact", duration: "once", custom: "", customSeconds: null, customError: null });
  return choices.get(key);
}

function ruleFor(item, scope) {
  const rule = item.scope_rules && item.scope_rules[scope];
  if (rule) return rule;
  // Before the preview API answers (or against an older greyproxy): the plain /api/pending shape.
  const host = destText(item);
  const port = String(item.destination_port);
  return {
    exact: { container_pattern: item.container_name, destination_pattern: host, port_pattern: port },
    any_port: { container_pattern: item.container_name, destination_pattern: host, port_pattern: "*" },
    all_containers: { container_pattern: "*", destination_pattern: host, port_pattern: port },
  }[scope] || { error: "the preview is not available" };
}

// Exact, not rounded: 86400 -> "24 h", 5400 -> "1 h 30 min", 604800 -> "7 d".
function exactDuration(seconds) {
  const s = Math.round(seconds);
  if (s >= 172800 && s % 86400 === 0) return `${s / 86400} d`;
  const parts = [];
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (hours) parts.push(`${hours} h`);
  if (minutes) parts.push(`${minutes} min`);
  if (s % 60 || !parts.length) parts.push(`${s % 60} s`);
  return parts.join(" ");
}

function expiryText(seconds) {
  if (seconds === null) return "never expires";
  if (seconds === "restart") return "until greyproxy restarts";
  const at = new Date(Date.now() + seconds * 1000);
  const sameDay = at.toDateString() === new Date().toDateString();
  return `expires in ${exactDuration(seconds)} (${sameDay ? at.toLocaleTimeString() : at.toLocaleString()})`;
}

// "allow agent1 → api.github.com : 443 · expires in 1 h (10:31:00)" or why it would be refused.
function ruleText(item, action, scope, seconds) {
  const rule = ruleFor(item, scope);
  if (rule.error) return { text: `cannot be a rule: ${rule.error}`, ok: false };
  const who = rule.container_pattern === "*" ? "every container" : rule.container_pattern;
  const port = rule.port_pattern === "*" ? "any port" : rule.port_pattern;
  return { text: `${action} ${who} → ${rule.destination_pattern} : ${port} · ${expiryText(seconds)}`, ok: true };
}

function chosenSeconds(choice) {
  return choice.duration === "custom" ? choice.customSeconds : SECONDS[choice.duration];
}

function chosenDuration(choice) {
  return choice.duration === "custom" ? choice.custom : choice.duration;
}

function setPreview(card, label, action, scope, seconds) {
  const item = items.get(card.dataset.key);
  if (!item) return;
  const { text, ok } = ruleText(item, action, scope, seconds);
  const box = $(".preview", card);
  box.replaceChildren(h("span", { class: "preview-label" }, `${label} creates: `),
    h("span", { class: `preview-rule preview-${action}${ok ? "" : " preview-error"}` }, text));
}

// The chooser's rule (also what Enter does).
function showChosen(card) {
  const choice = choiceOf(card.dataset.key);
  const item = items.get(card.dataset.key);
  if (!item) return;
  const invalid = choice.duration === "custom" && (choice.customError || choice.customSeconds === undefined || !choice.custom);
  const customBox = $(".custom-error", card);
  customBox.textContent = choice.duration === "custom" ? (choice.customError || "") : "";
  customBox.hidden = !customBox.textContent;
  const refused = Boolean(ruleFor(item, choice.scope).error);
  for (const b of $$("button[data-chosen]", card)) {
    b.dataset.scope = choice.scope;
    b.dataset.duration = chosenDuration(choice);
    b.disabled = invalid || refused || card.classList.contains("is-busy");
  }
  const seconds = chosenSeconds(choice);
  const rule = invalid ? { text: "choose a valid duration", ok: false } : ruleText(item, "allow", choice.scope, seconds ?? null);
  const deny = invalid ? { text: "", ok: false } : ruleText(item, "deny", choice.scope, seconds ?? null);
  replaceText($(".chooser-preview", card), rule, deny);
  setPreview(card, "Enter", "allow", choice.scope, invalid ? null : (seconds ?? null));
}

function replaceText(box, allow, deny) {
  box.replaceChildren(
    h("div", {}, h("span", { class: "preview-label" }, "Allow creates: "),
      h("span", { class: `preview-rule preview-allow${allow.ok ? "" : " preview-error"}` }, allow.text)),
    deny.text ? h("div", {}, h("span", { class: "preview-label" }, "Deny creates: "),
      h("span", { class: `preview-rule preview-deny${deny.ok ? "" : " preview-error"}` }, deny.text)) : null);
}

const checkCustom = debounce(async (card) => {
  const choice = choiceOf(card.dataset.key);
  const value = choice.custom;
  if (!value) {
    choice.customSeconds = undefined;
    choice.customError = "Type a duration such as 90m, 36h or 2h30m.";
    showChosen(card);
    return;
  }
  try {
    const res = await get("/api/dashboard/duration", { value });
    if (choice.custom !== value) return;
    // "restart" typed by hand has no expiry but is not "never expires": the preview says so.
    choice.customSeconds = res.rule_type === "until_restart" ? "restart" : res.seconds;
    choice.customError = null;
  } catch (err) {
    if (choice.custom !== value) return;
    choice.customSeconds = undefined;
    choice.customError = err.message;
  }
  showChosen(card);
}, 200);

// ---- cards ----------------------------------------------------------------------------------

function quickButton([action, scope, duration, label], item) {
  const { text } = ruleText(item, action, scope, SECONDS[duration]);
  return h("button", {
    type: "button",
    class: `btn decide ${action === "allow" ? "btn-ok" : "btn-bad"}`,
    dataset: { action, scope, duration, label },
    title: `Creates: ${text}`,
  }, label);
}

function buildCard(item) {
  const key = keyOf(item);
  const card = h("article", { class: "pending-card card", tabindex: "-1", dataset: { key } },
    h("div", { class: "pending-top" },
      h("input", { type: "checkbox", class: "select", "aria-label": `Select ${destText(item)}:${item.destination_port}` }),
      h("div", { class: "pending-dest" },
        h("span", { class: "dest-token dest-host" }),
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
      h("div", { class: "allow-group", role: "group", "aria-label": "Allow this host and port" },
        QUICK_ALLOW.map((b) => quickButton(b, item))),
      h("div", { class: "deny-group", role: "group", "aria-label": "Refuse" },
        quickButton(QUICK_DENY, item),
        h("button", { type: "button", class: "btn", dataset: { action: "dismiss", label: "Dismiss" },
          title: "Dismiss: refuse the waiting connection, create no rule" }, "Dismiss"))),
    h("p", { class: "preview small", "aria-live": "polite" }),
    h("details", { class: "more" },
      h("summary", {}, "Scope and duration…"),
      h("div", { class: "chooser" },
        h("label", { class: "stack" }, h("span", {}, "Scope"),
          h("select", { name: "scope" }, Object.entries(SCOPE_NAMES).map(([value, label]) =>
            h("option", { value }, label)))),
        h("label", { class: "stack" }, h("span", {}, "Duration"),
          h("select", { name: "duration" }, DURATIONS.map(([value, label]) => h("option", { value }, label)))),
        h("label", { class: "stack custom-duration", hidden: true }, h("span", {}, "Custom duration"),
          h("input", { name: "custom", placeholder: "e.g. 90m, 36h, 2h30m", autocomplete: "off", spellcheck: "false" })),
        h("p", { class: "form-error custom-error", role: "alert", hidden: true }),
        h("div", { class: "chooser-preview small" }),
        h("div", { class: "chooser-actions" },
          h("button", { type: "button", class: "btn btn-ok decide", dataset: { action: "allow", chosen: "1", label: "Allow as chosen" } },
            "Allow as chosen"),
          h("button", { type: "button", class: "btn btn-bad decide", dataset: { action: "deny", chosen: "1", label: "Deny as chosen" } },
            "Deny as chosen")))),
  );
  return card;
}

function updateCard(card, item) {
  card.id = `pending-${item.id}`;
  card.dataset.id = String(item.id);
  const resolved = item.resolved_hostname && item.resolved_hostname !== item.destination_host;
  $(".dest-host", card).replaceChildren(hostNodes(destText(item), item.destination_port, "dest-port"), ...destExtras(item));
  $(".dest-ip", card).textContent = resolved ? item.destination_host : "";
  $(".dest-ptr", card).textContent = item.ptr_hostname ? ` PTR ${item.ptr_hostname} (unverified)` : "";
  $(".chip-container", card).textContent = item.container_name;
  $(".attempts", card).textContent = `${item.attempt_count} attempt${item.attempt_count === 1 ? "" : "s"}`;
  $(".seen", card).replaceChildren("first ", timeEl(item.first_seen), " · last ", timeEl(item.last_seen));
  card.dataset.waiters = String(item.waiter_count || 0);
  for (const b of $$(".actions button.decide", card)) {
    b.title = `Creates: ${ruleText(item, b.dataset.action, b.dataset.scope, SECONDS[b.dataset.duration]).text}`;
    b.setAttribute("aria-label", `${b.dataset.label}: ${b.title}`);
  }
  showChosen(card);
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

// A card that went away becomes a note of the same height; see sweepGhosts().
function retire(card, message, kind = "info") {
  const key = card.dataset.key;
  cards.delete(key);
  items.delete(key);
  deciding.delete(key);
  if (current === card) current = null;
  const height = card.getBoundingClientRect().height;
  card.className = `pending-ghost ghost-${kind}`;
  card.removeAttribute("id");
  card.removeAttribute("tabindex");
  card.style.minHeight = `${height}px`;
  card.setAttribute("role", "status");
  card.replaceChildren(h("p", {}, message));
  ghosts.add({ node: card, since: Date.now() });
  afterChange();
}

function sweepGhosts(force = false) {
  for (const ghost of [...ghosts]) {
    if (!force && (pointerInList || Date.now() - ghost.since < GHOST_MIN_MS)) continue;
    ghost.node.remove();
    ghosts.delete(ghost);
  }
  for (const group of $$(".pending-group", list)) {
    if (!$(".pending-card, .pending-ghost", group)) group.remove();
  }
  showEmpty();
}

// ---- grouping (container × registrable domain) ---------------------------------------------------

const grouped = () => filters.elements.view.value === "grouped";
const groupKey = (item) => `${item.container_name}|${item.registrable_domain || destText(item)}`;

function groupFor(item) {
  const key = groupKey(item);
  let group = $$(".pending-group", list).find((g) => g.dataset.group === key);
  if (!group) {
    const title = `${item.container_name} · ${item.registrable_domain || destText(item)}`;
    group = h("section", { class: "pending-group", dataset: { group: key }, "aria-label": title },
      h("header", { class: "group-head" },
        h("label", { class: "check" }, h("input", { type: "checkbox", class: "select-group", "aria-label": `Select all of ${title}` }),
          h("span", { class: "chip chip-container" }, item.container_name),
          h("strong", {}, item.registrable_domain || destText(item))),
        h("span", { class: "group-count muted" })),
      h("div", { class: "group-body" }));
    list.append(group);
  }
  return $(".group-body", group);
}

function place(card, item) {
  const parent = grouped() ? groupFor(item) : list;
  if (card.parentNode !== parent) parent.append(card);
}

function updateGroups() {
  for (const group of $$(".pending-group", list)) {
    const live = $$(".pending-card", group);
    const waiting = live.filter((c) => Number(c.dataset.waiters) > 0).length;
    $(".group-count", group).textContent = `${live.length} request${live.length === 1 ? "" : "s"}` +
      (waiting ? ` · ${waiting} waiting` : "");
    const boxes = live.map((c) => $(".select", c));
    const box = $(".select-group", group);
    box.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    box.indeterminate = !box.checked && boxes.some((b) => b.checked);
  }
}

function regroup() {
  list.classList.toggle("compact", grouped());
  // Re-parent every card in its current order; notes of gone cards go now.
  sweepGhosts(true);
  const ordered = [...cards.values()];
  for (const card of ordered) place(card, items.get(card.dataset.key));
  for (const group of $$(".pending-group", list)) if (!grouped() || !$(".pending-card", group)) group.remove();
  const url = new URL(location.href);
  if (grouped()) url.searchParams.set("view", "grouped");
  else url.searchParams.delete("view");
  history.replaceState(null, "", url);
  afterChange();
}

// ---- rendering ----------------------------------------------------------------------------------

function showEmpty() {
  const empty = $(":scope > .empty", list);
  if (cards.size || ghosts.size) {
    empty?.remove();
    return;
  }
  if (empty) return;
  list.append($("#pending-empty").content.cloneNode(true));
}

// At the first held request, offer browser notifications (once per browser, only if undecided).
const OFFER_KEY = "greyproxy.notifyOffer";
function offerNotifications() {
  const box = $("#notify-offer");
  if (!cards.size || !("Notification" in window) || Notification.permission !== "default") return;
  if (localStorage.getItem(OFFER_KEY)) return;
  box.hidden = false;
}
$("#notify-offer-yes").addEventListener("click", async () => {
  localStorage.setItem(OFFER_KEY, "asked");
  $("#notify-offer").hidden = true;
  const answer = await Notification.requestPermission();
  toast(answer === "granted" ? "Browser notifications are on" : "Browser notifications stay off", answer === "granted" ? "ok" : "info");
});
$("#notify-offer-no").addEventListener("click", () => {
  localStorage.setItem(OFFER_KEY, "declined");
  $("#notify-offer").hidden = true;
});

function render(newItems, filterChanged) {
  const fresh = new Map(newItems.map((i) => [keyOf(i), i]));
  for (const [key, card] of [...cards]) {
    if (fresh.has(key)) continue;
    if (filterChanged) {
      card.remove(); // only out of this filter's view: not decided
      cards.delete(key);
      items.delete(key);
      if (current === card) current = null;
    } else if (!deciding.has(key)) {
      retire(card, `${card.querySelector(".dest-token")?.textContent || "This request"} is no longer pending: ` +
        "it was decided in another tab or by the API.");
    }
  }
  // Oldest first: a new request joins the end, so nothing already on screen moves down.
  const ordered = [...newItems].sort((a, b) => Date.parse(a.first_seen) - Date.parse(b.first_seen) || a.id - b.id);
  for (const item of ordered) {
    const key = keyOf(item);
    items.set(key, item);
    let card = cards.get(key);
    if (!card) {
      card = buildCard(item);
      cards.set(key, card);
    }
    updateCard(card, item);
    place(card, item);
  }
  afterChange();
  applyHighlight();
}

function afterChange() {
  showEmpty();
  offerNotifications();
  updateGroups();
  updateBulk();
  if (current && !current.isConnected) current = null;
  if (!current && !list.contains(document.activeElement)) setCurrent(firstCard(), false);
}

function applyHighlight() {
  if (!highlight || highlightDone) return;
  highlightDone = true;
  const card = [...cards.values()].find((c) => c.dataset.id === highlight);
  if (card) {
    card.classList.add("highlight");
    setCurrent(card, false);
    card.scrollIntoView({ block: "center" });
  } else {
    const note = $("#highlight-missing");
    note.textContent = `Request #${highlight} is no longer pending: it was decided or dismissed already.`;
    note.hidden = false;
  }
}

function filterValues() {
  return { container: filters.elements.container.value.trim(), destination: filters.elements.destination.value.trim() };
}

const listGet = newestGet();

async function refresh() {
  const f = filterValues();
  const filterKey = JSON.stringify(f);
  try {
    const data = await listGet("/api/dashboard/pending", { ...f, limit: 500 });
    loadedTotal = Math.max(data.total, data.items.length);
    render(data.items, lastFilterKey !== null && filterKey !== lastFilterKey);
    lastFilterKey = filterKey;
  } catch (err) {
    reportError(err);
  }
}
const refreshSoon = debounce(refresh, 100);

// ---- decisions ----------------------------------------------------------------------------------

function ruleSummary(rule) {
  const expiry = rule.expires_at ? `, expires ${relative(rule.expires_at)}` : "";
  return `rule #${rule.id} ${rule.action} ${rule.container_pattern} → ${rule.destination_pattern}:${rule.port_pattern}${expiry}`;
}

async function decide(card, action, scope, duration) {
  const key = card.dataset.key;
  const item = items.get(key);
  if (!item || deciding.has(key)) return;
  deciding.add(key);
  const next = neighbour(card);
  card.classList.add("is-busy");
  $$("button, select, input", card).forEach((b) => { b.disabled = true; });
  try {
    let message;
    if (action === "dismiss") {
      await api("DELETE", `/api/pending/${item.id}`);
      message = `Dismissed ${item.container_name} → ${destText(item)}:${item.destination_port}: no rule created.`;
    } else {
      const res = await api("POST", `/api/pending/${item.id}/${action}`, { scope, duration });
      message = `${action === "allow" ? "Allowed" : "Denied"}: ${ruleSummary(res.rule)}`;
      toast(message, action === "allow" ? "ok" : "info");
    }
    if (current === card || !current) setCurrent(next, true);
    retire(card, message, action === "allow" ? "ok" : "info");
  } catch (err) {
    if (err.status === 404) {
      // Someone was quicker (another tab, the API, a rule that now covers it): say so plainly.
      if (current === card || !current) setCurrent(next, true);
      retire(card, `${destText(item)}:${item.destination_port} was already decided in another tab (or by the API); ` +
        "nothing was changed here.");
    } else {
      deciding.delete(key);
      card.classList.remove("is-busy");
      $$("button, select, input", card).forEach((b) => { b.disabled = false; });
      showChosen(card);
      reportError(err);
    }
  }
  refreshSoon();
}

// Decided elsewhere while shown: the event says how.
function decidedElsewhere(data, verb) {
  const card = [...cards.values()].find((c) => c.dataset.id === String(data.pending_id));
  if (!card || deciding.has(card.dataset.key)) return;
  const item = items.get(card.dataset.key);
  const how = data.rule ? `${verb === "allowed" ? "allowed" : "denied"} by ${ruleSummary(data.rule)}` : "dismissed";
  retire(card, `${destText(item)}:${item.destination_port} was already decided in another tab (or by the API): ${how}.`);
}

list.addEventListener("click", (event) => {
  const card = event.target.closest(".pending-card");
  if (card) setCurrent(card, false);
  const button = event.target.closest("button[data-action]");
  if (!button || !card || button.disabled) return;
  decide(card, button.dataset.action, button.dataset.scope, button.dataset.duration);
});

// Hovering or focusing a one-click button shows its exact rule in the card's preview line.
function previewButton(event) {
  const button = event.target.closest?.(".actions button.decide");
  const card = button?.closest(".pending-card");
  if (!card) return;
  const { action, scope, duration, label } = button.dataset;
  setPreview(card, label, action, scope, SECONDS[duration]);
}
function unpreviewButton(event) {
  const card = event.target.closest?.(".actions button.decide")?.closest(".pending-card");
  if (card) showChosen(card);
}
list.addEventListener("mouseover", previewButton);
list.addEventListener("focusin", previewButton);
list.addEventListener("mouseout", unpreviewButton);
list.addEventListener("focusout", unpreviewButton);

list.addEventListener("change", (event) => {
  const target = event.target;
  const card = target.closest(".pending-card");
  if (target.matches(".select-group")) {
    for (const box of $$(".pending-card .select", target.closest(".pending-group"))) box.checked = target.checked;
  }
  if (card && (target.name === "scope" || target.name === "duration")) {
    const choice = choiceOf(card.dataset.key);
    choice[target.name] = target.value;
    $(".custom-duration", card).hidden = choice.duration !== "custom";
    if (choice.duration === "custom") checkCustom(card);
    showChosen(card);
  }
  afterChange();
});
list.addEventListener("input", (event) => {
  const card = event.target.closest(".pending-card");
  if (!card || event.target.name !== "custom") return;
  const choice = choiceOf(card.dataset.key);
  choice.custom = event.target.value.trim();
  choice.customSeconds = undefined; // unknown until the API has read it
  checkCustom(card);
  showChosen(card);
});

list.addEventListener("pointerenter", () => { pointerInList = true; });
list.addEventListener("pointerleave", () => { pointerInList = false; setTimeout(() => sweepGhosts(), 50); });

// ---- keyboard -----------------------------------------------------------------------------------

const liveCards = () => $$(".pending-card", list);
const firstCard = () => liveCards()[0] || null;

function neighbour(card) {
  const all = liveCards();
  const i = all.indexOf(card);
  return all[i + 1] || all[i - 1] || null;
}

function setCurrent(card, focus) {
  if (current && current !== card) current.classList.remove("is-current");
  current = card;
  if (!card) return;
  card.classList.add("is-current");
  if (focus) {
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
  }
}

function move(step) {
  const all = liveCards();
  if (!all.length) return;
  const i = current ? all.indexOf(current) : -1;
  setCurrent(all[Math.min(all.length - 1, Math.max(0, i + step))], true);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const t = event.target;
  const typing = t.closest && t.closest("input, select, textarea, [contenteditable]");
  if (event.key === "Escape") {
    const open = current && $("details.more[open]", current);
    if (open) {
      open.open = false;
      current.focus({ preventScroll: true });
    } else if (typing) {
      t.blur();
    }
    return;
  }
  if (typing) return;
  if (event.key === "Enter" && t.closest && t.closest("button, a, summary")) return; // the focused control's own Enter
  const card = current && current.isConnected ? current : null;
  switch (event.key) {
    case "j": case "n": move(1); break;
    case "k": move(-1); break;
    case "a": if (card) decide(card, "allow", "exact", "once"); break;
    case "d": if (card) decide(card, "deny", "exact", "permanent"); break;
    case "x": if (card) { const box = $(".select", card); box.checked = !box.checked; afterChange(); } break;
    case "o": if (card) { const more = $("details.more", card); more.open = !more.open; if (more.open) $("select", more).focus(); } break;
    case "Enter": {
      const button = card && $("button[data-chosen][data-action=allow]", card);
      if (button && !button.disabled) decide(card, "allow", button.dataset.scope, button.dataset.duration);
      break;
    }
    default: return;
  }
  event.preventDefault();
});

// ---- bulk actions -------------------------------------------------------------------------------

const selectAll = $("#select-all");
const progress = $("#bulk-progress");

function selectedCards() {
  return $$(".pending-card", list).filter((c) => $(".select", c).checked);
}

function updateBulk() {
  const sel = selectedCards();
  const shown = cards.size;
  $("#selected-count").textContent = `${sel.length} selected`;
  $("#select-all-text").textContent = loadedTotal > shown && !deciding.size
    ? `Select all ${shown} shown (of ${loadedTotal})` : `Select all ${shown} shown`;
  const busy = !progress.hidden && progress.dataset.running === "1";
  $("#bulk-allow").disabled = !sel.length || busy;
  $("#bulk-dismiss").disabled = !sel.length || busy;
  selectAll.checked = sel.length > 0 && sel.length === shown;
  selectAll.indeterminate = sel.length > 0 && sel.length < shown;
  $("#bulkbar").hidden = shown === 0 && progress.hidden;
  // The distinct rules the bulk allow would create, shown before it runs.
  const preview = $("#bulk-preview");
  const scope = $("#bulk-scope").value;
  const seconds = SECONDS[$("#bulk-duration").value];
  const rules = [...new Set(sel.map((c) => ruleText(items.get(c.dataset.key), "allow", scope, seconds).text))];
  preview.hidden = !rules.length;
  preview.replaceChildren(`Allow creates ${rules.length} rule${rules.length === 1 ? "" : "s"}: `,
    ...rules.slice(0, 3).flatMap((r, i) => [i ? "; " : "", h("span", { class: "preview-rule preview-allow" }, r)]),
    rules.length > 3 ? ` and ${rules.length - 3} more` : "");
}
$("#bulk-scope").addEventListener("change", updateBulk);
$("#bulk-duration").addEventListener("change", updateBulk);

selectAll.addEventListener("change", () => {
  // Only what the filter shows: a hidden request is never decided by accident.
  $$(".pending-card .select", list).forEach((box) => { box.checked = selectAll.checked; });
  afterChange();
});

function showProgress(done, total, text) {
  progress.hidden = false;
  const bar = $("progress", progress);
  bar.max = Math.max(1, total);
  bar.value = done;
  $(".bulk-progress-text", progress).textContent = text;
}

// Allow each selected request with the chosen scope; a request a wider rule already covered
// answers 404 and is counted as covered. Exact scope goes through bulk-allow in slices.
async function bulkAllow(sel) {
  const scope = $("#bulk-scope").value;
  const duration = $("#bulk-duration").value;
  const targets = sel.map((c) => ({ card: c, item: items.get(c.dataset.key) })).filter((t) => t.item);
  targets.forEach((t) => deciding.add(t.card.dataset.key));
  let done = 0;
  let created = 0;
  let covered = 0;
  const failed = [];
  const total = targets.length;
  showProgress(0, total, `Allowing 0 of ${total}…`);
  if (scope === "exact") {
    for (let i = 0; i < targets.length; i += 200) {
      const slice = targets.slice(i, i + 200);
      try {
        const res = await api("POST", "/api/pending/bulk-allow", { pending_ids: slice.map((t) => t.item.id), duration });
        created += res.pending_removed;
        for (const r of res.refused || []) failed.push(r.error);
        covered += slice.length - res.pending_removed - (res.refused || []).length;
      } catch (err) {
        failed.push(err.message);
      }
      done += slice.length;
      slice.forEach((t) => { if (t.card.isConnected) retire(t.card, `Allowed (bulk): ${destText(t.item)}:${t.item.destination_port}`, "ok"); });
      showProgress(done, total, `Allowing ${done} of ${total}…`);
    }
  } else {
    let next = 0;
    const worker = async () => {
      while (next < targets.length) {
        const t = targets[next++];
        if (t.card.classList.contains("pending-card")) {
          try {
            const res = await api("POST", `/api/pending/${t.item.id}/allow`, { scope, duration });
            created += 1;
            retire(t.card, `Allowed: ${ruleSummary(res.rule)}`, "ok");
          } catch (err) {
            if (err.status === 404) {
              covered += 1;
              if (t.card.isConnected && t.card.classList.contains("pending-card")) retire(t.card, "Covered by a rule created just before.", "ok");
            } else {
              failed.push(err.message);
              deciding.delete(t.card.dataset.key);
            }
          }
        } else {
          covered += 1;
        }
        done += 1;
        showProgress(done, total, `Allowing ${done} of ${total}…`);
      }
    };
    progress.dataset.running = "1";
    await Promise.all([worker(), worker(), worker(), worker()]);
  }
  progress.dataset.running = "0";
  const summary = `Allowed ${total - failed.length} of ${total}` + (covered ? ` (${covered} already covered by a rule or decided elsewhere)` : "") +
    (failed.length ? `; ${failed.length} failed: ${failed[0]}` : "");
  showProgress(total, total, summary);
  toast(summary, failed.length ? "error" : "ok");
}

async function bulk(kind) {
  const sel = selectedCards();
  if (!sel.length) return;
  progress.dataset.running = "1";
  updateBulk();
  try {
    if (kind === "allow") {
      await bulkAllow(sel);
    } else {
      const ids = sel.map((c) => Number(c.dataset.id));
      sel.forEach((c) => deciding.add(c.dataset.key));
      showProgress(0, ids.length, `Dismissing ${ids.length}…`);
      const res = await api("POST", "/api/pending/bulk-dismiss", { pending_ids: ids });
      sel.forEach((c) => { if (c.isConnected) retire(c, "Dismissed (bulk): no rule created."); });
      showProgress(ids.length, ids.length, `Dismissed ${res.removed} request${res.removed === 1 ? "" : "s"}`);
      toast(`Dismissed ${res.removed} request${res.removed === 1 ? "" : "s"}`);
    }
  } catch (err) {
    sel.forEach((c) => deciding.delete(c.dataset.key));
    reportError(err);
  }
  progress.dataset.running = "0";
  updateBulk();
  refresh();
}
$("#bulk-allow").addEventListener("click", () => bulk("allow"));
$("#bulk-dismiss").addEventListener("click", () => bulk("dismiss"));

// ---- live -----------------------------------------------------------------------------------

startPage(async () => {
  if (params.get("view") === "grouped") filters.elements.view.value = "grouped";
  list.classList.toggle("compact", grouped());
  const refreshFiltered = debounce(refresh, 250);
  filters.addEventListener("input", (e) => { if (e.target.type === "search") refreshFiltered(); });
  filters.addEventListener("change", (e) => { if (e.target.name === "view") regroup(); });
  filters.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  live.on("waiters.changed", (d) => {
    if (d.current_count > d.previous_count) holdStarts.set(waiterKey(d.container_name, d.host, d.port), Date.now());
    refreshSoon();
  });
  live.on("pending_request.allowed", (d) => decidedElsewhere(d, "allowed"));
  live.on("pending_request.dismissed", (d) => decidedElsewhere(d, d.rule ? "denied" : "dismissed"));
  live.on(["pending_request.*", "rule.*", "allowall.changed"], refreshSoon);
  live.onResync(refresh);
  setInterval(() => {
    if (connection.offline) return; // no countdown that looks live while greyproxy is gone
    for (const [key, card] of cards) {
      const item = items.get(key);
      if (item) updateCountdown(card, item);
    }
    sweepGhosts();
  }, 1000);
  await refresh();
});
