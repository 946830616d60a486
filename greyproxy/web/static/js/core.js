// Shared by every dashboard page: REST calls, the live /ws connection, DOM building, formatting,
// and the page shell (pending badge, live indicator, theme, browser notifications).
//
// Everything shown comes from agents (hostnames, container names, headers), so it is never
// parsed as HTML: `h()` builds elements and sets text with textContent.

export const HOLD_SECONDS = Number(document.body.dataset.holdSeconds || 30);

// ---- REST -------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The HttpOnly cookie set by /dashboard?token=… authenticates these same-origin calls; the token
// itself is never visible to this script.
export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json"; // the API refuses bodies without it
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    connection.lost();
    throw new ApiError(0, "greyproxy is not reachable");
  }
  const text = await res.text();
  let data = text;
  if (text && (res.headers.get("Content-Type") || "").includes("json")) {
    try { data = JSON.parse(text); } catch { /* keep the text */ }
  }
  if (!res.ok) {
    if (res.status === 401) shell.loggedOut();
    const message = data && typeof data === "object" && data.error ? data.error : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message);
  }
  return data;
}

export const get = (path, params) => api("GET", params ? `${path}?${query(params)}` : path);

// A list refreshed by events, filters and timers can have several reads under way, and their
// answers can arrive out of order. `newestGet()` is a `get` for one list: once a newer read has
// begun, an older answer is dropped (it throws `Superseded`, which reportError ignores), so a
// slow old answer never draws a request already decided, or a rule already deleted, back in.
export class Superseded extends Error {}
export function newestGet() {
  let last = 0;
  return async (path, params) => {
    const mine = ++last;
    const data = await get(path, params);
    if (mine !== last) throw new Superseded(path);
    return data;
  };
}

// Query string from an object, dropping empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) q.set(k, String(v));
  }
  return q.toString();
}

// A route that returns 404 is an API that has not landed in this greyproxy yet: the page shows
// its empty state and lights up once the API exists.
export const isMissing = (err) => err instanceof ApiError && err.status === 404;

// ---- DOM --------------------------------------------------------------------------------------

// h("a", {href: "/x", class: "y", onclick: fn, dataset: {id: 1}}, "text", child, [more])
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function replaceChildren(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

export function debounce(fn, ms = 150) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// Form fields as an object; checkboxes become booleans.
export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === "checkbox" ? el.checked : el.value.trim();
  }
  return out;
}

export function showFormError(form, message) {
  const box = $(".form-error", form);
  box.textContent = message || "";
  box.hidden = !message;
}

export function emptyRow(table, text) {
  const cols = $$("thead th", table).length || 1;
  return h("tr", { class: "empty-row" }, h("td", { colspan: cols }, text));
}

// ---- formatting -------------------------------------------------------------------------------

export const parseTime = (iso) => (iso ? new Date(iso) : null);

export function timeText(iso) {
  const d = parseTime(iso);
  if (!d) return "—";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function durationText(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.round(s / 60);
  if (minutes < 60) return `${minutes} min`; // 3599 s is "1 h", not "60 min"
  const hours = s / 3600;
  if (hours < 23.95) return `${hours.toFixed(hours < 10 ? 1 : 0).replace(/\.0$/, "")} h`;
  const days = s / 86400;
  return `${days.toFixed(days < 10 ? 1 : 0).replace(/\.0$/, "")} d`;
}

// "3 min ago" / "in 2 h"
export function relative(iso) {
  const d = parseTime(iso);
  if (!d) return "—";
  const seconds = (d.getTime() - Date.now()) / 1000;
  if (Math.abs(seconds) < 5) return "just now";
  return seconds > 0 ? `in ${durationText(seconds)}` : `${durationText(seconds)} ago`;
}

// A <time> element showing relative text with the exact time on hover.
export function timeEl(iso, mode = "relative") {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString(), dataset: { mode } },
    mode === "relative" ? relative(iso) : timeText(iso));
}

// Relative times drift; refresh them every 15 s without re-fetching anything.
setInterval(() => {
  for (const el of $$("time[data-mode=relative]")) el.textContent = relative(el.getAttribute("datetime"));
}, 15000);

export function destText(item) {
  return item.resolved_hostname || item.destination_host;
}

