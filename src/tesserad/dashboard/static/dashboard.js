// tessera dashboard: pages over /api/v1, which read but for restores. Every value is put into
// the page with textContent (never innerHTML), so a name such as "<script>" shows as text.
"use strict";

const API = "/api/v1";
const LIVE_MS = 1000;
const HISTORY_POINTS = 2000;

// -- DOM helpers --------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "href") node.setAttribute("href", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(path, text) {
  return el("a", { href: path, text });
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

async function api(path) {
  const response = await fetch(API + path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// A change (a restore): POST with the header that tells the server the dashboard's own page sent it.
async function change(path) {
  const response = await fetch(API + path, {
    method: "POST", credentials: "same-origin", headers: { Accept: "application/json", "X-Tessera-Dashboard": "1" },
  });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// The logout button, for a browser logged in with the form (a session): POST with the change
// header (a page on another site can send neither it nor this origin), then the login form.
async function offerLogout() {
  const session = await api("/session").catch(() => null);
  if (!session || !session.can_log_out) return;
  const button = el("button", { type: "button", class: "logout", id: "logout", text: "Log out" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    const response = await fetch("/logout", {
      method: "POST", credentials: "same-origin", headers: { "X-Tessera-Dashboard": "1" },
    }).catch(() => null);
    if (response && response.ok) location.assign("/login");
    else button.disabled = false;
  });
  document.querySelector("header").append(button);
}

function problem(app, error) {
  app.append(el("p", { class: "problem", text: String(error.message || error) }));
}

// -- formatting ---------------------------------------------------------------------------

function when(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function number(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return Math.abs(value) >= 1000 ? value.toFixed(1) : value.toPrecision(digits);
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function micros(us) {
  if (us === null || us === undefined) return "";
  return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(0)} us`;
}

function progressBar(fraction) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return el("span", {}, el("span", { class: "bar-track" }, el("span", { class: "bar", style: `width:${pct.toFixed(0)}%` })), `${pct.toFixed(0)}%`);
}

// Marks the page as drawn: tests wait for the attribute, the benchmark reads the mark's time.
function rendered() {
  if (document.body.dataset.rendered) return;
  performance.mark("rendered");
  document.body.dataset.rendered = "1";
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
}

// -- tables -------------------------------------------------------------------------------

// columns: [{label, value: row => sortable value, cell: row => node or text, num: bool}]
function sortableTable(columns, rows, state) {
  const table = el("table", {});
  const head = el("tr", {});
  const body = el("tbody", {});
  const render = () => {
    clear(body);
    const sorted = rows.slice();
    if (state.sort !== undefined) {
      const column = columns[state.sort];
      sorted.sort((a, b) => {
        const x = column.value(a), y = column.value(b);
        const missing = (x === undefined || x === null || x === "") - (y === undefined || y === null || y === "");
        if (missing) return missing;
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return state.asc ? order : -order;
      });
    }
    for (const row of sorted) {
      body.append(el("tr", {}, columns.map((c) => el("td", { class: c.num ? "num" : "" }, c.cell ? c.cell(row) : number(c.value(row))))));
    }
    columns.forEach((c, i) => {
      head.children[i].className = "sortable" + (state.sort === i ? " sorted" + (state.asc ? " asc" : "") : "");
    });
  };
  columns.forEach((column, i) => {
    head.append(el("th", {
      text: column.label,
      onclick: () => {
        state.asc = state.sort === i ? !state.asc : !!column.num === false;
        state.sort = i;
        render();
      },
    }));
  });
  table.append(el("thead", {}, head), body);
  render();
  return table;
}

function plainTable(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

// -- charts -------------------------------------------------------------------------------

const COLORS = ["#2f6fde", "#e8590c", "#0ca678", "#ae3ec9", "#f59f00", "#1098ad", "#e03131", "#5c7cfa"];

// Series of (steps, values) on one step axis; a series has nulls where another has a point.
function align(series) {
  const xs = Array.from(new Set(series.flatMap((s) => s.steps))).sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const columns = series.map((s) => {
    const ys = new Array(xs.length).fill(null);
    s.steps.forEach((step, i) => { ys[index.get(step)] = s.values[i]; });
    return ys;
  });
  return [xs, ...columns];
}

class Chart {
  constructor(container, title, names, xLabel = "step") {
    this.container = container;
    this.series = names.map((name) => ({ name, steps: [], values: [] }));
    this.pending = false;
    const width = Math.max(300, Math.min(1100, container.clientWidth || 900) - 12);
    this.plot = new uPlot({
      title,
      width,
      height: 260,
      scales: { x: { time: false } },
      axes: [{ label: xLabel }, {}],
      series: [{ label: xLabel }, ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 1.5 }))],
    }, align(this.series), container);
    this.update();
  }

  set(name, steps, values) {
    const series = this.series.find((s) => s.name === name);
    series.steps = steps.slice();
    series.values = values.slice();
    this.redraw();
  }

  // Appends a point when it is newer than the series' last one (history and live events overlap).
  add(name, step, value) {
    const series = this.series.find((s) => s.name === name);
    if (!series || value === null || value === undefined) return;
    const last = series.steps.length ? series.steps[series.steps.length - 1] : -Infinity;
    if (step <= last) return;
    series.steps.push(step);
    series.values.push(value);
    this.redraw();
  }

  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData(align(this.series));
      this.update();
    });
  }

  update() {
    this.container.dataset.points = String(this.series.reduce((n, s) => n + s.steps.length, 0));
  }
}

function chartBox(parent) {
  const box = el("div", { class: "chart" });
  parent.append(box);
  return box;
}

// -- pages --------------------------------------------------------------------------------

function stateCell(state) {
  return el("span", { class: `state-${state}`, text: state });
}

const ACTIVE_STATES = ["queued", "running", "interrupted"];
const ENDED_STATES = ["succeeded", "failed", "cancelled"];

// Up to `limit` items of a list (`key` in each page of `path`), following page tokens: a page
// ends at a byte bound as well as at page_size, so one page may hold fewer; and whether more exist.
async function listed(path, key, query, limit) {
  const items = [];
  let token = "";
  do {
    const asked = new URLSearchParams(query);
    asked.set("page_size", String(Math.min(1000, limit - items.length)));
    if (token) asked.set("page_token", token);
    const page = await api(`${path}?${asked}`);
    items.push(...page[key]);
    token = page.next_page_token;
  } while (token && items.length < limit);
  return { items, more: Boolean(token) };
}

// A note under a list cut at `limit` items.
function moreNote(limit, command) {
  return el("p", { class: "muted more", text: `Showing the first ${limit}; \`${command}\` lists them all.` });
}

// Up to `limit` jobs in `states`, newest first; and whether more exist.
async function jobsIn(states, limit) {
  const { items, more } = await listed("/jobs", "jobs", states.map((s) => ["state", s]), limit);
  return { jobs: items, more };
}

async function jobsPage(app) {
  app.append(el("h1", { text: "Jobs" }));
  const active = el("div", { id: "active-jobs" });
  const finished = el("div", { id: "finished-jobs" });
  app.append(el("h2", { text: "Queued and running" }), active, el("h2", { text: "Finished" }), finished);
  const states = [{ sort: undefined, asc: false }, { sort: undefined, asc: false }];
  const columns = [
    { label: "job", value: (j) => j.job_id, cell: (j) => link(`/jobs/${encodeURIComponent(j.job_id)}`, j.job_id) },
    { label: "state", value: (j) => j.state, cell: (j) => stateCell(j.state) },
    { label: "experiment", value: (j) => j.experiment, cell: (j) => j.experiment },
    { label: "progress", value: (j) => j.progress, cell: (j) => progressBar(j.progress), num: true },
    { label: "epoch", value: (j) => j.epoch, num: true },
    { label: "step", value: (j) => j.step, num: true },
    { label: "ETA", value: (j) => j.eta_s, cell: (j) => duration(j.eta_s), num: true },
    { label: "devices", value: (j) => j.devices.join(", "), cell: (j) => j.devices.join(", ") },
    { label: "created", value: (j) => j.created_at, cell: (j) => when(j.created_at) },
  ];
  // Every queued or running job; finished ones newest first, a page at a time (?finished=N sets
  // the page, 100 by default), more on request.
  const finishedPage = Math.max(1, Number(new URLSearchParams(location.search).get("finished")) || 100);
  let finishedLimit = finishedPage;
  const refresh = async () => {
    const [running, ended] = await Promise.all([jobsIn(ACTIVE_STATES, Infinity), jobsIn(ENDED_STATES, finishedLimit)]);
    clear(active).append(running.jobs.length ? sortableTable(columns, running.jobs, states[0])
      : el("p", { class: "muted", text: "Nothing queued or running: submit a job with `tessera train`." }));
    clear(finished).append(ended.jobs.length ? sortableTable(columns, ended.jobs, states[1])
      : el("p", { class: "muted", text: "No finished jobs." }));
    if (ended.more) {
      finished.append(el("button", { type: "button", id: "older-jobs", text: `Show ${finishedPage} older`, onclick: () => {
        finishedLimit += finishedPage;
        refresh().catch((error) => problem(app, error));
      } }));
    }
    rendered();
  };
  await refresh();
  setInterval(() => refresh().catch(() => {}), 2000);
}

// As the CLI says it (tessera.follow.stopped_early_text).
function stoppedEarlyText(stop) {
  const epochs = `${stop.patience} epoch${stop.patience === 1 ? "" : "s"}`;
  return `stopped early after epoch ${stop.epoch}: ${stop.metric} did not improve on its best, ${Number(stop.best.toPrecision(6))} ` +
    `after epoch ${stop.best_epoch}, by more than ${stop.min_delta} for ${epochs} (early_stopping.patience)`;
}

async function jobPage(app, jobId) {
  let job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  app.append(el("h1", {}, "Job ", el("span", { class: "mono", text: job.job_id })));
  const cards = el("div", { class: "cards" });
  const facts = el("p", { class: "muted" });
  app.append(cards, facts);
  const showJob = () => {
    clear(cards).append(
      card("state", job.state), card("progress", `${((job.progress || 0) * 100).toFixed(0)}%`),
      card("epoch", number(job.epoch)), card("step", `${number(job.step)} / ${number(job.total_steps)}`),
      card("ETA", duration(job.eta_s) || "-"), card("devices", job.devices.join(", ") || "-"),
    );
    clear(facts).append(el("span", {}, `experiment ${job.experiment} · run `, link(`/runs/${encodeURIComponent(job.run_id)}`, job.run_id),
      ` · created ${when(job.created_at)} by ${job.created_by}`,
      job.registered ? [" · ", el("span", { id: "registered" }, "registered as ",
        link(`/models/${encodeURIComponent(job.registered.model)}`, `${job.registered.model} v${job.registered.version}`),
        job.registered.alias ? ` (alias ${job.registered.alias})` : [])] : [],
      job.error ? [" · ", el("span", { class: "problem", text: `${job.error.kind}: ${job.error.message}` })] : [],
      job.stopped_early ? [" · ", el("span", { id: "stopped-early", text: stoppedEarlyText(job.stopped_early) })] : []));
  };
  showJob();

  const run = await api(`/runs/${encodeURIComponent(job.run_id)}`);
  const keys = run.metrics.map((m) => m.key);
  const epochKeys = Array.from(new Set([...keys, ...Object.keys(job.metrics)])).filter((k) => k !== "loss" && k !== "lr").sort();
  const lossChart = new Chart(chartBox(app), "loss (every step)", ["loss"]);
  lossChart.container.id = "loss-chart";
  const epochChart = epochKeys.length ? new Chart(chartBox(app), "epoch metrics", epochKeys) : null;
  const histories = await Promise.all(["loss", ...epochKeys].filter((k) => keys.includes(k)).map((key) =>
    api(`/runs/${encodeURIComponent(job.run_id)}/metrics/${encodeURIComponent(key)}?max_points=${HISTORY_POINTS}`)));
  for (const history of histories) {
    const chart = history.key === "loss" ? lossChart : epochChart;
    if (chart) chart.set(history.key, history.steps, history.values);
  }
  rendered();

  const events = new EventSource(`${API}/jobs/${encodeURIComponent(jobId)}/events?from_seq=${job.last_seq + 1}`);
  events.addEventListener("step", (e) => { const d = JSON.parse(e.data); lossChart.add("loss", d.step, d.loss); job.step = d.step; job.epoch = d.epoch; });
  events.addEventListener("epoch", (e) => {
    const d = JSON.parse(e.data);
    for (const [key, value] of Object.entries(d.metrics)) if (epochChart) epochChart.add(key, d.step, value);
  });
  events.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    job.progress = d.fraction; job.eta_s = d.eta_s; job.step = d.step; job.total_steps = d.total_steps;
    showJob();
  });
  events.addEventListener("state", (e) => { const d = JSON.parse(e.data); job.state = d.state; job.devices = d.devices; showJob(); });
  events.addEventListener("end", async () => {
    events.close();
    job = await api(`/jobs/${encodeURIComponent(jobId)}`);
    showJob();
  });
}

