// Settings page: theme, notifications (desktop + this browser), TLS interception, silent mode.
import {
  $, $$, api, formValues, get, h, live, relative, reportError, showFormError, startPage, toast,
} from "./core.js";

const notifyBox = $("#notify-enabled");
const mitmBox = $("#mitm-enabled");
const bypassForm = $("#bypass-form");
const redactForm = $("#redact-form");
// Always redacted by greyproxy; listed apart so the textarea holds only the user's own.
const DEFAULT_REDACTED = ["authorization", "proxy-authorization", "cookie", "set-cookie", "*api-key*", "*token*", "*secret*"];

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

// Settings reach this page from several places: the answers to its own saves, re-reads, live
// events. A slow answer can arrive after a newer event, so each snapshot is stamped with when it
// was asked for (an event: when it arrived) and an older one never replaces a newer one. A
// control the user has just changed keeps the user's value until its save has settled.
let latest = null;
let latestAt = -1;
const editing = new Set(); // "theme", "notify", "mitm", "conv": a save under way

function take(snapshot, askedAt) {
  if (askedAt >= latestAt) {
    latest = snapshot;
    latestAt = askedAt;
  }
  showSettings(latest);
}

async function reread() {
  const askedAt = performance.now();
  take(await get("/api/settings"), askedAt);
}

function showSettings(s) {
  if (!editing.has("theme")) for (const radio of $$("input[name=theme]")) radio.checked = radio.value === s.theme;
  document.documentElement.dataset.theme = s.theme;
  if (!editing.has("notify")) notifyBox.checked = Boolean(s.notifications?.enabled);
  if (!editing.has("mitm")) mitmBox.checked = Boolean(s.mitm?.enabled);
  const backend = s.notifications?.backend;
  if (backend && backend !== "none") $("#notify-backend").textContent = `Desktop notifications via ${backend}.`;
  $("#notify-hint").hidden = Boolean(s.notifications?.available) || (backend && backend !== "none");
  if (!editing.has("conv")) $("#conv-enabled").checked = s.conversations?.enabled !== false;
  showClaims(s.notifications?.activeClaims || 0);
  showMitmDetails(s.mitm || {});
  showRedaction(s.redactedHeaders);
}

// The CA and bypass list are shown when this greyproxy reports them (TLS interception).
function showMitmDetails(mitm) {
  const cert = $("#cert-status");
  if (mitm.certGenerated !== undefined) {
    cert.hidden = false;
    cert.replaceChildren(...(mitm.certGenerated
      ? ["CA certificate", mitm.certExpiry ? ` valid until ${mitm.certExpiry}` : "", mitm.installed ? ", trusted by this system. " : ", not trusted by this system yet. ",
        h("a", { href: "/api/cert/download", download: "greyproxy-ca.pem" }, "Download it")]
      : ["No CA certificate yet: generate it here (or run ", h("code", {}, "greyproxy cert generate"), ")."]));
    $("#cert-actions").hidden = false;
    $("#cert-generate").hidden = Boolean(mitm.certGenerated);
    $("#cert-replace").hidden = !mitm.certGenerated;
  }
  if (Array.isArray(mitm.bypass)) {
    bypassForm.hidden = false;
    if (document.activeElement !== bypassForm.elements.bypass) bypassForm.elements.bypass.value = mitm.bypass.join("\n");
  }
}

function showRedaction(patterns) {
  if (!Array.isArray(patterns)) return;
  $("#redact-card").hidden = false;
  const always = patterns.filter((p) => DEFAULT_REDACTED.includes(p.toLowerCase()));
  $("#redact-defaults").replaceChildren(...always.flatMap((p, i) => [i ? ", " : "", h("code", {}, p)]));
  if (document.activeElement !== redactForm.elements.patterns) {
    redactForm.elements.patterns.value = patterns.filter((p) => !DEFAULT_REDACTED.includes(p.toLowerCase())).join("\n");
  }
}

async function saveList(form, body, what) {
  showFormError(form, "");
  const askedAt = performance.now();
  try {
    take(await api("PUT", "/api/settings", body), askedAt);
    toast(`${what} saved`, "ok");
  } catch (err) {
    showFormError(form, err.message);
  }
}

async function generateCa(force) {
  if (force && !window.confirm("Replace the CA? Agents that trust the current one must trust the new one before " +
    "intercepted HTTPS works for them again.")) return;
  try {
    const res = await api("POST", `/api/cert/generate${force ? "?force=true" : ""}`);
    toast(res.message, "ok");
    await reread();
  } catch (err) {
    reportError(err);
  }
}

// The bypass list, checked line by line before it is sent: every bad line named at once (the
// server checks again and has the last word).
const HOST_LINE = /^[a-z0-9*._\-:[\]]+$/; // the same characters the server accepts
function bypassProblems(entries) {
  return entries.map((line, i) => [line, i + 1]).filter(([line]) => line.length > 253 || !HOST_LINE.test(line.toLowerCase()))
    .map(([line, n]) => `line ${n}: ${JSON.stringify(line)} is not a host name, IP address or * pattern`);
}

