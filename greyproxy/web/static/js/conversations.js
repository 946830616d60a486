// Conversations page: LLM conversations assembled from captured traffic, list + turn-by-turn view.
import {
  $, $$, debounce, formValues, get, h, isMissing, live, prettyBody, renderPager, newestGet, reportError,
  startPage, timeEl, returnTo, revealDetail,
} from "./core.js";

const PAGE_SIZE = 50;
const listEl = $("#conv-list");
const filters = $("#conv-filters");
const detail = $("#conv-detail");
let offset = 0;
let available = true;
let selected = null;

function showMissing() {
  available = false;
  $("#conv-empty").hidden = false;
  $("#conv-body").hidden = true;
}

const listGet = newestGet();

async function refresh() {
  if (!available) return;
  const f = formValues(filters);
  try {
    const data = await listGet("/api/conversations", { ...f, limit: PAGE_SIZE, offset });
    const items = data.items || []; // greyproxy answers null for "none"
    listEl.replaceChildren(...items.map((c) => h("li", {},
      h("button", { type: "button", class: `conv-item${c.id === selected ? " is-selected" : ""}`, dataset: { id: c.id } },
        h("span", { class: "conv-title" }, c.first_prompt || c.system_prompt_summary || c.id),
        h("span", { class: "muted small" },
          [c.model, c.container_name, c.client_name, `${c.turn_count ?? 0} turns`].filter(Boolean).join(" · "), " · ",
          timeEl(c.started_at))))));
    const filtered = Object.values(f).some(Boolean);
    if (!items.length) {
      listEl.append(h("li", { class: "muted" }, filtered ? "No conversations match." :
        "No conversations yet. They are assembled from captured LLM API calls (Anthropic, OpenAI, OpenRouter, " +
        "Gemini, and any chat-completions endpoint, recognised by its request); HTTPS calls are seen with TLS interception on."));
    }
    renderPager($("#conv-pager"), { total: data.total || 0, limit: PAGE_SIZE, offset }, (o) => { offset = Math.max(0, o); refresh(); });
  } catch (err) {
    if (isMissing(err)) showMissing(); else reportError(err);
  }
}

// Steps come in a few shapes (assistant text, tool calls with previews, thinking); show the
// readable fields of each and fall back to its JSON.
function stepView(step) {
  if (typeof step === "string") return h("div", { class: "step" }, h("p", { class: "prewrap" }, step));
  const kind = step.type || step.kind || (step.tool_name || step.name ? "tool call" : "step");
  const text = step.text || step.content || step.summary || step.tool_summary;
  const parts = [h("span", { class: "step-kind" }, kind.replaceAll("_", " "))];
  if (step.tool_name || step.name) parts.push(h("code", {}, step.tool_name || step.name));
  if (typeof text === "string") parts.push(h("p", { class: "prewrap" }, text));
  for (const key of ["input_preview", "result_preview", "output_preview"]) {
    if (step[key]) parts.push(h("pre", { class: "code small" }, prettyBody(step[key])));
  }
  if (parts.length === 1) parts.push(h("pre", { class: "code small" }, JSON.stringify(step, null, 2)));
  return h("div", { class: `step step-${String(kind).replace(/\W+/g, "-")}` }, parts);
}

function turnView(turn) {
  return h("section", { class: "turn" },
    h("h3", {}, `Turn ${turn.turn_number}`, " ",
      h("span", { class: "muted small" }, [turn.model, turn.duration_ms != null ? `${turn.duration_ms} ms` : null].filter(Boolean).join(" · "), " ",
        turn.timestamp ? timeEl(turn.timestamp, "absolute") : null)),
    turn.user_prompt ? h("div", { class: "prompt prewrap" }, turn.user_prompt) : null,
    (turn.steps || []).map(stepView));
}

// The open conversation is in the address bar (?id=…): the link reopens it.
function writeUrl() {
  const params = new URLSearchParams(location.search);
  if (selected) params.set("id", selected); else params.delete("id");
  history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
}

async function show(id) {
  selected = id;
  writeUrl();
  for (const b of $$(".conv-item", listEl)) b.classList.toggle("is-selected", b.dataset.id === id);
  detail.hidden = false;
  detail.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  revealDetail(detail);
  try {
    const c = await get(`/api/conversations/${encodeURIComponent(id)}`);
    // replaceChildren() takes nodes only: flatten the turn list and drop the absent parts.
    const parts = [
      h("div", { class: "card-head" }, h("h2", {}, c.model || "Conversation"),
        h("button", { type: "button", class: "btn btn-small", onclick: () => {
          detail.hidden = true;
          selected = null;
          writeUrl();
          returnTo($$(".conv-item", listEl).find((b) => b.dataset.id === id));
        } }, "Close")),
      h("p", { class: "muted" }, [c.provider, c.container_name, c.client_name].filter(Boolean).join(" · "), " · ",
        timeEl(c.started_at, "absolute"), c.incomplete ? ` · incomplete${c.incomplete_reason ? `: ${c.incomplete_reason}` : ""}` : ""),
      c.system_prompt ? h("details", {}, h("summary", {}, c.system_prompt_summary || "System prompt"),
        h("pre", { class: "code prewrap" }, c.system_prompt)) : null,
      (c.linked_subagents || []).length ? h("p", {}, "Subagents: ", c.linked_subagents.map((sid) =>
        h("button", { type: "button", class: "btn btn-small", onclick: () => show(sid) }, sid))) : null,
      c.parent_conversation_id ? h("p", {}, h("button", { type: "button", class: "btn btn-small",
        onclick: () => show(c.parent_conversation_id) }, "← Parent conversation")) : null,
      (c.turns || []).map(turnView),
    ];
    detail.replaceChildren(...parts.flat().filter((part) => part !== null && part !== undefined));
    revealDetail(detail); // again, now that it has its full height
  } catch (err) {
    detail.replaceChildren(h("p", { class: "form-error" }, err.message));
  }
}

startPage(async () => {
  const refilter = debounce(() => { offset = 0; refresh(); }, 300);
  filters.addEventListener("input", refilter);
  filters.addEventListener("submit", (e) => e.preventDefault());
  listEl.addEventListener("click", (e) => {
    const item = e.target.closest(".conv-item");
    if (item) show(item.dataset.id);
  });
  live.on("conversation.updated", debounce((d) => {
    refresh();
    if (selected && d && d.conversation_id === selected) show(selected);
  }, 500));
  live.onResync(refresh);
  await refresh();
  const linked = new URLSearchParams(location.search).get("id");
  if (linked && available) show(linked);
});