function runsQuery() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const name of ["experiment", "filter", "order_by", "status", "param", "metric", "view"]) for (const v of params.getAll(name)) if (v) query.append(name, v);
  return query;
}

const RUNS_SHOWN = 500;

async function runsPage(app) {
  app.append(el("h1", { text: "Runs" }));
  const params = new URLSearchParams(location.search);
  // MLflow's lifecycle filter: deleted runs (and experiments) are shown only when asked for.
  const lifecycle = el("select", { name: "view" }, ["active", "deleted", "all"].map((v) => el("option", { value: v, text: v })));
  lifecycle.value = ["deleted", "all"].includes(params.get("view")) ? params.get("view") : "active";
  const form = el("form", { class: "filters", method: "get", action: "/runs" },
    el("label", {}, "experiment ", el("input", { name: "experiment", value: params.get("experiment") || "", size: 14 })),
    el("label", {}, "param ", el("input", { name: "param", value: params.get("param") || "", placeholder: "lr=0.01", size: 14 })),
    el("label", {}, "metric ", el("input", { name: "metric", value: params.get("metric") || "", placeholder: "val_loss:last:lt:0.5", size: 20 })),
    el("label", {}, "filter ", el("input", { name: "filter", value: params.get("filter") || "", placeholder: "metrics.val_loss < 0.5", size: 24 })),
    el("label", {}, "order by ", el("input", { name: "order_by", value: params.get("order_by") || "", placeholder: "metrics.val_loss DESC", size: 18 })),
    el("label", {}, "lifecycle ", lifecycle),
    el("button", { type: "submit", text: "Filter" }));
  app.append(form);
  const deletedView = lifecycle.value !== "active";
  const session = deletedView ? await api("/session") : null;
  const restoreButton = (label, path, allowed) => allowed
    ? el("button", { type: "button", class: "restore", text: "Restore", "aria-label": `restore ${label}`, onclick: async (e) => {
      e.target.setAttribute("disabled", "");
      try {
        await change(path);
        location.reload();
      } catch (error) {
        e.target.removeAttribute("disabled");
        problem(app, error);
      }
    } })
    : "";
  if (deletedView) {
    if (!session.can_restore_runs) {
      app.append(el("p", { class: "muted", id: "restore-refused", text: `Restoring needs the ${session.restore_role} role; this token has the ${session.role} role.` }));
    }
    await deletedExperiments(app, params.get("experiment") || "", (x) => restoreButton(x.name, `/experiments/${encodeURIComponent(x.name)}/restore`, session.can_restore_experiments));
  }
  let runs;
  let moreRuns;
  try {
    ({ items: runs, more: moreRuns } = await listed("/runs", "runs", runsQuery(), RUNS_SHOWN));
  } catch (error) {
    problem(app, error);
    rendered();
    return;
  }
  const metricKeys = Array.from(new Set(runs.flatMap((r) => r.metrics.map((m) => m.key)))).sort();
  const paramKeys = Array.from(new Set(runs.flatMap((r) => Object.keys(r.params)))).sort();
  const chosen = new Set();
  const compareButton = el("button", { type: "button", text: "Compare selected", disabled: "" });
  const compareKey = el("select", {}, metricKeys.map((k) => el("option", { value: k, text: k })));
  if (metricKeys.includes("loss")) compareKey.value = "loss";
  const compareBox = el("div", {});
  const lastOf = (run, key) => { const m = run.metrics.find((s) => s.key === key); return m ? m.last : undefined; };
  const columns = [
    { label: "", value: () => "", cell: (r) => el("input", { type: "checkbox", "aria-label": `compare ${r.run_id}`, onchange: (e) => {
      if (e.target.checked) chosen.add(r.run_id); else chosen.delete(r.run_id);
      if (chosen.size >= 2) compareButton.removeAttribute("disabled"); else compareButton.setAttribute("disabled", "");
    } }) },
    { label: "run", value: (r) => r.run_id, cell: (r) => link(`/runs/${encodeURIComponent(r.run_id)}`, r.run_id) },
    { label: "name", value: (r) => r.name, cell: (r) => r.name },
    { label: "experiment", value: (r) => r.experiment, cell: (r) => r.experiment },
    { label: "status", value: (r) => r.status, cell: (r) => stateCell(r.status) },
    { label: "job", value: (r) => r.job_id, cell: (r) => r.job_id ? link(`/jobs/${encodeURIComponent(r.job_id)}`, r.job_id) : "" },
    ...(deletedView ? [{ label: "deleted", value: (r) => r.deleted_at || "", cell: (r) => r.deleted_at
      ? el("span", {}, when(r.deleted_at), r.deleted_with_experiment ? " (with its experiment)" : " ",
        r.deleted_with_experiment ? "" : restoreButton(r.run_id, `/runs/${encodeURIComponent(r.run_id)}/restore`, session.can_restore_runs))
      : "" }] : []),
    ...paramKeys.map((k) => ({ label: k, value: (r) => { const v = r.params[k]; const n = Number(v); return v === undefined ? undefined : isNaN(n) ? v : n; }, cell: (r) => r.params[k] ?? "" })),
    ...metricKeys.map((k) => ({ label: k, value: (r) => lastOf(r, k), num: true })),
  ];
  const table = runs.length ? sortableTable(columns, runs, { sort: undefined, asc: false }) : el("p", { class: "muted", text: "No runs match." });
  table.id = "runs-table";
  compareButton.addEventListener("click", async () => {
    clear(compareBox);
    const ids = Array.from(chosen);
    const key = compareKey.value;
    const histories = await Promise.all(ids.map((id) => api(`/runs/${encodeURIComponent(id)}/metrics/${encodeURIComponent(key)}?max_points=${HISTORY_POINTS}`)));
    const labels = ids.map((id) => { const r = runs.find((x) => x.run_id === id); return r.name ? `${r.name} (${id})` : id; });
    const chart = new Chart(chartBox(compareBox), `${key} by run`, labels);
    histories.forEach((h, i) => chart.set(labels[i], h.steps, h.values));
  });
  app.append(table, el("div", { class: "filters" }, compareButton, el("label", {}, " metric ", compareKey)), compareBox);
  if (moreRuns) app.append(moreNote(RUNS_SHOWN, "tessera runs ls"));
  rendered();
}