function showClaims(n) {
  const el = $("#notify-claims");
  el.hidden = !n;
  el.textContent = n ? `A companion app has claimed notifications (${n}); greyproxy and this dashboard stay quiet meanwhile.` : "";
}

async function put(changes, what, control) {
  const askedAt = performance.now();
  editing.add(control);
  let saved = null;
  try {
    saved = await api("PUT", "/api/settings", changes);
  } catch (err) {
    reportError(err);
  } finally {
    editing.delete(control);
  }
  if (saved) {
    take(saved, askedAt);
    toast(`${what} saved`, "ok");
  } else {
    await reread().catch(reportError);
  }
}

// ---- browser notifications ------------------------------------------------------------------

function showPermission() {
  const text = $("#browser-permission");
  const ask = $("#browser-permission-ask");
  if (!("Notification" in window)) {
    text.textContent = "This browser cannot show notifications.";
    ask.hidden = true;
    return;
  }
  const words = {
    granted: "Browser notifications are allowed.",
    denied: "Browser notifications are blocked; allow them in the site settings of your browser.",
    default: "Browser notifications are not allowed yet.",
  };
  text.textContent = words[Notification.permission] || Notification.permission;
  ask.hidden = Notification.permission !== "default";
}

// ---- silent mode --------------------------------------------------------------------------------

function showSilent(status) {
  const el = $("#silent-status");
  el.dataset.active = String(Boolean(status.active));
  $("#silent-off").hidden = !status.active;
  if (!status.active) {
    el.textContent = "Off: unknown connections wait for you.";
    return;
  }
  const what = status.mode === "deny" ? "Denying" : "Allowing";
  const until = status.expires_at
    ? `until ${new Date(status.expires_at).toLocaleTimeString()} (${relative(status.expires_at)})`
    : "until greyproxy restarts";
  el.replaceChildren(h("strong", {}, `${what} everything`), ` ${until}.`);
}

async function silent(method, body) {
  try {
    showSilent(await api(method, "/api/allowall", body));
  } catch (err) {
    reportError(err);
  }
}

function showMiddlewares(items) {
  $("#mw-empty").hidden = items.length > 0;
  $("#mw-list").replaceChildren(...items.map((m) => h("li", {},
    h("span", { class: `badge badge-${m.connected ? "ok" : "bad"}` }, m.connected ? "connected" : "down"), " ",
    h("strong", {}, m.name), h("span", { class: "muted small" }, ` ${m.transport} · ${m.target}`),
    h("div", { class: "muted small" },
      `hooks: ${m.hooks.map((hk) => hk.type).join(", ") || "none"} · ${m.requests} asked · ${m.denied} denied · ` +
      `${m.rewritten} rewritten · ${m.failures} failures · on disconnect: ${m.on_disconnect}`),
    m.last_error ? h("div", { class: "form-error" }, m.last_error) : null)));
}

startPage(async () => {
  for (const radio of $$("input[name=theme]")) {
    radio.addEventListener("change", () => put({ theme: radio.value }, "Theme", "theme"));
  }
  notifyBox.addEventListener("change", () => put({ notifications: { enabled: notifyBox.checked } }, "Notifications", "notify"));
  mitmBox.addEventListener("change", () => put({ mitm: { enabled: mitmBox.checked } }, "Traffic inspection", "mitm"));
  $("#browser-permission-ask").addEventListener("click", async () => {
    await Notification.requestPermission();
    showPermission();
  });
  $("#silent-form").addEventListener("submit", (e) => {
    e.preventDefault();
    silent("POST", formValues(e.target));
  });
  $("#silent-off").addEventListener("click", () => silent("DELETE"));
  bypassForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const entries = lines(bypassForm.elements.bypass.value);
    const problems = bypassProblems(entries);
    if (problems.length) {
      showFormError(bypassForm, `${problems.length} line${problems.length === 1 ? "" : "s"} to fix, nothing saved:\n${problems.join("\n")}`);
      return;
    }
    saveList(bypassForm, { mitm: { bypass: entries } }, "Bypass list");
  });
  $("#cert-generate").addEventListener("click", () => generateCa(false));
  $("#cert-replace").addEventListener("click", () => generateCa(true));
  $("#conv-enabled").addEventListener("change", (e) => put({ conversations: { enabled: e.target.checked } }, "Conversations", "conv"));
  redactForm.addEventListener("submit", (e) => {
    e.preventDefault();
    saveList(redactForm, { redactedHeaders: lines(redactForm.elements.patterns.value) }, "Redaction patterns");
  });
  live.on("settings.changed", (s) => take(s, performance.now()));
  live.onResync(() => reread().catch(reportError)); // events were missed while offline
  live.on("notification.claims_changed", (d) => showClaims(d.active_claims));
  live.on("allowall.changed", () => get("/api/allowall").then(showSilent).catch(reportError));
  showPermission();
  const askedAt = performance.now();
  const [settings, status] = await Promise.all([get("/api/settings"), get("/api/allowall")]);
  take(settings, askedAt);
  showSilent(status);
  get("/api/middlewares").then((d) => showMiddlewares(d.items)).catch(reportError);
  live.on("config.reloaded", () => get("/api/middlewares").then((d) => showMiddlewares(d.items)).catch(reportError));
});
