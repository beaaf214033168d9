// Hodei console: hash-routed views over /console/api, refreshed every POLL_MS.
"use strict";

const POLL_MS = 1500;
const ROLE = document.body.dataset.role;
const TENANT = document.body.dataset.tenant;
const ADMIN = ROLE === "admin";
// Admins cancel any job, tenants their own (the server decides which; a tenant sees only its own).
const MAY_CANCEL = ADMIN || ROLE === "tenant";
const CSRF = document.querySelector('meta[name="csrf"]').content;

let current = null; // { route, refresh, timer }

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function api(path, options) {
  const response = await fetch("/console/api" + path, Object.assign({ credentials: "same-origin" }, options));
  if (response.status === 401) { window.location.href = "/"; throw new Error("signed out"); }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((body && body.error && body.error.message) || response.statusText);
  return body;
}

function post(path) {
  return api(path, { method: "POST", headers: { "x-csrf-token": CSRF } });
}

// Times: relative and absolute.
function ago(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return Math.floor(seconds) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m " + Math.floor(seconds % 60) + "s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h " + Math.floor((seconds % 3600) / 60) + "m";
  return Math.floor(seconds / 86400) + "d";
}
function when(iso) {
  if (!iso) return '<span class="muted">–</span>';
  const t = new Date(iso);
  const rel = ago((Date.now() - t.getTime()) / 1000);
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${rel} ago</time> <span class="abs">${esc(t.toLocaleString())}</span>`;
}

// State: a word and a symbol, never colour alone.
const STATES = {
  succeeded: ["s-ok", "✓"], idle: ["s-ok", "○"], running: ["s-run", "▶"], busy: ["s-run", "▶"],
  assigned: ["s-run", "→"], cleaning: ["s-run", "↺"], queued: ["s-wait", "…"], starting: ["s-wait", "…"],
  creating: ["s-wait", "…"], draining: ["s-wait", "↓"], leaving: ["s-wait", "↓"], failed: ["s-bad", "✗"],
  timed_out: ["s-bad", "⏱"], unhealthy: ["s-bad", "!"], cancelled: ["s-off", "⊘"], terminated: ["s-off", "■"],
};
function state(name) {
  const [cls, icon] = STATES[name] || ["s-off", "•"];
  return `<span class="state ${cls}" data-icon="${icon}">${esc(name)}</span>`;
}

function table(headers, rows, empty) {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th scope="col" class="${h.num ? "num" : ""}">${esc(h.label)}</th>`).join("");
  const body = rows.map((cells) => "<tr>" + cells.map((cell, i) =>
    `<td data-label="${esc(headers[i].label)}" class="${headers[i].num ? "num" : ""}">${cell}</td>`).join("") + "</tr>").join("");
  return `<div class="table-wrap"><table class="stack"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table></div>`;
}

function link(href, text) { return `<a href="${esc(href)}">${esc(text)}</a>`; }

function view(html) {
  const main = document.getElementById("view");
  main.innerHTML = html;
  return main;
}

function fill(id, html) {
  const el = document.getElementById(id);
  if (el) el.innerHTML = html;
}

function workersByState(w) {
  return ["idle", "busy", "starting", "unhealthy", "leaving"].map((s) => `${esc(s)} ${w[s]}`).join(" · ");
}

function costRate(pool) {
  const live = pool.workers.idle + pool.workers.busy + pool.workers.starting + pool.workers.unhealthy + pool.workers.leaving;
  if (!pool.worker_seconds) return "–";
  return (pool.cost / pool.worker_seconds * live * 3600).toFixed(4) + "/h";
}