const EXPERIMENTS_SHOWN = 500;

// The deleted experiments (`name` alone when given), each with its restore action, which also
// restores the runs deleted with it.
async function deletedExperiments(app, name, restore) {
  const { items, more } = await listed("/experiments", "experiments", [["view", "deleted"], ["name_prefix", name]], EXPERIMENTS_SHOWN);
  const shown = name ? items.filter((x) => x.name === name) : items;
  app.append(el("h2", { text: "Deleted experiments" }));
  const table = shown.length
    ? plainTable(["experiment", "description", "deleted", ""], shown.map((x) => [x.name, x.description, when(x.deleted_at), restore(x)]))
    : el("p", { class: "muted", text: "No deleted experiments." });
  table.id = "deleted-experiments";
  app.append(table);
  if (more && !name) app.append(moreNote(EXPERIMENTS_SHOWN, "tessera experiments ls --view deleted"));
  app.append(el("h2", { text: "Runs" }));
}

const ARTIFACTS_SHOWN = 1000;

function artifactUrl(runId, path, preview) {
  return `${API}/runs/${encodeURIComponent(runId)}/artifact?path=${encodeURIComponent(path)}${preview ? "&preview=1" : ""}`;
}

// An artifact shown in the page: text as text, PNG and SVG as an image (an SVG in <img> runs no
// script, and the server sandboxes it besides).
async function showPreview(box, runId, artifact) {
  clear(box).append(el("h3", { class: "mono", text: artifact.path }));
  const url = artifactUrl(runId, artifact.path, true);
  if (artifact.content_type.startsWith("image/")) {
    box.append(el("img", { class: "artifact-image", src: url, alt: artifact.path }));
    return;
  }
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || `HTTP ${response.status}`);
  box.append(el("pre", { class: "artifact-text", text: await response.text() }));
}

