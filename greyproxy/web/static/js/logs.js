// Logs page: the connection log with filters, pagination and a detail row per entry.
import { $, debounce, live, startPage } from "./core.js";
import { LogTable } from "./logtable.js";

startPage(async () => {
  const table = new LogTable({ table: $("#log-table"), filters: $("#log-filters"), pager: $("#log-table-pager") });
  // A decided pending request is logged a moment later; look again shortly after.
  live.on(["pending_request.allowed", "pending_request.dismissed"], debounce(() => table.refresh(), 1500));
  live.onResync(() => table.refresh());
  await table.refresh();
});
