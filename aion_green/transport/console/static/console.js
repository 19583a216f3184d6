// aion_green console: actions through the API, live history, metric charts.
// No framework, no build step. Every value reaches the page as text
// (textContent), never as HTML.
"use strict";

(function () {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const csrf = meta("aion-csrf");
  const base = meta("aion-base");
  const namespace = meta("aion-namespace") || "default";

  // -- the API ---------------------------------------------------------------------------
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = null; }
    if (!response.ok) {
      const error = (doc && doc.error) || {};
      const failure = new Error(`${response.status} ${error.code || ""}: ${error.message || text}`);
      failure.status = response.status;
      failure.doc = doc;
      throw failure;
    }
    return doc;
  }

  function runPage(workflowId, runId) {
    const query = new URLSearchParams({ id: workflowId });
    if (runId) query.set("run_id", runId);
    if (namespace !== "default") query.set("namespace", namespace);
    return `${base}/run?${query}`;
  }

  function say(output, text, good) {
    if (!output) return;
    output.textContent = text;
    output.classList.toggle("bad", !good);
    output.classList.toggle("good", !!good);
  }

  // -- action forms: data-path, data-method, fields data-query / data-body ----------------
  function formRequest(form) {
    const url = new URL(form.dataset.path, window.location.href);
    const body = {};
    for (const el of form.querySelectorAll("[data-query]")) {
      url.searchParams.set(el.dataset.query, el.value);
    }
    for (const el of form.querySelectorAll("[data-body]")) {
      const raw = el.value;
      if (raw === "" && !el.required) continue;  // left out: the API's default
      if (el.dataset.json !== undefined) {
        try {
          body[el.dataset.body] = JSON.parse(raw);
        } catch (e) {
          throw new Error(`${el.name || el.dataset.body}: not valid JSON (${e.message})`);
        }
      } else {
        body[el.dataset.body] = raw;
      }
    }
    return { url: url.pathname + url.search, body };
  }

  async function submitAction(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const output = form.querySelector("output");
    let request;
    try {
      request = formRequest(form);
    } catch (e) {
      say(output, e.message, false);
      return;
    }
    const question = form.dataset.confirm;
    if (question && !window.confirm(question)) return;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const doc = await api(form.dataset.method || "POST", request.url, request.body);
      const then = form.dataset.then;
      if (then === "show") {
        say(output, JSON.stringify(doc && "answer" in doc ? doc.answer : doc, null, 2), true);
      } else if (then === "goto" && doc && doc.workflow_id) {
        say(output, `started ${doc.workflow_id}`, true);
        window.location.href = runPage(doc.workflow_id);
      } else if (then === "reload") {
        say(output, "done", true);
        window.setTimeout(() => window.location.reload(), 300);
      } else {
        say(output, `done${doc && doc.seq ? ` (event ${doc.seq})` : ""}`, true);
      }
    } catch (e) {
      say(output, e.message, false);
    } finally {
      if (button) button.disabled = false;
    }
  }

  for (const form of document.querySelectorAll("form[data-path]")) {
    form.addEventListener("submit", submitAction);
  }

  // -- bulk cancel / terminate on the runs list -------------------------------------------
  for (const button of document.querySelectorAll("button[data-bulk]")) {
    button.addEventListener("click", async () => {
      const picked = [...document.querySelectorAll('input[name="sel"]:checked')];
      const output = document.getElementById("bulk-out");
      if (!picked.length) { say(output, "select runs first", false); return; }
      const verb = button.dataset.bulk;
      if (!window.confirm(`${verb} ${picked.length} run(s)?`)) return;
      const lines = [];
      let failed = 0;
      for (const box of picked) {
        const url = new URL(button.dataset.path, window.location.href);
        url.searchParams.set("workflow_id", box.value);
        try {
          await api("POST", url.pathname + url.search, { reason: "from the console", run_id: box.dataset.run });
          lines.push(`${box.value}: ${verb} requested`);
        } catch (e) {
          failed += 1;
          lines.push(`${box.value}: ${e.message}`);
        }
      }
      say(output, lines.join("\n"), failed === 0);
      if (failed === 0) window.setTimeout(() => window.location.reload(), 600);
    });
  }
  const all = document.querySelector("#runs thead th");
  if (all && document.querySelector('input[name="sel"]')) {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.setAttribute("aria-label", "select all");
    box.id = "select-all";
    box.addEventListener("change", () => {
      for (const el of document.querySelectorAll('input[name="sel"]')) el.checked = box.checked;
    });
    all.appendChild(box);
  }

  // -- the live history of a running run ---------------------------------------------------
  const timeline = document.getElementById("timeline");
  if (timeline && timeline.dataset.stream && window.EventSource) {
    const source = new EventSource(timeline.dataset.stream);
    const state = document.getElementById("live-state");
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };
    const clock = (at) => new Date(at * 1000).toISOString().replace("T", " ").slice(0, 19);
    const brief = (value) => {
      const text = JSON.stringify(value);
      return text && text.length > 160 ? `${text.slice(0, 159)}…` : text;
    };
    function describe(event) {
      const d = event.data || {};
      switch (event.type) {
        case "StepCompleted": return `step ${d.step} ${d.name} attempt ${d.attempt} completed: ${brief(d.result)}`;
        case "StepFailed": return `step ${d.step} ${d.name} attempt ${d.attempt} failed: ${(d.error || {}).type}: ${(d.error || {}).message}`;
        case "MessageReceived": return `message ${d.name} received: ${brief(d.payload)}`;
        case "TimerStarted": return `timer ${d.timer} set to fire at ${clock(d.fire_at)}`;
        case "TimerFired": return `timer ${d.timer} fired`;
        case "ChildStarted": return `child ${d.id} (${d.workflow_type}) started`;
        case "ChildCompleted": return `child ${d.id} completed: ${brief(d.result)}`;
        default: return brief(d);
      }
    }
    function onEvent(message) {
      let event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (timeline.querySelector(`tr[data-seq="${event.seq}"]`)) return;
      const row = document.createElement("tr");
      row.className = /Failed|TimedOut|Cancel/.test(event.type) ? "ev fail fresh" : "ev fresh";
      row.dataset.seq = event.seq;
      row.dataset.type = event.type;
      const start = Number(timeline.dataset.start || 0);
      row.append(cell(String(event.seq)), cell(clock(event.at)),
                 cell(start ? `${(event.at - start).toFixed(1)} s` : ""), cell(event.type),
                 cell(describe(event)));
      timeline.prepend(row);
      if (state) state.textContent = ` · live: ${event.type}`;
    }
    for (const type of ["WorkflowStarted", "WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled",
      "WorkflowContinuedAsNew", "WorkflowTimedOut", "WorkflowPaused", "WorkflowUnpaused",
      "CancelRequested", "StepCompleted", "StepFailed", "TimerStarted", "TimerFired",
      "TimerCancelled", "MessageReceived", "MessageSent", "ChildStarted", "ChildCompleted",
      "ChildFailed", "ChildRestarted", "PatchMarker", "SearchAttributesUpserted", "message"]) {
      source.addEventListener(type, onEvent);
    }
    source.addEventListener("end", () => {
      source.close();
      if (state) state.textContent = " · ended: reloading";
      window.setTimeout(() => window.location.reload(), 500);
    });
  }

  // -- more history on scroll: the next older page, appended ----------------------------------
  const older = document.getElementById("older");
  if (older && timeline && window.IntersectionObserver && window.DOMParser) {
    let loading = false;
    const observer = new IntersectionObserver(async (entries) => {
      if (loading || !entries.some((entry) => entry.isIntersecting)) return;
      loading = true;
      try {
        const response = await fetch(older.getAttribute("href"), { credentials: "same-origin" });
        if (!response.ok) throw new Error(`${response.status}`);
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const row of page.querySelectorAll("#timeline tr")) {
          if (!timeline.querySelector(`tr[data-seq="${row.dataset.seq}"]`)) {
            timeline.appendChild(document.importNode(row, true));
          }
        }
        const next = page.getElementById("older");
        if (next) {
          older.setAttribute("href", next.getAttribute("href"));
        } else {
          observer.disconnect();
          older.remove();
        }
      } catch (e) {
        older.textContent = `older events (could not load: ${e.message})`;
        observer.disconnect();
      } finally {
        loading = false;
      }
    }, { rootMargin: "200px" });
    observer.observe(older);
  }

  // -- metric charts on the engines page ----------------------------------------------------
  const charts = document.getElementById("charts");
  if (charts && charts.dataset.source) {
    const series = new Map();  // "name|label" -> [values]
    const KEEP = 60;
    function parse(text) {
      const found = new Map();
      for (const line of text.split("\n")) {
        if (!line || line.startsWith("#")) continue;
        const match = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
        if (!match) continue;
        const labels = {};
        for (const part of (match[3] || "").split(",")) {
          const kv = /^\s*(\w+)="((?:[^"\\]|\\.)*)"/.exec(part);
          if (kv) labels[kv[1]] = kv[2];
        }
        found.set(`${match[1]}|${JSON.stringify(labels)}`, { name: match[1], labels, value: Number(match[4]) });
      }
      return found;
    }
    function draw(box, lines) {
      const ns = "http://www.w3.org/2000/svg";
      const svg = document.createElementNS(ns, "svg");
      svg.setAttribute("viewBox", "0 0 300 70");
      svg.setAttribute("preserveAspectRatio", "none");
      let top = 1;
      for (const [, values] of lines) for (const v of values) top = Math.max(top, v);
      const colors = ["#2456c7", "#1d7a46", "#b3261e", "#a15c00", "#5b3fa8", "#45588a"];
      const legend = document.createElement("div");
      legend.className = "legend";
      let i = 0;
      for (const [label, values] of lines) {
        const path = document.createElementNS(ns, "polyline");
        const points = values.map((v, x) => `${(x * 300) / (KEEP - 1)},${68 - (v / top) * 64}`);
        path.setAttribute("points", points.join(" "));
        path.setAttribute("fill", "none");
        path.setAttribute("stroke", colors[i % colors.length]);
        path.setAttribute("stroke-width", "2");
        svg.appendChild(path);
        const item = document.createElement("span");
        item.textContent = `${label || "value"}: ${values[values.length - 1]}  `;
        legend.appendChild(item);
        i += 1;
      }
      box.replaceChildren(svg, legend);
    }
    async function sample() {
      try {
        const response = await fetch(charts.dataset.source, { credentials: "same-origin" });
        if (!response.ok) throw new Error(`${response.status}`);
        const found = parse(await response.text());
        for (const box of charts.querySelectorAll("[data-metric]")) {
          const lines = new Map();
          for (const [key, sampleValue] of found) {
            if (sampleValue.name !== box.dataset.metric) continue;
            const values = series.get(key) || [];
            values.push(sampleValue.value);
            if (values.length > KEEP) values.shift();
            series.set(key, values);
            lines.set(box.dataset.label ? sampleValue.labels[box.dataset.label] : "", values);
          }
          if (lines.size) draw(box, lines); else box.textContent = "no figure (yet)";
        }
      } catch (e) {
        for (const box of charts.querySelectorAll("[data-metric]")) box.textContent = `metrics: ${e.message}`;
      }
    }
    sample();
    window.setInterval(sample, 2000);
  }
})();