// A run's artifacts as directories: `dir` ("" for the top) lists its subdirectories (files and
// bytes under each) and its files, each with a download link and, when small text, PNG or SVG,
// a preview.
async function artifactBrowser(holder, runId, dir) {
  const query = dir ? [["path", dir]] : [];
  const { items, more } = await listed(`/runs/${encodeURIComponent(runId)}/artifacts`, "artifacts", query, ARTIFACTS_SHOWN);
  const prefix = dir ? `${dir}/` : "";
  const dirs = new Map();
  const files = [];
  for (const a of items) {
    if (!a.path.startsWith(prefix)) continue;
    const rest = a.path.slice(prefix.length);
    const slash = rest.indexOf("/");
    if (slash < 0) { files.push(a); continue; }
    const d = dirs.get(rest.slice(0, slash)) || { files: 0, bytes: 0 };
    d.files += 1;
    d.bytes += a.size_bytes;
    dirs.set(rest.slice(0, slash), d);
  }
  const open = (target) => artifactBrowser(holder, runId, target).catch((error) => problem(holder, error));
  const crumbs = el("p", { class: "crumbs", id: "artifact-path" }, el("a", { href: "#", text: "artifacts", onclick: (e) => { e.preventDefault(); open(""); } }));
  const parts = dir ? dir.split("/") : [];
  parts.forEach((part, i) => crumbs.append(" / ", el("a", { href: "#", text: part, onclick: (e) => { e.preventDefault(); open(parts.slice(0, i + 1).join("/")); } })));
  const preview = el("div", { class: "artifact-preview", id: "artifact-preview" });
  const rows = [
    ...Array.from(dirs.entries()).map(([name, d]) => [
      el("a", { href: "#", class: "artifact-dir", text: `${name}/`, onclick: (e) => { e.preventDefault(); open(prefix + name); } }),
      `${bytes(d.bytes)} in ${d.files} file${d.files === 1 ? "" : "s"}`, "", "", ""]),
    ...files.map((a) => [
      el("span", { class: "mono", text: a.path.slice(prefix.length) }), bytes(a.size_bytes),
      el("span", { class: "mono", title: a.sha256, text: a.sha256.slice(0, 12) }), when(a.created_at),
      el("span", {}, el("a", { href: artifactUrl(runId, a.path, false), download: a.path.slice(prefix.length), text: "download" }),
        a.preview ? [" · ", el("a", { href: "#", class: "preview", text: "preview", onclick: (e) => {
          e.preventDefault();
          showPreview(preview, runId, a).catch((error) => problem(preview, error));
        } })] : []),
    ]),
  ];
  const table = rows.length ? plainTable(["path", "size", "sha256", "created", ""], rows) : el("p", { class: "muted", text: "No artifacts: store one with `tessera runs artifacts put`." });
  table.id = "artifacts-table";
  clear(holder).append(crumbs, table);
  if (more) holder.append(moreNote(ARTIFACTS_SHOWN, `tessera runs artifacts ls ${runId}`));
  holder.append(preview);
}

