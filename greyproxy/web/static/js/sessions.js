// Sessions page: sandboxes registered with POST /api/sessions (credential substitution).
// The API arrives with credential substitution; until then the page shows its empty state.
import { $, api, badge, debounce, h, isMissing, live, newestGet, reportError, startPage, timeEl, toast } from "./core.js";

const table = $("#sessions-table");

function empty(show) {
  $("#sessions-empty").hidden = !show;
  $("#sessions-body").hidden = show;
}

const listGet = newestGet();

async function refresh() {
  let sessions;
  try {
    sessions = await listGet("/api/sessions");
  } catch (err) {
    if (isMissing(err)) empty(true); else reportError(err);
    return;
  }
  sessions = Array.isArray(sessions) ? sessions : sessions.items || [];
  if (!sessions.length) {
    $("#sessions-empty-text").textContent = "No sandbox has registered a session. Sessions appear here while they live.";
    empty(true);
    return;
  }
  empty(false);
  $("tbody", table).replaceChildren(...sessions.map((s) => {
    const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
    return h("tr", {},
      cell("Session", h("code", {}, s.session_id), metadataText(s.metadata)),
      cell("Container", s.container_name, s.identity_bound
        ? [" ", h("span", { class: "badge badge-info", title: "Connections as this container must present the session's proxy token" }, "bound")]
        : null),
      cell("Credentials", (s.credential_labels || []).join(", ") || h("span", { class: "muted" }, "none")),
      cell("Allow all", s.allow_all ? badge("allow all", "warn") : h("span", { class: "muted" }, "no")),
      cell("Created", timeEl(s.created_at)),
      cell("Expires", timeEl(s.expires_at)),
      cell("Last heartbeat", timeEl(s.last_heartbeat)),
      cell("Substitutions", String(s.substitution_count ?? 0)),
      h("td", { class: "row-actions" }, h("button", {
        type: "button", class: "btn btn-small btn-bad", "aria-label": `End session ${s.session_id}`,
        onclick: () => end(s),
      }, "End")));
  }));
}

function metadataText(metadata) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return null;
  return h("div", { class: "muted small" }, entries.map(([k, v]) => `${k}=${v}`).join(" · "));
}

async function end(session) {
  if (!window.confirm(`End session ${session.session_id}? Its rules and credentials stop working at once.`)) return;
  try {
    await api("DELETE", `/api/sessions/${encodeURIComponent(session.session_id)}`);
    toast(`Session ${session.session_id} ended`);
  } catch (err) {
    reportError(err);
  }
  refresh();
}

startPage(async () => {
  live.on("session.*", debounce(refresh, 300));
  live.onResync(refresh);
  await refresh();
});