// Destinations are matched and stored as punycode. Next to that form, show the Unicode one
// when the API sent it (destination_unicode) and warn when a label mixes scripts (mixed_script),
// the usual shape of a look-alike such as g\u0456thub.com (Cyrillic і). Returns nodes to append
// after the destination text (none for a plain ASCII name).
export function destExtras(item) {
  const extras = [];
  if (item && item.destination_unicode) {
    extras.push(h("span", { class: "dest-unicode muted", title: "Unicode form, for reading only: rules match the punycode" },
      ` (${item.destination_unicode})`));
  }
  if (item && item.mixed_script) {
    extras.push(" ", h("span", { class: "badge badge-warn dest-mixed",
      title: "A label mixes letters of different scripts (e.g. Latin and Cyrillic): this may imitate another name" },
    "mixed scripts"));
  }
  return extras;
}

// A host name that may wrap only between labels (after a dot, never at a hyphen inside a label)
// with the port glued to the last label: each label is an inline block, which moves to the next
// line whole. A label longer than the line still breaks inside (CSS), rather than overflow.
export function hostNodes(host, port, portClass = "port") {
  const parts = String(host).split(".");
  return h("span", { class: "hostport" }, parts.map((label, i) => {
    const last = i === parts.length - 1;
    return h("span", { class: "label" }, last ? label : `${label}.`,
      last && port !== undefined && port !== null ? h("span", { class: portClass }, `:${port}`) : null);
  }));
}

// On a narrow screen a detail panel sits below its list: bring it to the user, and back to the
// row on close (returnTo), instead of leaving them scrolling for it.
const NARROW = window.matchMedia("(max-width: 960px)");
export function revealDetail(box) {
  if (NARROW.matches) box.scrollIntoView({ block: "start" });
}
export function returnTo(row) {
  if (NARROW.matches && row && row.isConnected) row.scrollIntoView({ block: "center" });
}

// The destination as text for places without markup (notifications, toasts).
export function destPlain(item) {
  const text = destText(item);
  const unicode = item.destination_unicode ? ` (${item.destination_unicode})` : "";
  return `${text}${unicode}${item.mixed_script ? " [mixed scripts]" : ""}`;
}