async function runPage(app, runId) {
  const run = await api(`/runs/${encodeURIComponent(runId)}`);
  app.append(el("h1", {}, "Run ", el("span", { class: "mono", text: run.run_id })));
  app.append(el("div", { class: "cards" }, card("status", run.status), card("experiment", run.experiment),
    card("started", when(run.start_time)), card("ended", when(run.end_time) || "-")));
  app.append(el("p", { class: "muted" }, run.name ? `${run.name} · ` : "",
    run.job_id ? ["job ", link(`/jobs/${encodeURIComponent(run.job_id)}`, run.job_id), " · "] : [],
    link(`/runs?experiment=${encodeURIComponent(run.experiment)}`, `runs of ${run.experiment}`)));
  if (run.deleted_at) {
    app.append(el("p", { class: "problem", id: "run-deleted" }, `Deleted ${when(run.deleted_at)}${run.deleted_with_experiment ? " with its experiment" : ""}: `,
      link(`/runs?experiment=${encodeURIComponent(run.experiment)}&view=deleted`, "the deleted runs of its experiment"), " offer a restore."));
  }
  app.append(el("h2", { text: "Params" }), plainTable(["param", "value"], Object.entries(run.params).map(([k, v]) => [k, v])));
  app.append(el("h2", { text: "Metrics" }), plainTable(["metric", "last", "min", "max", "steps"],
    run.metrics.map((m) => [m.key, number(m.last), number(m.min), number(m.max), number(m.count)])));
  app.append(el("h2", { text: "Artifacts" }));
  const holder = el("div", { id: "artifacts" });
  app.append(holder);
  await artifactBrowser(holder, run.run_id, "");
  rendered();
}

const SWEEPS_SHOWN = 200;

async function sweepsPage(app) {
  app.append(el("h1", { text: "Sweeps" }));
  const { items: sweeps, more } = await listed("/sweeps", "sweeps", [], SWEEPS_SHOWN);
  app.append(sweeps.length ? plainTable(["sweep", "strategy", "state", "metric", "trials", "best job", "created"], sweeps.map((s) => [
    link(`/sweeps/${encodeURIComponent(s.sweep_id)}`, s.sweep_id), s.strategy, stateCell(s.state), `${s.metric} (${s.mode})`,
    String(s.trials.length), s.best_job_id ? link(`/jobs/${encodeURIComponent(s.best_job_id)}`, s.best_job_id) : "", when(s.created_at),
  ])) : el("p", { class: "muted", text: "No sweeps yet." }));
  if (more) app.append(moreNote(SWEEPS_SHOWN, "tessera sweeps ls"));
  rendered();
}

async function sweepPage(app, sweepId) {
  const s = await api(`/sweeps/${encodeURIComponent(sweepId)}`);
  app.append(el("h1", {}, "Sweep ", el("span", { class: "mono", text: s.sweep_id })));
  app.append(el("div", { class: "cards" }, card("strategy", s.strategy), card("state", s.state), card("metric", `${s.metric} (${s.mode})`), card("trials", String(s.trials.length))));
  const paths = Array.from(new Set(s.trials.flatMap((t) => Object.keys(t.params)))).sort();
  let best = null;
  const rows = s.trials.map((t, i) => {
    // As best_job_id: only a trial that ran to its end counts (a pruned, failed or running one does not).
    if (t.has_metric && t.state === "succeeded" && !t.pruned && (best === null || (s.mode === "min" ? t.metric < best : t.metric > best))) best = t.metric;
    const row = el("tr", { class: t.pruned ? "pruned" : t.job_id && t.job_id === s.best_job_id ? "best" : "" },
      el("td", { text: String(i + 1) }),
      el("td", {}, t.job_id ? link(`/jobs/${encodeURIComponent(t.job_id)}`, t.job_id) : ""),
      el("td", {}, stateCell(t.pruned ? "pruned" : t.state)),
      paths.map((p) => el("td", { text: t.params[p] ?? "" })),
      el("td", { class: "num", text: t.has_metric ? number(t.metric) : "" }),
      el("td", { class: "num", text: best === null ? "" : number(best) }));
    return row;
  });
  app.append(el("table", {}, el("thead", {}, el("tr", {}, ["#", "job", "state", ...paths, s.metric, "best so far"].map((h) => el("th", { text: h })))), el("tbody", {}, rows)));
  rendered();
}