// Time to a deadline: "12s" before it, "missed by 12s" after.
function timeLeft(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds >= 0 ? ago(seconds) : `<strong>missed by ${ago(-seconds)}</strong>`;
}
// A moment that may be in the future: relative and absolute.
function until(iso) {
  if (!iso) return '<span class="muted">–</span>';
  const t = new Date(iso);
  const seconds = (t.getTime() - Date.now()) / 1000;
  const rel = seconds >= 0 ? "in " + ago(seconds) : ago(-seconds) + " ago";
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${rel}</time> <span class="abs">${esc(t.toLocaleString())}</span>`;
}
function risk(name) {
  if (name === "at_risk") return '<span class="state s-bad" data-icon="!">at risk</span>';
  if (name === "boosted") return '<span class="state s-wait" data-icon="⇡">boosted</span>';
  return '<span class="state s-ok" data-icon="○">on time</span>';
}
// Milliseconds after submission: "+1.2s", "+3m 4s".
function offset(ms) {
  return ms < 10000 ? "+" + (ms / 1000).toFixed(1) + "s" : "+" + ago(ms / 1000);
}

// Tenants: each quota with its usage, hard or soft; share of starts; burst state.
const QUOTAS = [["running_jobs", "max_running_jobs"], ["cpu", "max_cpu"], ["memory_mb", "max_memory_mb"], ["workers", "max_workers"], ["daily_cost", "max_daily_cost"]];
function quotas(t, limitedOnly) {
  const soft = t.settings.soft || [];
  const parts = QUOTAS.map(([name, key]) => {
    const limit = t.settings[key];
    const used = name === "daily_cost" ? Number(t.usage[name]).toFixed(4) : t.usage[name];
    if (limit === undefined || limit === null) return limitedOnly ? null : `${esc(name)} ${esc(used)}`;
    const full = Number(t.usage[name]) >= Number(limit);
    return `${esc(name)} ${esc(used)} / ${esc(limit)} ${soft.includes(name) ? "(soft)" : "(hard)"}${full ? ' <strong class="at-quota">at quota</strong>' : ""}`;
  }).filter((p) => p !== null);
  if (!parts.length) return `running_jobs ${esc(t.usage.running_jobs)} <span class="muted">(no quota)</span>`;
  return parts.join("<br>");
}
function share(t) {
  return `${(t.share_last_hour * 100).toFixed(1)}% (${t.started_last_hour} started)`;
}
function burst(t) {
  if (t.burst === "active") return `<span class="state s-wait" data-icon="⇡">active</span>${t.burst_since ? ` since ${when(t.burst_since)}` : ""}`;
  if (t.burst === "cooldown") return `<span class="state s-off" data-icon="↓">cooldown</span>${t.burst_until ? ` until ${until(t.burst_until)}` : ""}`;
  return '<span class="state s-ok" data-icon="○">ready</span>';
}

// A pool's workers over time: the server's SVG, a legend with each line's pattern, and the
// time axis in words.
function chart(c) {
  if (!c) return '<p class="muted">No samples yet.</p>';
  const legend = c.series.map((s) => `<li><svg class="swatch" viewBox="0 0 30 8" aria-hidden="true"><line class="series series-${esc(s.state)}" x1="0" y1="4" x2="30" y2="4" stroke-width="2.5"${s.dash ? ` stroke-dasharray="${esc(s.dash)}"` : ""}/></svg> ${esc(s.state)}: now ${s.now}, peak ${s.peak}</li>`).join("");
  const minutes = Math.round((c.to_ms - c.from_ms) / 60000);
  return `<figure class="chart-box" id="workers-chart" data-samples="${c.samples}" data-peak="${c.peak}">
    <div class="chart-frame"><span class="y-top">${c.peak} workers</span>${c.svg}<span class="y-bottom">0</span></div>
    <div class="x-axis"><span>${minutes} min ago · ${esc(new Date(c.from_ms).toLocaleTimeString())}</span><span>now · ${esc(new Date(c.to_ms).toLocaleTimeString())}</span></div>
    <figcaption><ul class="legend">${legend}</ul><p class="muted">Sampled every 5 s since the server started (${c.samples} samples); each column shows the most workers of each state within it.</p></figcaption>
  </figure>`;
}

// ---- Views -----------------------------------------------------------------------------

const views = {
  overview: {
    mount() {
      view(`<h1>Overview</h1>
        ${ADMIN ? '<section class="card"><h2>Pools</h2><div id="pools">Loading…</div></section>' : ""}
        <section class="card"><h2>At risk of missing their SLA</h2><div id="at-risk">Loading…</div></section>
        <section class="card"><h2>Queues</h2><div id="queues">Loading…</div></section>
        <section class="card"><h2>Tenants</h2><div id="tenants">Loading…</div><p>${link("#/tenants", "Quotas, usage, share and burst")}</p></section>
        <section class="card"><h2>Jobs waiting</h2><div id="waiting">Loading…</div></section>`);
    },
    async refresh() {
      if (ADMIN) {
        const { pools } = await api("/pools");
        fill("pools", table(
          [{ label: "Pool" }, { label: "Provider" }, { label: "Workers by state" }, { label: "Desired / min / max", num: true }, { label: "Cost rate", num: true }, { label: "Cost so far", num: true }],
          pools.map((p) => [link("#/pools/" + encodeURIComponent(p.name), p.name) + (p.removing ? " (removing)" : ""), esc(p.provider + " · " + p.kind),
            workersByState(p.workers), `${p.desired} / ${p.min} / ${p.max}`, esc(costRate(p)), esc(p.cost.toFixed(4))]),
          "No pools."));
      }
      const { jobs: active } = await api("/jobs?state=queued,assigned,running&limit=1000");
      const jobs = active.filter((j) => j.state === "queued");
      const byTenant = {};
      for (const job of active) {
        const t = byTenant[job.tenant] || (byTenant[job.tenant] = { queued: 0, running: 0 });
        if (job.state === "queued") t.queued += 1; else t.running += 1;
      }
      const { tenants } = await api("/tenants");
      const tenantOf = {};
      for (const t of tenants) tenantOf[t.name] = t;
      const names = [...new Set([...Object.keys(byTenant), ...tenants.filter((t) => t.configured || t.usage.running_jobs || t.queued || t.started_last_hour).map((t) => t.name)])].sort();
      fill("tenants", table([{ label: "Tenant" }, { label: "Waiting", num: true }, { label: "Assigned or running", num: true }, { label: "Usage / quota" }, { label: "Share, last hour", num: true }, { label: "Burst" }],
        names.map((name) => {
          const t = tenantOf[name];
          const counts = byTenant[name] || { queued: 0, running: 0 };
          return [ADMIN ? link("#/jobs?tenant=" + encodeURIComponent(name), name) : esc(name), String(counts.queued), String(counts.running),
            t ? quotas(t, true) : "–", t ? share(t) : "–", t ? burst(t) : "–"];
        }),
        "No tenant has a job waiting or running."));
      const risky = jobs.filter((j) => j.sla && j.sla.risk && j.sla.risk !== "none")
        .sort((a, b) => (a.sla.time_left_secs ?? 0) - (b.sla.time_left_secs ?? 0));
      fill("at-risk", table([{ label: "Job" }, { label: "Tenant" }, { label: "Class" }, { label: "Risk" }, { label: "Deadline" }, { label: "Time left", num: true }],
        risky.slice(0, 50).map((j) => [link("#/jobs/" + j.id, j.id), esc(j.tenant), esc(j.sla.class), risk(j.sla.risk),
          until(j.sla.deadline), timeLeft(j.sla.time_left_secs)]),
        "No waiting job is near its SLA deadline."));
      const byQueue = {};
      for (const job of jobs) {
        const q = byQueue[job.queue] || (byQueue[job.queue] = { depth: 0, oldest: job.submitted_at });
        q.depth += 1;
        if (job.submitted_at < q.oldest) q.oldest = job.submitted_at;
      }
      fill("queues", table([{ label: "Queue" }, { label: "Depth", num: true }, { label: "Oldest waiting since" }],
        Object.keys(byQueue).sort().map((q) => [link("#/jobs?state=queued&queue=" + encodeURIComponent(q), q), String(byQueue[q].depth), when(byQueue[q].oldest)]),
        "No job is waiting."));
      fill("waiting", table([{ label: "Job" }, { label: "Tenant" }, { label: "Queue" }, { label: "Command" }, { label: "Submitted" }],
        jobs.slice(0, 20).map((j) => [link("#/jobs/" + j.id, j.id), esc(j.tenant), esc(j.queue), `<code>${esc(j.command_line)}</code>`, when(j.submitted_at)]),
        "No job is waiting."));
    },
  },

  pool: {
    mount(name) {
      view(`<h1>Pool ${esc(name)}</h1>
        <section class="card"><div id="pool">Loading…</div></section>
        <section class="card"><h2>Workers over the last hour</h2><div id="pool-chart">Loading…</div></section>
        <section class="card"><h2>Workers</h2><div id="pool-workers">Loading…</div></section>
        <section class="card"><h2>Recent scaling decisions</h2><div id="decisions">Loading…</div></section>`);
    },
    async refresh(name) {
      const { pools, chart: workersChart } = await api("/pools?chart=" + encodeURIComponent(name));
      const pool = pools.find((p) => p.name === name);
      if (!pool) { fill("pool", `<p class="error">No pool named ${esc(name)}.</p>`); return; }
      fill("pool-chart", chart(workersChart));
      fill("pool", `<dl class="facts">
        <dt>Provider</dt><dd>${esc(pool.provider)} · ${esc(pool.kind)}</dd>
        <dt>Workers</dt><dd>${workersByState(pool.workers)}</dd>
        <dt>Desired / min / max</dt><dd>${pool.desired} / ${pool.min} / ${pool.max}</dd>
        <dt>Cost rate</dt><dd>${esc(costRate(pool))}</dd>
        <dt>Cost so far</dt><dd>${esc(pool.cost.toFixed(4))} (${esc(pool.worker_seconds.toFixed(0))} worker-seconds)</dd></dl>`);
      const { workers } = await api("/workers?pool=" + encodeURIComponent(name));
      fill("pool-workers", workerTable(workers, await runningJobs()));
      fill("decisions", table(
        [{ label: "When" }, { label: "Action" }, { label: "Count", num: true }, { label: "Desired", num: true }, { label: "Supply", num: true }, { label: "Reason" }],
        pool.decisions.map((d) => [when(d.at) + (d.repeats > 1 ? ` <span class="muted">×${d.repeats}, last ${when(d.last_at)}</span>` : ""),
          esc(d.action), String(d.count), String(d.desired), String(d.supply), esc(d.reason)]),
        "No decision yet."));
    },
  },

  jobs: {
    mount(_, params) {
      const value = (k) => esc(params.get(k) || "");
      const states = ["", "queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];
      view(`<h1>Jobs</h1>
        <form class="filters" id="filters">
          <label>State<select name="state">${states.map((s) => `<option value="${s}"${params.get("state") === s ? " selected" : ""}>${s || "any"}</option>`).join("")}</select></label>
          ${ADMIN ? `<label>Tenant<input name="tenant" value="${value("tenant")}" size="12"></label>` : ""}
          <label>Queue<input name="queue" value="${value("queue")}" size="12"></label>
          ${ADMIN ? `<label>Pool<input name="pool" value="${value("pool")}" size="12"></label>` : ""}
          <button type="submit">Filter</button>
        </form>
        <div id="jobs">Loading…</div>`);
      document.getElementById("filters").addEventListener("submit", (event) => {
        event.preventDefault();
        const form = new URLSearchParams();
        for (const [k, v] of new FormData(event.target)) if (v) form.set(k, v);
        window.location.hash = "#/jobs" + (form.toString() ? "?" + form : "");
      });
    },
    async refresh(_, params) {
      const query = new URLSearchParams();
      for (const k of ["state", "tenant", "queue", "pool"]) if (params.get(k)) query.set(k, params.get(k));
      const { jobs } = await api("/jobs?" + query);
      fill("jobs", table(
        [{ label: "Job" }, { label: "State" }, { label: "Tenant" }, { label: "Queue" }, { label: "Command" }, { label: "Worker" }, { label: "Submitted" }, { label: "Finished" }],
        jobs.map((j) => [link("#/jobs/" + j.id, j.id), state(j.state), esc(j.tenant), esc(j.queue), `<code>${esc(j.command_line)}</code>`,
          esc(j.worker_id || "–"), when(j.submitted_at), when(j.finished_at)]),
        "No job matches."));
    },
  },

  job: {
    mount(id) {
      this.next = 0;
      this.complete = false;
      view(`<h1>Job <code>${esc(id)}</code></h1>
        <section class="card"><div id="job">Loading…</div><div id="job-actions"></div></section>
        <section class="card"><h2>Log</h2><pre class="log" id="log" aria-live="off" tabindex="0"></pre></section>
        <section class="card"><h2>History</h2><div id="history">Loading…</div></section>`);
    },
    async refresh(id) {
      const job = await api("/jobs/" + encodeURIComponent(id));
      fill("job", `<dl class="facts">
        <dt>State</dt><dd id="job-state">${state(job.state)}</dd>
        ${job.waiting_reason ? `<dt>Why it waits</dt><dd id="job-waiting">${esc(job.waiting_reason)}</dd>` : ""}
        ${job.reason ? `<dt>Reason</dt><dd>${esc(job.reason)}</dd>` : ""}
        <dt>Tenant / queue</dt><dd>${esc(job.tenant)} / ${esc(job.queue)}</dd>
        <dt>Command</dt><dd><code>${esc(job.command_line)}</code></dd>
        <dt>Worker</dt><dd>${esc(job.worker_id || "–")}</dd>
        <dt>Attempts</dt><dd>${job.attempts}${job.sla && job.sla.preemptions.length ? ` (${job.sla.preemptions.length} preemption${job.sla.preemptions.length > 1 ? "s" : ""}, see History)` : ""}</dd>
        ${job.sla ? `<dt>SLA</dt><dd id="job-sla">${esc(job.sla.class)}: start deadline ${until(job.sla.deadline)}${job.sla.time_left_secs !== null && job.sla.time_left_secs !== undefined ? `, time left ${timeLeft(job.sla.time_left_secs)} ${risk(job.sla.risk)}` : ""}${job.sla.met === true ? ' <span class="state s-ok" data-icon="✓">met</span>' : job.sla.met === false ? ' <span class="state s-bad" data-icon="✗">missed</span>' : ""}</dd>` : ""}
        <dt>Exit code</dt><dd>${job.exit_code ?? "–"}</dd>
        <dt>Submitted</dt><dd>${when(job.submitted_at)}</dd>
        <dt>Started</dt><dd>${when(job.started_at)}</dd>
        <dt>Finished</dt><dd>${when(job.finished_at)}</dd></dl>`);
      const actions = document.getElementById("job-actions");
      const KINDS = { state: "→", attempt: "■", preemption: "⇵", note: "…" };
      fill("history", table([{ label: "When" }, { label: "After submission", num: true }, { label: "What" }, { label: "Detail" }],
        (job.history || []).map((e) => [when(new Date(e.at_ms).toISOString()), esc(offset(e.after_submit_ms)),
          `<span class="event event-${esc(e.kind)}" data-icon="${KINDS[e.kind] || "•"}">${esc(e.what)}</span>`, esc(e.detail || "")]),
        "No history recorded."));
      if (MAY_CANCEL && !job.finished && !actions.querySelector("button")) {
        actions.innerHTML = '<p><button type="button" class="danger" id="cancel">Cancel job</button> <span id="action-result" role="status"></span></p>';
        document.getElementById("cancel").addEventListener("click", async () => {
          try { await post("/jobs/" + encodeURIComponent(id) + "/cancel"); fill("action-result", "Cancel requested."); }
          catch (e) { fill("action-result", `<span class="error">${esc(e.message)}</span>`); }
          tick();
        });
      } else if (job.finished && actions.querySelector("button")) {
        actions.innerHTML = "";
      }
      if (this.complete) return;
      // Follow the log: fetch what came after what we have.
      for (;;) {
        const page = await api(`/jobs/${encodeURIComponent(id)}/logs?after=${this.next}`);
        const log = document.getElementById("log");
        if (!log) return;
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        for (const chunk of page.chunks) {
          const span = document.createElement("span");
          if (chunk.stream === "stderr") span.className = "stderr";
          span.textContent = chunk.text;
          log.appendChild(span);
        }
        if (atBottom) log.scrollTop = log.scrollHeight;
        this.next = page.next;
        if (page.complete) { this.complete = true; log.dataset.complete = "true"; return; }
        if (!page.chunks.length) return;
      }
    },
  },

  tenants: {
    mount() {
      view(`<h1>${ADMIN ? "Tenants" : "Tenant " + esc(TENANT)}</h1><section class="card"><div id="tenant-list">Loading…</div></section>`);
    },
    async refresh() {
      const { tenants } = await api("/tenants");
      fill("tenant-list", table(
        [{ label: "Tenant" }, { label: "Weight", num: true }, { label: "Usage / quota" }, { label: "Queued", num: true }, { label: "Share, last hour", num: true }, { label: "Burst" }],
        tenants.map((t) => [(ADMIN ? link("#/jobs?tenant=" + encodeURIComponent(t.name), t.name) : esc(t.name)) + (t.configured ? "" : ' <span class="muted">(auto)</span>'),
          esc(t.settings.tier ? `${t.weight} (${t.settings.tier})` : t.weight), quotas(t, false), String(t.queued),
          share(t), burst(t)]),
        "No tenants."));
    },
  },

  workers: {
    mount() {
      view('<h1>Workers</h1><section class="card"><div id="workers">Loading…</div></section>');
    },
    async refresh() {
      const { workers } = await api("/workers");
      fill("workers", workerTable(workers, await runningJobs()));
    },
  },
};

async function runningJobs() {
  const { jobs } = await api("/jobs?state=assigned,running&limit=1000");
  const byWorker = {};
  for (const j of jobs) if (j.worker_id) byWorker[j.worker_id] = j.id;
  return byWorker;
}

// A drained worker offers undrain; any other live one drain (it finishes its job first, then
// goes and its pool replaces it).
function workerActions(w) {
  const drain = w.state === "draining"
    ? `<button type="button" data-undrain="${esc(w.id)}">Undrain</button>`
    : `<button type="button" data-drain="${esc(w.id)}" title="No new job; terminated once its job is done">Drain</button>`;
  return drain + ` <button type="button" class="danger" data-terminate="${esc(w.id)}">Terminate</button>`;
}

// The machine's load at the last heartbeat: one-minute load average against its cores, and
// memory used against what it offers.
function load(w) {
  if (w.load_average === null || w.load_average === undefined) return '<span class="muted">not reported</span>';
  const cores = w.capabilities && w.capabilities.cpu_cores;
  const memory = w.capabilities && w.capabilities.memory_mb;
  return `load ${Number(w.load_average).toFixed(2)}${cores ? ` / ${cores} cores` : ""}<br>memory ${esc(w.memory_used_mb)} MiB${memory ? ` / ${memory} MiB` : ""}`;
}

function workerTable(workers, jobsByWorker) {
  const html = table(
    [{ label: "Worker" }, { label: "State" }, { label: "Pool" }, { label: "Current job" }, { label: "Uses", num: true }, { label: "Connected" }, { label: "Last heartbeat" }, { label: "Load" }, { label: "Since" }, { label: "Actions" }],
    workers.map((w) => [esc(w.id), state(w.state), w.pool ? link("#/pools/" + encodeURIComponent(w.pool), w.pool) : "–",
      jobsByWorker[w.id] ? link("#/jobs/" + jobsByWorker[w.id], jobsByWorker[w.id]) : "–", String(w.uses ?? 0),
      w.connected ? "yes" : "no", w.last_seen ? when(w.last_seen) : '<span class="muted">never</span>',
      load(w), when(w.provisioned_at),
      ADMIN && w.state !== "terminated" ? workerActions(w) : "–"]),
    "No worker.");
  setTimeout(() => {
    for (const button of document.querySelectorAll("button[data-drain], button[data-undrain]")) {
      button.addEventListener("click", async () => {
        const id = button.dataset.drain || button.dataset.undrain;
        const what = button.dataset.drain ? "drain" : "undrain";
        try { await post("/workers/" + encodeURIComponent(id) + "/" + what); }
        catch (e) { window.alert(e.message); }
        tick();
      });
    }
    for (const button of document.querySelectorAll("button[data-terminate]")) {
      button.addEventListener("click", async () => {
        if (!window.confirm("Terminate worker " + button.dataset.terminate + "?")) return;
        try { await post("/workers/" + encodeURIComponent(button.dataset.terminate) + "/terminate"); }
        catch (e) { window.alert(e.message); }
        tick();
      });
    }
  });
  return html;
}

// ---- Routing and polling ---------------------------------------------------------------

function route() {
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "pools" && parts[1] && ADMIN) return { view: views.pool, arg: parts[1], params };
  if (parts[0] === "jobs" && parts[1]) return { view: views.job, arg: parts[1], params };
  if (parts[0] === "jobs") return { view: views.jobs, arg: null, params };
  if (parts[0] === "workers" && ADMIN) return { view: views.workers, arg: null, params };
  if (parts[0] === "tenants") return { view: views.tenants, arg: null, params };
  return { view: views.overview, arg: null, params };
}

async function tick() {
  if (!current) return;
  const mine = current;
  if (mine.busy) return;
  mine.busy = true;
  try {
    await mine.view.refresh(mine.arg, mine.params);
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "Update failed: " + e.message;
  } finally {
    mine.busy = false;
  }
}

function navigate() {
  if (current) clearInterval(current.timer);
  current = route();
  current.view.mount(current.arg, current.params);
  document.getElementById("view").focus();
  tick();
  current.timer = setInterval(tick, POLL_MS);
}

document.getElementById("who").textContent = "Signed in: " + ROLE + (TENANT ? " (tenant " + TENANT + ")" : "");
window.addEventListener("hashchange", navigate);
navigate();
