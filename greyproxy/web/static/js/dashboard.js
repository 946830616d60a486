// Dashboard: totals, a timeline, what is waiting, what gets blocked most, recent requests.
import { $, $$, badge, debounce, destExtras, destText, get, h, hostNodes, live, reportError, startPage, timeEl } from "./core.js";

const REFRESH_MS = 10000;
let period = "today";

function setText(id, value) {
  $(id).textContent = value;
}

function timeline(points, group) {
  const chart = $("#timeline");
  const max = Math.max(1, ...points.map((p) => p.allowed + p.blocked));
  chart.replaceChildren(...points.map((p) => {
    const label = new Date(p.timestamp).toLocaleString([], group === "hour"
      ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric" });
    const bar = h("div", { class: "bar", title: `${label}: ${p.allowed} allowed, ${p.blocked} blocked` },
      h("span", { class: "bar-bad" }), h("span", { class: "bar-ok" }));
    // Heights through the CSSOM: the page's CSP forbids inline style attributes, not this.
    bar.children[0].style.height = `${(p.blocked / max) * 100}%`;
    bar.children[1].style.height = `${(p.allowed / max) * 100}%`;
    return bar;
  }));
  const axis = $("#timeline-axis");
  const first = points[0];
  const last = points[points.length - 1];
  const fmt = (p) => new Date(p.timestamp).toLocaleString([], group === "hour"
    ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric" });
  axis.replaceChildren(h("span", {}, first ? fmt(first) : ""), h("span", {}, last ? fmt(last) : ""));
}

function listOrEmpty(el, items, text) {
  el.replaceChildren(...items);
  if (!items.length) el.append(h("li", { class: "muted" }, text));
}

async function refreshStats() {
  try {
    const s = await get("/api/dashboard", { period, recent_limit: 8 });
    setText("#stat-total", s.total_requests.toLocaleString());
    setText("#stat-allowed", s.allowed.toLocaleString());
    setText("#stat-blocked", s.blocked.toLocaleString());
    setText("#stat-rate", s.total_requests ? `${Math.round(s.allow_rate)}%` : "—");
    const group = s.timeline.length > 1 && Date.parse(s.timeline[1].timestamp) - Date.parse(s.timeline[0].timestamp) > 3600e3 ? "day" : "hour";
    timeline(s.timeline, group);
    listOrEmpty($("#top-blocked"), s.top_blocked.map((b) => {
      // Never "every container": with several blocked containers the user names the one to allow.
      const q = new URLSearchParams({ new: "1", destination: b.resolved_hostname || b.host, port: String(b.port ?? "*"),
        container: b.containers?.length === 1 ? b.containers[0] : "", blocked_for: (b.containers || []).join(", ") });
      return h("li", { class: "split-line" },
        h("span", {}, h("strong", {}, b.resolved_hostname || b.host), `:${b.port ?? "*"}`,
          h("span", { class: "muted small" }, ` ${(b.containers || []).join(", ")}`)),
        h("span", {}, h("span", { class: "count" }, String(b.count)), " ",
          h("a", { class: "btn btn-small", href: `/rules?${q}`, title: "Create a rule for this destination" }, "Rule…")));
    }), "Nothing blocked in this period.");
    listOrEmpty($("#by-container"), s.by_container.map((c) => h("li", { class: "split-line" },
      h("span", {}, h("strong", {}, c.name)),
      h("span", { class: "small" }, h("span", { class: "ok" }, `${c.allowed} allowed`), " · ",
        h("span", { class: "bad" }, `${c.blocked} blocked`)))), "No traffic in this period.");
    listOrEmpty($("#recent"), s.recent.map((r) => h("li", { class: "split-line" },
      h("span", {}, badge(r.result), " ", h("strong", {}, r.container_name), " → ", hostNodes(destText(r), r.destination_port ?? ""), ...destExtras(r)),
      timeEl(r.timestamp))), "No requests yet.");
  } catch (err) {
    reportError(err);
  }
}

async function refreshPending() {
  try {
    const data = await get("/api/pending", { limit: 5 });
    setText("#stat-pending", String(data.total));
    $(".stat-pending").classList.toggle("has-pending", data.total > 0);
    listOrEmpty($("#pending-preview"), data.items.map((p) => h("li", { class: "split-line" },
      h("a", { href: `/pending?highlight=${p.id}` }, h("strong", {}, p.container_name), " → ", hostNodes(destText(p), p.destination_port), ...destExtras(p)),
      p.waiter_count ? h("span", { class: "badge badge-warn" }, `${p.waiter_count} waiting`) : timeEl(p.last_seen))),
    "Nothing is waiting.");
  } catch (err) {
    reportError(err);
  }
}

startPage(async () => {
  for (const button of $$("#period button")) {
    button.addEventListener("click", () => {
      period = button.dataset.period;
      for (const b of $$("#period button")) b.setAttribute("aria-pressed", String(b === button));
      refreshStats();
    });
  }
  live.on(["pending_request.*", "waiters.changed"], debounce(refreshPending, 200));
  live.on(["pending_request.allowed", "pending_request.dismissed"], debounce(refreshStats, 1500));
  live.onResync(() => { refreshPending(); refreshStats(); });
  setInterval(() => { if (!document.hidden) refreshStats(); }, REFRESH_MS);
  await Promise.all([refreshStats(), refreshPending()]);
});