const MODELS_SHOWN = 500;

async function modelsPage(app) {
  app.append(el("h1", { text: "Models" }));
  const { items: models, more } = await listed("/models", "models", [], MODELS_SHOWN);
  app.append(models.length ? plainTable(["model", "description", "versions", "latest", "aliases", "tags", "updated"], models.map((m) => [
    link(`/models/${encodeURIComponent(m.name)}`, m.name), m.description, String(m.version_count), String(m.latest_version),
    Object.entries(m.aliases).filter(([a]) => a !== "latest").map(([a, v]) => `${a} → v${v}`).join(", "),
    Object.entries(m.tags).map(([k, v]) => `${k}=${v}`).join(", "), when(m.updated_at),
  ])) : el("p", { class: "muted", text: "No models yet." }));
  if (more) app.append(moreNote(MODELS_SHOWN, "tessera models ls"));
  rendered();
}

function routeText(route) {
  const target = route.target.alias ? `${route.target.alias} (v${route.resolved_version})` : `v${route.target.version}`;
  return `${target}: ${route.weight}%`;
}

async function modelPage(app, name) {
  const data = await api(`/models/${encodeURIComponent(name)}`);
  const m = data.model;
  app.append(el("h1", {}, "Model ", el("span", { class: "mono", text: m.name })));
  app.append(el("p", { class: "muted", text: m.description }));
  if (Object.keys(m.tags).length) app.append(el("p", { class: "muted", text: Object.entries(m.tags).map(([k, x]) => `${k}=${x}`).join(", ") }));
  const current = data.deployments.length ? data.deployments[0] : null;  // newest first
  app.append(el("div", { class: "cards" }, card("versions", String(m.version_count)), card("latest", `v${m.latest_version}`),
    card("deployment", current && !current.undeployed ? current.routes.map(routeText).join(", ") + (current.shadow ? `; shadow ${current.shadow.percent}%` : "") : "none")));
  app.append(el("h2", { text: "Versions" }));
  const versions = plainTable(["version", "format", "aliases", "description", "tags", "metrics", "params", "size", "created"], data.versions.map((v) => [
    `v${v.version}`, v.format, v.aliases.join(", "), v.description,
    Object.entries(v.tags).map(([k, x]) => `${k}=${x}`).join(", "),
    Object.entries(v.metrics).map(([k, x]) => `${k}=${number(x)}`).join(", "),
    paramsCell(v.params), bytes(v.size_bytes), when(v.created_at),
  ]));
  versions.id = "versions";
  app.append(versions);
  app.append(el("h2", { text: "Lineage" }));
  const newest = data.versions.slice(0, DERIVED_LOOKUPS);
  const derived = await Promise.all(newest.map((v) => api(`/models/${encodeURIComponent(m.name)}/versions/${v.version}/lineage`)));
  app.append(lineageGraph(m.name, data.versions, derived));
  app.append(el("h2", { text: "Aliases" }));
  app.append(plainTable(["alias", "version", "moved", "by"], data.aliases.map((a) => [a.alias, `v${a.version}`, when(a.updated_at), a.updated_by])));
  app.append(el("h2", { text: "Alias history" }));
  app.append(plainTable(["alias", "from", "to", "when", "by"], data.alias_history.map((e) => [e.alias, e.from_version ? `v${e.from_version}` : "(new)", e.to_version ? `v${e.to_version}` : "(deleted)", when(e.time), e.actor])));
  app.append(el("h2", { text: "Deployments" }));
  app.append(plainTable(["revision", "routes", "shadow", "comment", "when", "by"], data.deployments.map((d) => [
    String(d.revision), d.undeployed ? `none (rolled back from ${d.rolled_back_from})` : d.routes.map(routeText).join(", "),
    d.shadow ? `v${d.shadow.resolved_version || d.shadow.target.version} ${d.shadow.percent}%` : "", d.comment, when(d.created_at), d.created_by,
  ])));
  // The current revision's: aliases moved since it was deployed so that it splits or copies nothing.
  for (const warning of data.deployments.length ? data.deployments[0].warnings : []) app.append(el("p", { class: "problem", text: warning }));
  rendered();
}

// Params beyond the first few fold into a <details>, so a version with many keeps the table narrow.
const PARAMS_SHOWN = 3;

function paramsCell(params) {
  const items = Object.entries(params).map(([k, x]) => `${k}=${x}`);
  if (items.length <= PARAMS_SHOWN) return items.join(", ");
  return el("details", { class: "params" },
    el("summary", { text: `${items.slice(0, PARAMS_SHOWN).join(", ")} … (${items.length - PARAMS_SHOWN} more)` }),
    el("div", { text: items.slice(PARAMS_SHOWN).join(", ") }));
}

