// The connection log (GET /api/logs) as a filterable, paginated table with a detail row per
// entry. Used by the Logs page and the Activity page's "Connections" tab.
import {
  $, badge, debounce, destExtras, emptyRow, formValues, h, hostNodes, localToIso, renderPager, newestGet, reportError, timeEl,
} from "./core.js";

const PAGE_SIZE = 50;
const AUTO_REFRESH_MS = 5000;

const DETAIL_FIELDS = [
  ["id", "Log id"], ["timestamp", "Time"], ["container_name", "Container"], ["container_id", "Container id"],
  ["destination_host", "Destination"], ["resolved_hostname", "Resolved hostname"],
  ["ptr_hostname", "Reverse DNS (PTR, unverified: never matched by rules)"],
  ["destination_port", "Port"], ["method", "Via"], ["result", "Result"], ["reason", "Reason"],
  ["would", "Would have (report mode)"], ["rule_id", "Rule id"], ["rule_summary", "Rule"],
  ["response_time_ms", "Decision time (ms)"],
];

function destCell(item) {
  const shown = item.resolved_hostname || item.destination_host;
  const ip = item.resolved_hostname && item.resolved_hostname !== item.destination_host ? item.destination_host : null;
  const ptr = item.ptr_hostname ? h("span", { class: "muted small", title: "Reverse DNS (PTR): unverified, never matched by rules" },
    ` PTR ${item.ptr_hostname}`) : null;
  return [hostNodes(shown), ...destExtras(item), ip ? h("span", { class: "muted small" }, ` ${ip}`) : null, ptr];
}

function reasonCell(item) {
  if (item.rule_summary) return h("code", { title: `rule #${item.rule_id}` }, item.rule_summary);
  if (item.reason) return h("span", {}, item.reason.replaceAll("_", " "));
  return item.would ? h("span", {}, `would ${item.would.replace("would_", "")}`) : "";
}

function detail(item, cols) {
  const list = h("dl", { class: "kv" });
  for (const [key, label] of DETAIL_FIELDS) {
    const value = item[key];
    if (value === undefined || value === null || value === "") continue;
    list.append(h("dt", {}, label), h("dd", {}, key === "timestamp" ? new Date(value).toLocaleString() : String(value)));
  }
  const host = item.resolved_hostname || item.destination_host;
  const port = item.destination_port ?? "*";
  const q = new URLSearchParams({ new: "1", container: item.container_name, destination: host, port: String(port) });
  const link = h("a", { class: "btn btn-small", href: `/rules?${q}` }, "Create a rule for this…");
  return h("tr", { class: "detail-row" }, h("td", { colspan: cols }, list, link));
}

export class LogTable {
  constructor({ table, filters, pager }) {
    this.table = table;
    this.filters = filters;
    this.pager = pager;
    this.offset = 0;
    this.listGet = newestGet();
    this.items = [];
    this.total = 0;
    this.open = new Set(); // ids whose detail row is shown
    this.readUrl();
    filters.addEventListener("input", debounce(() => this.reset(), 300));
    filters.addEventListener("change", debounce(() => this.reset(), 300));
    filters.addEventListener("submit", (e) => { e.preventDefault(); this.reset(); });
    $("tbody", table).addEventListener("click", (e) => this.toggle(e));
    $("tbody", table).addEventListener("keydown", (e) => { if (e.key === "Enter") this.toggle(e); });
    // New rows arrive without any event on the bus: poll the first page while the tab is visible.
    setInterval(() => {
      if (!document.hidden && this.offset === 0 && this.filters.elements.auto?.checked) this.refresh();
    }, AUTO_REFRESH_MS);
  }

  // Filters and page live in the URL, so a reload or a shared link shows the same view.
  readUrl() {
    const params = new URLSearchParams(location.search);
    for (const el of this.filters.elements) {
      if (el.name && params.has(el.name) && el.type !== "checkbox") el.value = params.get(el.name);
    }
    this.offset = Number(params.get("offset")) || 0;
  }

  params() {
    const f = formValues(this.filters);
    return {
      container: f.container, destination: f.destination, result: f.result,
      from_date: localToIso(f.from_date), to_date: localToIso(f.to_date),
    };
  }

  writeUrl() {
    const f = formValues(this.filters);
    const params = new URLSearchParams(location.search);
    for (const key of ["container", "destination", "result", "from_date", "to_date"]) {
      if (f[key]) params.set(key, f[key]); else params.delete(key);
    }
    if (this.offset) params.set("offset", String(this.offset)); else params.delete("offset");
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }

  reset() {
    this.offset = 0;
    this.refresh();
  }

  async refresh() {
    try {
      const data = await this.listGet("/api/logs", { ...this.params(), limit: PAGE_SIZE, offset: this.offset });
      this.items = data.items;
      this.total = data.total;
      this.render(data);
      this.writeUrl();
    } catch (err) {
      reportError(err);
    }
  }

  render(data) {
    const cols = this.table.tHead.rows[0].cells.length;
    const body = $("tbody", this.table);
    const rows = [];
    for (const item of data.items) {
      const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
      rows.push(h("tr", { dataset: { id: item.id }, class: `result-${item.result}`, tabindex: "0",
        "aria-expanded": String(this.open.has(item.id)) },
        cell("Time", timeEl(item.timestamp, "absolute")),
        cell("Result", badge(item.result)),
        cell("Container", item.container_name),
        cell("Destination", destCell(item)),
        cell("Port", item.destination_port ?? ""),
        cell("Via", item.method || ""),
        cell("Reason / rule", reasonCell(item)),
        cell("Took", item.response_time_ms == null ? "" : `${item.response_time_ms} ms`)));
      if (this.open.has(item.id)) rows.push(detail(item, cols));
    }
    body.replaceChildren(...rows);
    if (!data.items.length) body.append(emptyRow(this.table, "No connections match."));
    renderPager(this.pager, { total: data.total, limit: PAGE_SIZE, offset: this.offset }, (o) => {
      this.offset = Math.max(0, o);
      this.refresh();
    });
  }

  toggle(event) {
    if (event.target.closest("a, button")) return;
    const tr = event.target.closest("tr[data-id]");
    if (!tr) return;
    const id = Number(tr.dataset.id);
    if (this.open.has(id)) this.open.delete(id); else this.open.add(id);
    this.render({ items: this.items, total: this.total });
  }
}
