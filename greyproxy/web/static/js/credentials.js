// Credentials page: global credentials. The real value goes in once and is never shown
// again; agents get only the placeholder. The API arrives with credential substitution.
import {
  $, api, formValues, h, isMissing, newestGet, reportError, showFormError, startPage, timeEl, toast,
} from "./core.js";

const table = $("#creds-table");
const form = $("#cred-form");

const listGet = newestGet();

async function refresh() {
  let creds;
  try {
    creds = await listGet("/api/credentials");
  } catch (err) {
    if (isMissing(err)) {
      $("#creds-empty").hidden = false;
      $("#creds-body").hidden = true;
    } else {
      reportError(err);
    }
    return;
  }
  creds = Array.isArray(creds) ? creds : creds.items || [];
  const body = $("tbody", table);
  body.replaceChildren(...creds.map((c) => {
    const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
    return h("tr", {},
      cell("Label", h("strong", {}, c.label)),
      cell("Placeholder", h("code", { class: "placeholder" }, c.placeholder), " ",
        h("button", { type: "button", class: "btn btn-small", onclick: () => copy(c.placeholder) }, "Copy")),
      cell("Value", h("code", {}, c.value_preview)),
      cell("Hosts", c.hosts?.length ? c.hosts.map((host, i) => [i ? ", " : "", h("code", {}, host)]) : h("span", { class: "muted" }, "any allowed host")),
      cell("Containers", c.containers?.length ? c.containers.map((name, i) => [i ? ", " : "", h("code", {}, name)]) : h("span", { class: "muted" }, "any container")),
      cell("Created", timeEl(c.created_at)),
      h("td", { class: "row-actions" }, h("button", {
        type: "button", class: "btn btn-small btn-bad", "aria-label": `Delete credential ${c.label}`,
        onclick: () => remove(c),
      }, "Delete")));
  }));
  if (!creds.length) body.append(h("tr", { class: "empty-row" }, h("td", { colspan: 7 }, "No global credentials yet.")));
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Placeholder copied");
  } catch {
    toast("Copy failed: select the placeholder and copy it by hand", "error");
  }
}

async function remove(cred) {
  if (!window.confirm(`Delete credential ${cred.label}? Agents using its placeholder stop getting the real value.`)) return;
  try {
    await api("DELETE", `/api/credentials/${encodeURIComponent(cred.id)}`);
    toast(`Credential ${cred.label} deleted`);
  } catch (err) {
    reportError(err);
  }
  refresh();
}

async function create(event) {
  event.preventDefault();
  const { label, value, hosts, containers } = formValues(form);
  const body = { label, value };
  // A credential bound to hosts is substituted only there.
  if (hosts) body.hosts = hosts.split(/[\s,]+/).filter(Boolean);
  // And, bound to containers, only for connections from them.
  if (containers) body.containers = containers.split(/[\s,]+/).filter(Boolean);
  showFormError(form, "");
  try {
    const cred = await api("POST", "/api/credentials", body);
    form.reset();
    toast(`Credential ${cred.label} added: use ${cred.placeholder}`, "ok");
    refresh();
  } catch (err) {
    showFormError(form, err.message);
  }
}

startPage(async () => {
  form.addEventListener("submit", create);
  await refresh();
});