// Derived versions come from one lineage request per version: only the newest few are asked.
const DERIVED_LOOKUPS = 100;
const SVG_NS = "http://www.w3.org/2000/svg";
const GRAPH = { nodeWidth: 190, nodeHeight: 24, columnGap: 60, rowGap: 12, pad: 10, labelChars: 27 };

function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

// The model's lineage as one layered graph, left to right: datasets → jobs (or runs) → parents in
// other models → this model's versions → versions derived in other models. Keys name each node
// (`dataset:NAME:N`, `job:ID`, `run:ID`, `version:MODEL:N`, `deleted:MODEL:N` for a deleted
// parent) so tests and readers can find them.
function lineageGraph(model, versions, lineages) {
  const nodes = new Map();
  const edges = new Map();
  const addNode = (key, column, label, href) => {
    if (!nodes.has(key)) nodes.set(key, { key, column, label, href });
    return key;
  };
  const addEdge = (from, to) => edges.set(`${from}\n${to}`, [from, to]);
  const versionKey = (name, version) => `version:${name}:${version}`;
  const modelHref = (name) => (name === model ? null : `/models/${encodeURIComponent(name)}`);
  const oldestFirst = versions.slice().sort((a, b) => a.version - b.version);
  for (const v of oldestFirst) {
    addNode(versionKey(model, v.version), 3, `v${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""}`, null);
  }
  for (const v of oldestFirst) {
    const self = versionKey(model, v.version);
    const l = v.lineage;
    // A trained version's job links its run; a version pushed from a run (push --run) has the run
    // alone, linked where it is a run of this daemon (another tracker's run id is plain text).
    const job = l.job_id ? addNode(`job:${l.job_id}`, 1, `job ${l.job_id}`, `/jobs/${encodeURIComponent(l.job_id)}`)
      : l.run_id ? addNode(`run:${l.run_id}`, 1, `run ${l.run_id}`, l.run_tracked ? `/runs/${encodeURIComponent(l.run_id)}` : null) : null;
    for (const d of l.datasets) addEdge(addNode(`dataset:${d.name}:${d.version}`, 0, `${d.name} v${d.version}`, null), job || self);
    if (job) addEdge(job, self);
    if (l.parent_version) {
      const parentModel = l.parent_model || model;
      const named = `${parentModel} v${l.parent_version}`;
      // A deleted parent is a node of its own, with no link: a model created again under its
      // name may have a version of that number that is another one (deleted by an older tesserad).
      const parent = l.parent_deleted
        ? addNode(`deleted:${parentModel}:${l.parent_version}`, 2, `${named} (deleted)`, null)
        : addNode(versionKey(parentModel, l.parent_version), 2, named, modelHref(parentModel));
      addEdge(parent, self);
    }
  }
  for (const lineage of lineages) {
    for (const child of lineage.derived) {
      const key = addNode(versionKey(child.model, child.version), 4, `${child.model} v${child.version}`, modelHref(child.model));
      addEdge(versionKey(model, lineage.version.version), key);
    }
  }

  const { nodeWidth, nodeHeight, columnGap, rowGap, pad, labelChars } = GRAPH;
  const used = Array.from(new Set(Array.from(nodes.values(), (n) => n.column))).sort((a, b) => a - b);
  const rows = new Map(used.map((c) => [c, 0]));
  for (const node of nodes.values()) {
    node.x = pad + used.indexOf(node.column) * (nodeWidth + columnGap);
    node.y = pad + rows.get(node.column) * (nodeHeight + rowGap);
    rows.set(node.column, rows.get(node.column) + 1);
  }
  const tallest = Math.max(1, ...rows.values());
  // Room on the right for arcs between versions of this model (a parent in the same column).
  const width = pad * 2 + used.length * nodeWidth + Math.max(0, used.length - 1) * columnGap + 40;
  const height = pad * 2 + tallest * nodeHeight + (tallest - 1) * rowGap;
  const graph = svg("svg", { id: "lineage-graph", class: "lineage-graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `lineage of ${model}` },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L8,4 L0,8 z" }))));
  for (const [from, to] of edges.values()) {
    const a = nodes.get(from), b = nodes.get(to);
    const ay = a.y + nodeHeight / 2, by = b.y + nodeHeight / 2;
    const d = a.column === b.column
      ? `M${a.x + nodeWidth},${ay} C${a.x + nodeWidth + 40},${ay} ${b.x + nodeWidth + 40},${by} ${b.x + nodeWidth},${by}`
      : `M${a.x + nodeWidth},${ay} C${a.x + nodeWidth + columnGap / 2},${ay} ${b.x - columnGap / 2},${by} ${b.x},${by}`;
    graph.append(svg("path", { class: "lineage-edge", d, "data-from": from, "data-to": to, "marker-end": "url(#arrow)" }));
  }
  for (const node of nodes.values()) {
    const label = node.label.length > labelChars ? `${node.label.slice(0, labelChars - 1)}…` : node.label;
    const kind = node.key.slice(0, node.key.indexOf(":"));
    const group = svg("g", { class: `lineage-node ${kind}${node.column === 3 ? " own" : ""}`, "data-node": node.key },
      svg("title", { text: node.label }),
      svg("rect", { x: node.x, y: node.y, width: nodeWidth, height: nodeHeight, rx: 3 }),
      svg("text", { x: node.x + 8, y: node.y + nodeHeight / 2 + 4, text: label }));
    graph.append(node.href ? svg("a", { href: node.href }, group) : group);
  }
  return el("div", { class: "lineage-box" }, graph);
}