// datetime-local (local time, no zone) -> RFC 3339 UTC, and back.
export function localToIso(value) {
  return value ? new Date(value).toISOString() : "";
}
export function isoToLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || text}` }, text);
}

// Pretty-print a body: JSON when it parses, otherwise the text as is.
export function prettyBody(text) {
  if (text === undefined || text === null || text === "") return "";
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try { return JSON.stringify(JSON.parse(trimmed), null, 2); } catch { /* not JSON */ }
  }
  return text;
}

// ---- toasts -----------------------------------------------------------------------------------

export function toast(message, kind = "info") {
  const box = $("#toasts");
  if (!box) return;
  const node = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(node);
  setTimeout(() => node.remove(), kind === "error" ? 8000 : 4000);
}

export function reportError(err) {
  if (err instanceof Superseded) return; // a newer read draws the list
  if (err instanceof ApiError && err.status === 401) return; // the banner already says it
  if (err instanceof ApiError && err.status === 0) return; // the offline banner says it, once
  toast(err.message || String(err), "error");
}

// ---- pagination -------------------------------------------------------------------------------

// Renders "‹ Prev  page 2 of 7 (312)  Next ›" into `nav`; onPage(offset) loads another page.
export function renderPager(nav, { total, limit, offset }, onPage) {
  if (!nav) return;
  const pages = Math.max(1, Math.ceil(total / limit));
  const page = Math.floor(offset / limit) + 1;
  replaceChildren(nav,
    h("button", { type: "button", class: "btn btn-small", disabled: page <= 1, onclick: () => onPage(offset - limit) }, "‹ Prev"),
    h("span", { class: "muted" }, `Page ${page} of ${pages} · ${total} total`),
    h("button", { type: "button", class: "btn btn-small", disabled: page >= pages, onclick: () => onPage(offset + limit) }, "Next ›"),
  );
  nav.hidden = total <= limit && offset === 0;
}

// ---- offline ----------------------------------------------------------------------------------

// When greyproxy cannot be reached: one banner, and every control of the page disabled (inert),
// instead of a toast per failed call and cards that look live but cannot be acted on. The page
// re-reads everything when /ws is back (Live's resync).
export const connection = {
  offline: false,
  timer: null,
  disabled: [],

  // A failed call or a closed /ws: offline unless /ws is back within a moment.
  lost() {
    if (this.offline || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (live.state !== "live") this.set(true);
    }, 1500);
  },

  back() {
    clearTimeout(this.timer);
    this.timer = null;
    this.set(false);
  },

  set(offline) {
    if (offline === this.offline) return;
    this.offline = offline;
    const banner = $("#offline-banner");
    const main = $("#main");
    if (banner) banner.hidden = !offline;
    document.body.classList.toggle("is-offline", offline);
    if (main) main.inert = offline;
    if (offline) {
      this.disabled = $$("main button:not(:disabled), main input:not(:disabled), main select:not(:disabled)");
      this.disabled.forEach((el) => { el.disabled = true; });
      for (const t of $$("#toasts .toast-error")) t.remove();
    } else {
      this.disabled.forEach((el) => { el.disabled = false; });
      this.disabled = [];
    }
  },
};

// ---- live updates over /ws --------------------------------------------------------------------

class Live {
  constructor() {
    this.handlers = [];
    this.resyncs = [];
    this.delay = 1000;
    this.everConnected = false;
    this.socket = null;
  }

  // on("pending_request.created", fn) · on(["rule.created", "rule.deleted"], fn) · on("rule.*", fn)
  on(types, fn) {
    for (const type of [].concat(types)) this.handlers.push([type, fn]);
  }

  // Called after a reconnect: events were missed, so lists must be re-read.
  onResync(fn) {
    this.resyncs.push(fn);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    this.socket = socket;
    this.setState("connecting");
    socket.onopen = () => {
      this.delay = 1000;
      this.setState("live");
      connection.back();
      if (this.everConnected) this.resyncs.forEach((fn) => fn());
      this.everConnected = true;
    };
    socket.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch { return; }
      this.dispatch(event);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.setState("offline");
      connection.lost();
      // Back off so a stopped greyproxy is not hammered; the page keeps working over REST.
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }

  dispatch(event) {
    for (const [type, fn] of this.handlers) {
      const match = type === "*" || type === event.type || (type.endsWith(".*") && event.type.startsWith(type.slice(0, -1)));
      if (!match) continue;
      try { fn(event.data, event); } catch (err) { console.error(err); }
    }
  }

  setState(state) {
    this.state = state;
    const el = $("#live-status");
    if (!el) return;
    el.dataset.state = state;
    const text = { live: "live", connecting: "connecting", offline: "reconnecting" }[state];
    $(".live-text", el).textContent = text;
    el.title = `Live updates: ${text}`;
  }
}

export const live = new Live();

// ---- what is in effect: silent mode and per-container modes, on every page ---------------------

// A silent allow-all (or a container left in `open`/`report`) quietly turns the firewall off, so
// it is shown on every page with the time left and a way to end it, not only under Settings.
export const modeBanner = {
  silent: { active: false },
  silentAt: 0, // performance.now() when `silent` was read, to count remaining_seconds down
  modes: [],
  timer: null,

  start() {
    const reload = debounce(() => this.load(), 100);
    live.on(["allowall.changed", "container_mode.*"], reload);
    live.onResync(reload);
    this.load();
  },

  silentGet: newestGet(),
  modesGet: newestGet(),

  async load() {
    try {
      const [silent, modes] = await Promise.all([this.silentGet("/api/allowall"), this.modesGet("/api/container-modes")]);
      this.silent = silent;
      this.silentAt = performance.now();
      this.modes = (modes.items || []).filter((m) => m.mode !== "enforce");
      this.render();
    } catch { /* offline or logged out: those banners say so */ }
  },

  secondsLeft() {
    const s = this.silent;
    if (!s.active || s.remaining_seconds === undefined) return null;
    return Math.max(0, s.remaining_seconds - Math.floor((performance.now() - this.silentAt) / 1000));
  },

  render() {
    const box = $("#mode-banner");
    if (!box) return;
    const lines = [];
    const s = this.silent;
    if (s.active) {
      const verb = s.mode === "deny" ? "denied" : "allowed";
      lines.push(h("div", { class: `mode-line mode-silent mode-${s.mode}`, dataset: { kind: "silent", mode: s.mode } },
        h("strong", {}, `Silent ${s.mode === "deny" ? "deny-all" : "allow-all"} is on:`),
        ` every connection is ${verb} without asking (still logged). `,
        h("span", { class: "mode-left" }),
        h("button", { type: "button", class: "btn btn-small mode-off", onclick: () => this.silentOff() }, "Turn off")));
    }
    for (const m of this.modes) {
      const what = m.mode === "open"
        ? "everything is allowed and nothing is logged as blocked"
        : "everything is allowed; what would be blocked or held is only logged";
      lines.push(h("div", { class: `mode-line mode-container mode-${m.mode}`, dataset: { kind: "container", mode: m.mode, id: m.id } },
        h("strong", {}, `Container ${m.container_pattern} is in ${m.mode} mode:`), ` ${what}. `,
        m.source === "config"
          ? h("span", { class: "muted" }, "(set in the configuration file)")
          : h("button", { type: "button", class: "btn btn-small mode-off", onclick: () => this.modeOff(m) },
            "Enforce rules")));
    }
    replaceChildren(box, lines);
    box.hidden = !lines.length;
    this.tick();
    clearInterval(this.timer);
    if (s.active) this.timer = setInterval(() => this.tick(), 1000);
  },

  tick() {
    const el = $("#mode-banner .mode-left");
    if (!el) return;
    const left = this.secondsLeft();
    if (left === null) {
      el.textContent = "Until greyproxy restarts.";
      return;
    }
    el.textContent = `${durationClock(left)} left.`;
    if (left === 0) this.load(); // the server turns it off; read its word
  },

  async silentOff() {
    try {
      this.silent = await api("DELETE", "/api/allowall");
      this.silentAt = performance.now();
      this.render();
      toast("Silent mode is off: rules decide again", "ok");
    } catch (err) { reportError(err); }
  },

  async modeOff(m) {
    try {
      await api("DELETE", `/api/container-modes/${encodeURIComponent(m.id)}`);
      toast(`${m.container_pattern} enforces rules again`, "ok");
      this.load();
    } catch (err) { reportError(err); }
  },
};

// 7260 -> "2 h 1 min", 59 -> "59 s": a countdown that stays exact near its end.
export function durationClock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// ---- the shell ------------------------------------------------------------------------------

export const shell = {
  notifications: { enabled: true, claims: 0 },
  loggedOutShown: false,

  start() {
    this.showCurrentPage();
    live.connect();
    modeBanner.start();
    this.refreshBadge();
    const refreshBadge = debounce(() => this.refreshBadge(), 200);
    live.on(["pending_request.*"], refreshBadge);
    live.onResync(refreshBadge);
    live.on("pending_request.created", (item) => this.notifyBrowser(item));
    live.on("settings.changed", (s) => this.applySettings(s, performance.now()));
    live.on("notification.claims_changed", (d) => { this.notifications.claims = d.active_claims; });
    const askedAt = performance.now();
    get("/api/settings").then((s) => this.applySettings(s, askedAt)).catch(() => {});
  },

  // The nav scrolls sideways on a phone: keep the current page's link in view, centred.
  showCurrentPage() {
    const nav = $(".nav");
    const cur = $(".nav a[aria-current=page]");
    if (!nav || !cur || nav.scrollWidth <= nav.clientWidth) return;
    const offset = cur.getBoundingClientRect().left - nav.getBoundingClientRect().left;
    nav.scrollLeft += offset - (nav.clientWidth - cur.offsetWidth) / 2;
  },

  countGet: newestGet(),

  async refreshBadge() {
    const el = $("#pending-badge");
    if (!el) return;
    try {
      const { count } = await this.countGet("/api/pending/count");
      el.textContent = count > 99 ? "99+" : String(count);
      el.hidden = count === 0;
      document.title = document.title.replace(/^\(\d+\+?\) /, "");
      if (count) document.title = `(${el.textContent}) ${document.title}`;
    } catch { /* the banner reports a lost login; anything else shows up elsewhere */ }
  },

  settingsAt: -1, // when the settings shown were asked for: a slower, older answer never replaces them

  applySettings(settings, askedAt) {
    if (askedAt < this.settingsAt) return;
    this.settingsAt = askedAt;
    if (settings.theme) document.documentElement.dataset.theme = settings.theme;
    if (settings.notifications) {
      this.notifications.enabled = settings.notifications.enabled;
      if (settings.notifications.activeClaims !== undefined) this.notifications.claims = settings.notifications.activeClaims;
    }
  },

  // A tab in the background shows a system notification that opens the request; a visible tab
  // needs none (the list updates). A companion app's claim silences us like the desktop notifier.
  notifyBrowser(item) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    if (!this.notifications.enabled || this.notifications.claims > 0) return;
    const note = new Notification("GreyProxy", {
      body: `${item.container_name} wants to connect to ${destPlain(item)}:${item.destination_port}`,
      tag: `greyproxy-pending-${item.id}`,
    });
    note.onclick = () => {
      window.focus();
      location.href = `/pending?highlight=${encodeURIComponent(item.id)}`;
      note.close();
    };
  },

  loggedOut() {
    if (this.loggedOutShown) return;
    this.loggedOutShown = true;
    const banner = $("#banner");
    if (!banner) return;
    replaceChildren(banner, "This browser is no longer logged in (the API token changed or the cookie is gone). ",
      "Open the Dashboard URL printed by ", h("code", {}, "greyproxy serve"), " to log in again.");
    banner.hidden = false;
  },
};

// Each page module calls this once: shell first, then the page's own setup.
export function startPage(init) {
  shell.start();
  Promise.resolve()
    .then(init)
    .catch(reportError);
}
