// Dashboard: totals, a timeline, what is waiting, what gets blocked most, recent requests.
import { $, $$, badge, debounce, destExtras, destText, h, hostNodes, live, newestGet, reportError, startPage, timeEl } from "./core.js";

const REFRESH_MS = 10000;
const PREVIEW = 5; // pending requests listed under "Waiting for you"
let period = "today";

function setText(id, value) {
  $(id).textContent = value;
}

// Axis labels that say where the bars are: five ticks, the hour alone within one day, the day
// as well once the range spans days (never "12:00 AM … 12:00 AM"), the last one the bucket's end.
const BUCKET_MS = { hour: 3600e3, day: 86400e3 };

function tickLabel(date, group, withDay) {
  if (group === "day") return date.toLocaleDateString([], { month: "short", day: "numeric" });
  const time = date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  return withDay ? `${date.toLocaleDateString([], { weekday: "short", day: "numeric" })} ${time}` : time;
}

function timeline(points, group) {
  const chart = $("#timeline");
  const max = Math.max(1, ...points.map((p) => p.allowed + p.blocked));
  // The bucket is what the API used (hours, days or weeks): the gap between two points.
  const bucket = points.length > 1 ? Date.parse(points[1].timestamp) - Date.parse(points[0].timestamp) : BUCKET_MS[group];
  const start = points.length ? new Date(points[0].timestamp) : null;
  const end = points.length ? new Date(Date.parse(points[points.length - 1].timestamp) + bucket) : null;
  const withDay = Boolean(start && end && start.toDateString() !== new Date(end - 1).toDateString());
  chart.replaceChildren(...points.map((p) => {
    const from = new Date(p.timestamp);
    const label = group === "hour"
      ? `${tickLabel(from, group, withDay)}–${tickLabel(new Date(from.getTime() + bucket), group, false)}`
      : tickLabel(from, group, false);
    const bar = h("div", { class: "bar", title: `${label}: ${p.allowed} allowed, ${p.blocked} blocked` },
      h("span", { class: "bar-bad" }), h("span", { class: "bar-ok" }));
    // Heights through the CSSOM: the page's CSP forbids inline style attributes, not this.
    bar.children[0].style.height = `${(p.blocked / max) * 100}%`;
    bar.children[1].style.height = `${(p.allowed / max) * 100}%`;
    return bar;
  }));
  const axis = $("#timeline-axis");
  if (!points.length) {
    axis.replaceChildren();
    return;
  }
  // Ticks on bucket boundaries (round hours or days); the last is the end, "now" if still open.
  const ticks = [];
  const count = Math.min(5, points.length + 1);
  for (let i = 0; i < count; i++) {
    const index = Math.round((i * points.length) / (count - 1));
    const at = new Date(start.getTime() + index * bucket);
    const last = i === count - 1;
    const text = last && at.getTime() > Date.now() ? "now" : tickLabel(at, group, withDay);
    ticks.push(h("span", { class: "tick" }, text));
  }
  axis.replaceChildren(...ticks);
  const allowed = points.reduce((n, p) => n + p.allowed, 0);
  const blocked = points.reduce((n, p) => n + p.blocked, 0);
  chart.setAttribute("aria-label", `Requests from ${start.toLocaleString()} to ${end.toLocaleString()}: ` +
    `${allowed} allowed, ${blocked} blocked`);
}

function listOrEmpty(el, items, text) {
  el.replaceChildren(...items);
  if (!items.length) el.append(h("li", { class: "muted" }, text));
}

const statsGet = newestGet();
const pendingGet = newestGet();

async function refreshStats() {
  try {
    const s = await statsGet("/api/dashboard", { period, recent_limit: 8 });
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
    const data = await pendingGet("/api/pending", { limit: PREVIEW });
    setText("#stat-pending", String(data.total));
    $(".stat-pending").classList.toggle("has-pending", data.total > 0);
    const rows = data.items.map((p) => h("li", { class: "split-line" },
      h("a", { href: `/pending?highlight=${p.id}` }, h("strong", {}, p.container_name), " → ", hostNodes(destText(p), p.destination_port), ...destExtras(p)),
      p.waiter_count ? h("span", { class: "badge badge-warn" }, `${p.waiter_count} waiting`) : timeEl(p.last_seen)));
    // The preview shows a few; the rest are counted, not silently left out.
    if (data.total > data.items.length) {
      rows.push(h("li", { class: "more-waiting" }, h("a", { href: "/pending" }, `+${data.total - data.items.length} more waiting →`)));
    }
    listOrEmpty($("#pending-preview"), rows, "Nothing is waiting.");
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