async function servingPage(app) {
  app.append(el("h1", { text: "Serving" }));
  const holder = el("div", { id: "serving" });
  const chartHolder = el("div", {});
  app.append(holder, chartHolder);
  let chart = null, chartNames = "";
  const started = Date.now() / 1000;
  const refresh = async () => {
    const { loaded } = await api("/serving");
    const label = (e) => `${e.model} v${e.version}`;
    const summary = loaded.map((e) => el("tr", { "data-version": label(e) },
      el("td", { text: label(e) }), el("td", {}, stateCell(e.state)), el("td", { class: "num", text: String(e.config.instances || "") }),
      el("td", { class: "num queued", text: String(e.queued) }), el("td", { class: "num requests", text: String(e.stats.request_count) }),
      el("td", { class: "num", text: number(e.stats.throughput_rps, 3) })));
    const latency = loaded.flatMap((e) => ["queue", "compute", "total"].map((part) => el("tr", { "data-version": label(e), "data-part": part },
      el("td", { text: label(e) }), el("td", { text: part }),
      ["p50_us", "p95_us", "p99_us", "max_us"].map((p) => el("td", { class: `num ${p.slice(0, -3)}`, text: e.stats[part].count ? micros(e.stats[part][p]) : "" })))));
    clear(holder).append(...(loaded.length ? [
      el("table", { id: "loaded" }, el("thead", {}, el("tr", {}, ["version", "state", "instances", "queued", "requests", "req/s (1 min)"].map((h) => el("th", { text: h })))), el("tbody", {}, summary)),
      el("h2", { text: "Latency since load" }),
      el("table", { id: "latency" }, el("thead", {}, el("tr", {}, ["version", "part", "p50", "p95", "p99", "max"].map((h) => el("th", { text: h })))), el("tbody", {}, latency)),
    ] : [el("p", { class: "muted", text: "Nothing loaded: a prediction loads its model." })]));
    const names = loaded.flatMap((e) => [`${label(e)} p50`, `${label(e)} p99`]);
    if (names.join("|") !== chartNames && names.length) {
      chartNames = names.join("|");
      clear(chartHolder);
      chart = new Chart(chartBox(chartHolder), "total time, ms", names, "seconds since opened");
    }
    const t = Math.round(Date.now() / 1000 - started);
    for (const e of loaded) {
      if (!chart || !e.stats.total.count) continue;
      chart.add(`${label(e)} p50`, t, e.stats.total.p50_us / 1000);
      chart.add(`${label(e)} p99`, t, e.stats.total.p99_us / 1000);
    }
    rendered();
  };
  await refresh();
  setInterval(() => refresh().catch(() => {}), LIVE_MS);
}

async function systemPage(app) {
  app.append(el("h1", { text: "System" }));
  const { server, sample } = await api("/system");
  app.append(el("p", { class: "muted", text: `tesserad ${server.version} on ${server.hostname} · up ${duration(server.uptime_s)} · ${server.cpu.cores} cores · ${server.gpus.length} GPUs` }));
  const cards = el("div", { class: "cards" });
  app.append(cards);
  const gpuIds = server.gpus.map((g) => g.id);
  const names = ["cpu %", "memory %", ...gpuIds.map((id) => `${id} %`)];
  const chart = new Chart(chartBox(app), "use over time", names, "seconds since opened");
  const start = Date.now() / 1000;
  const show = (s) => {
    clear(cards).append(card("CPU", `${s.cpu_percent.toFixed(0)}%`), card("memory", `${bytes(s.memory_used_bytes)} / ${bytes(s.memory_total_bytes)}`),
      card("tesserad RSS", bytes(s.process_rss_bytes)), ...s.gpus.map((g) => card(g.id, `${g.utilization_percent.toFixed(0)}% · ${bytes(g.memory_used_bytes)}`)));
    const t = Math.round(s.time - start);
    chart.add("cpu %", t, s.cpu_percent);
    chart.add("memory %", t, (100 * s.memory_used_bytes) / s.memory_total_bytes);
    for (const g of s.gpus) chart.add(`${g.id} %`, t, g.utilization_percent);
  };
  show(sample);
  app.append(el("h2", { text: "Devices" }), plainTable(["device", "name", "memory"], [["cpu", server.cpu.name, bytes(server.cpu.memory_total_bytes)], ...server.gpus.map((g) => [g.id, g.name, bytes(g.memory_total_bytes)])]));
  rendered();
  const events = new EventSource(`${API}/system/events?interval_ms=1000`);
  events.addEventListener("sample", (e) => show(JSON.parse(e.data)));
}

// -- router -------------------------------------------------------------------------------

const ROUTES = [
  [/^\/jobs\/?$/, "jobs", jobsPage],
  [/^\/jobs\/([^/]+)$/, "jobs", jobPage],
  [/^\/runs\/?$/, "runs", runsPage],
  [/^\/runs\/([^/]+)$/, "runs", runPage],
  [/^\/sweeps\/?$/, "sweeps", sweepsPage],
  [/^\/sweeps\/([^/]+)$/, "sweeps", sweepPage],
  [/^\/models\/?$/, "models", modelsPage],
  [/^\/models\/([^/]+)$/, "models", modelPage],
  [/^\/serving\/?$/, "serving", servingPage],
  [/^\/system\/?$/, "system", systemPage],
];

async function main() {
  const app = document.getElementById("app");
  offerLogout();
  for (const [pattern, section, page] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("current", a.dataset.page === section));
    document.title = `tessera: ${section}`;
    try {
      await page(app, ...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      problem(app, error);
      rendered();
    }
    return;
  }
  problem(app, new Error(`nothing at ${location.pathname}`));
}

main();
