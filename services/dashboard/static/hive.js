/* hyperhive dashboard: async forms, live sections, message flow, logs, charts.
   Everything the server sends is inserted as text, except section fragments,
   which the server renders with autoescaping. */
(() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  /* ---------- toasts ---------- */
  function toast(message, ok = true) {
    const box = $("#toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = ok ? "toast" : "toast err";
    el.textContent = message;
    box.appendChild(el);
    while (box.children.length > 4) box.firstChild.remove();
    setTimeout(() => el.remove(), ok ? 6000 : 15000);
  }

  /* ---------- sections refreshed in place ---------- */
  const following = new Map(); // details id -> log poller state
  const timers = new Map();

  function refreshSoon(name, delay = 150) {
    clearTimeout(timers.get(name));
    timers.set(name, setTimeout(() => refresh(name), delay));
  }

  async function refresh(name) {
    const body = document.getElementById("body-" + name);
    if (!body) return;
    const open = $$("details[open][id], tr.tele-charts[id]:not([hidden])", body).map((d) => d.id);
    const active = document.activeElement;
    const focusKey = active && body.contains(active) ? focusKeyOf(active) : null;
    let html;
    try {
      const r = await fetch("/section/" + name, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (!r.ok) return;
      html = await r.text();
    } catch (e) {
      return; // the status bar shows what is down
    }
    for (const d of $$("details[data-follow]", body)) stopFollow(d);
    body.innerHTML = html;
    hydrate(body);
    for (const id of open) {
      const d = document.getElementById(id);
      if (!d || !body.contains(d)) continue;
      if (d.tagName === "DETAILS") d.open = true;
      else {
        d.hidden = false; // an open telemetry panel stays open
        $(`[aria-controls="${CSS.escape(id)}"]`, body)?.setAttribute("aria-expanded", "true");
      }
    }
    if (focusKey) {
      const again = $$("button, input, textarea, select, summary, a", body).find((el) => focusKeyOf(el) === focusKey);
      if (again) again.focus();
    }
    if (name === "telemetry") drawTelemetry();
    if (name === "activity") filterActivity();
    if (name === "approvals" || name === "questions") showWaiting();
  }

  // The tab's title says how many decisions wait (seen from another tab).
  const baseTitle = document.title;
  function showWaiting() {
    const n =
      $$('#body-approvals article.approval[data-state="pending"]').length +
      $$("#body-questions article.question").length;
    document.title = n ? "(" + n + " waiting) " + baseTitle : baseTitle;
  }

  /* ---------- activity timeline: filtered in the page ---------- */
  const GROUPS = {
    decisions: ["approval", "deploy", "deny", "answer", "fail"],
    trouble: ["crash", "stuck", "fail"],
  };
  function filterActivity() {
    const kind = $("#activity-kind")?.value || "";
    const who = $("#activity-who")?.value || "";
    const agent = ($("#activity-agent")?.value || "").trim();
    const rows = $$("#body-activity li.ev");
    let shown = 0;
    for (const li of rows) {
      const cats = GROUPS[kind] || (kind ? [kind] : null);
      const ok =
        (!cats || cats.includes(li.dataset.category)) &&
        (!who || li.dataset.whoKind === who) &&
        (!agent || li.dataset.agent === agent || li.dataset.who === agent);
      li.hidden = !ok;
      if (ok) shown++;
    }
    const count = $("#activity-count");
    if (count) count.textContent = rows.length ? shown + " of " + rows.length + " shown" : "";
  }
  for (const id of ["#activity-kind", "#activity-who"]) $(id)?.addEventListener("change", filterActivity);
  $("#activity-agent")?.addEventListener("input", filterActivity);
  $("#activity-filter")?.addEventListener("submit", (e) => {
    e.preventDefault();
    filterActivity();
  });
  $("#activity-clear")?.addEventListener("click", () => {
    $("#activity-kind").value = "";
    $("#activity-who").value = "";
    $("#activity-agent").value = "";
    filterActivity();
  });

  function focusKeyOf(el) {
    const form = el.closest("form");
    return (form ? form.getAttribute("action") : "") + "|" + el.tagName + "|" + (el.name || el.textContent.trim());
  }

  /* ---------- async forms ---------- */
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-async")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const body = new URLSearchParams(new FormData(form, ev.submitter));
    const buttons = $$("button", form);
    buttons.forEach((b) => (b.disabled = true));
    form.classList.add("busy");
    form.setAttribute("aria-busy", "true");
    try {
      const r = await fetch(form.action, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
      });
      const text = await r.text();
      let data;
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = { ok: false, message: text || r.status + " " + r.statusText, refresh: [] };
      }
      toast(data.message, data.ok);
      if (data.ok) {
        if (form.hasAttribute("data-reset")) form.reset();
        for (const name of (form.dataset.resetFields || "").split(",").filter(Boolean)) {
          const field = form.elements.namedItem(name);
          if (field) field.value = "";
        }
      }
      for (const name of data.refresh || []) refreshSoon(name, 0);
    } catch (e) {
      toast("network error: " + e, false);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.classList.remove("busy");
      form.removeAttribute("aria-busy");
    }
  });

  /* ---------- collapsible panels: lazy fragments and followed logs ---------- */
  function hydrate(root) {
    for (const d of $$("details[data-lazy]", root)) {
      d.addEventListener("toggle", async () => {
        if (!d.open) return;
        const target = $(".panel-body", d);
        target.textContent = "Loading…";
        try {
          const r = await fetch(d.dataset.lazy, { headers: { Accept: "text/html" }, credentials: "same-origin" });
          target.innerHTML = await r.text();
        } catch (e) {
          target.textContent = "could not load: " + e;
        }
      });
    }
    for (const d of $$("details[data-follow]", root)) {
      d.addEventListener("toggle", () => (d.open ? startFollow(d) : stopFollow(d)));
    }
  }

  // Logs are polled while the panel is open (no connection held open).
  function startFollow(d) {
    stopFollow(d);
    const pre = $("pre", d);
    pre.textContent = "";
    const state = { after: null, cursor: "", timer: null, stopped: false };
    following.set(d.id, state);
    const poll = async () => {
      if (state.stopped) return;
      const params = new URLSearchParams();
      if (state.after !== null) params.set("after", state.after);
      if (state.cursor) params.set("cursor", state.cursor);
      try {
        const r = await fetch(d.dataset.follow + "?" + params, { credentials: "same-origin" });
        const data = await r.json();
        if (data.down) {
          pre.textContent += "[lifecycle is down: " + data.down + "]\n";
        } else {
          state.after = data.after;
          state.cursor = data.cursor || "";
          if (data.lines.length) {
            const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.textContent += data.lines.join("\n") + "\n";
            const lines = pre.textContent.split("\n");
            if (lines.length > 2000) pre.textContent = lines.slice(-2000).join("\n");
            if (atBottom) pre.scrollTop = pre.scrollHeight;
          }
        }
      } catch (e) {
        /* a network blip: try again on the next tick */
      }
      if (!state.stopped) state.timer = setTimeout(poll, Number(d.dataset.pollMs) || 1000);
    };
    poll();
  }

  function stopFollow(d) {
    const state = following.get(d.id);
    if (state) {
      state.stopped = true;
      clearTimeout(state.timer);
    }
    following.delete(d.id);
  }

  /* ---------- live changes from HIVE_EVENTS ---------- */
  const AFFECTS = [
    ["agent.draft", ["drafts", "activity"]],
    ["agent.", ["containers", "kept", "drafts", "flow", "telemetry", "activity"]],
    ["approval.", ["approvals", "drafts", "containers", "telemetry", "activity"]],
    ["question.", ["questions", "activity"]],
    ["node.", ["nodes", "containers", "activity"]],
    ["crash.", ["containers", "activity"]],
    ["stuck.", ["containers", "activity"]],
    ["stats.", ["telemetry"]],
  ];
  /* ---------- browser notifications of waiting decisions ---------- */
  // Asked once, on a click (browsers ignore a request without one); then
  // every approval or question that arrives on the live stream is shown.
  const notifyBtn = $("#notify-btn");
  const notifyState = $("#notify-state");
  let swReg = null;

  function notifySupported() {
    return "Notification" in window && window.isSecureContext;
  }

  function showNotifyState() {
    if (!notifyBtn) return;
    if (!notifySupported()) {
      notifyBtn.hidden = true;
      notifyState.textContent = window.isSecureContext ? "" : "notifications need https";
      return;
    }
    const p = Notification.permission;
    notifyBtn.hidden = p !== "default";
    notifyState.textContent =
      p === "granted" ? "notifications on" : p === "denied" ? "notifications blocked in the browser" : "";
  }

  notifyBtn?.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } catch (e) {
      /* an old browser without the promise form: the state below says it */
    }
    showNotifyState();
    if (Notification.permission === "granted") toast("Notifications on: you will be told when a decision waits.");
  });

  if ("serviceWorker" in navigator && window.isSecureContext) {
    // only to show notifications where the page cannot (Android) and focus the
    // dashboard on a click; it caches nothing
    navigator.serviceWorker.register("/sw.js").then((r) => (swReg = r), () => {});
  }

  function notifyDecision(change) {
    if (!notifySupported() || Notification.permission !== "granted") return;
    let title, body, anchor;
    if (change.kind === "approval.queued") {
      title = "Approval #" + change.id + " waits";
      body = (change.detail === "Spawn" ? "Spawn a new agent " : "Deploy a change to ") + (change.agent || "");
      anchor = "approval-" + change.id;
    } else if (change.kind === "question.asked") {
      title = "Question #" + change.id + " from " + (change.agent || "the manager");
      body = change.detail || "";
      anchor = "question-" + change.id;
    } else {
      return;
    }
    const opts = { body, tag: anchor, icon: "/static/icon-192.png", data: { url: "/#" + anchor } };
    try {
      const n = new Notification(title, opts);
      n.onclick = () => {
        window.focus();
        location.hash = anchor;
        n.close();
      };
    } catch (e) {
      swReg?.showNotification(title, opts); // Android: only a service worker may show one
    }
  }
  showNotifyState();

  function connectChanges() {
    // from the last change the rendered sections show: none falls between
    const seen = $("#body-status")?.dataset.seen || "";
    const es = new EventSource("/events" + (seen ? "?after=" + encodeURIComponent(seen) : ""));
    es.addEventListener("change", (e) => {
      const change = JSON.parse(e.data);
      notifyDecision(change);
      const hit = AFFECTS.find(([prefix]) => change.kind.startsWith(prefix));
      // turn stats can come fast from many agents: redraw charts at most every 2 s
      const delay = change.kind.startsWith("stats.") ? 2000 : 150;
      if (hit) hit[1].forEach((name) => refreshSoon(name, delay));
    });
    let opened = false;
    es.addEventListener("open", () => {
      // after a reconnect (dashboard restart, network blip) changes may have
      // been missed: re-read every section once
      if (opened) $$(".sec-body[data-section]").forEach((b) => refreshSoon(b.dataset.section));
      opened = true;
      refreshSoon("status", 0);
    });
  }
  setInterval(() => refreshSoon("status", 0), 15000);

  /* ---------- message flow ---------- */
  const MAX_ROWS = 500;
  let flowES = null;
  const flowList = $("#flow-list");
  const flowAgent = $("#flow-agent");

  function fmtTime(ts) {
    const d = new Date(ts * 1000);
    return d.toTimeString().slice(0, 8);
  }

  function addMessage(m) {
    const li = document.createElement("li");
    li.className = "msg fresh";
    li.dataset.id = m.id;
    li.dataset.sender = m.sender;
    li.dataset.recipient = m.recipient;
    const time = document.createElement("time");
    time.dateTime = new Date(m.ts * 1000).toISOString();
    time.textContent = fmtTime(m.ts);
    const route = document.createElement("span");
    route.className = "route";
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = m.sender;
    const to = document.createElement("span");
    to.className = "to";
    to.textContent = m.recipient;
    route.append(from, " → ", to);
    const id = document.createElement("span");
    id.className = "muted";
    id.textContent = "#" + m.id;
    const state = document.createElement("span");
    state.className = "badge mstate state-committed";
    state.textContent = "sent";
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = m.body ?? "";
    li.append(time, route, id, state, body);
    flowList.prepend(li);
    while (flowList.children.length > MAX_ROWS) flowList.lastChild.remove();
  }

  function updateMessage(s) {
    const li = flowList.querySelector('li[data-id="' + CSS.escape(String(s.id)) + '"]');
    if (!li) return;
    const badge = $(".mstate", li);
    const state = s.kind.split(".")[1] || s.kind;
    badge.className = "badge mstate state-" + state;
    badge.textContent = state + (s.deliveries > 1 ? " ×" + s.deliveries : "");
  }

  function connectFlow() {
    if (!flowList) return;
    if (flowES) flowES.close();
    flowList.textContent = "";
    const agent = (flowAgent?.value || "").trim();
    flowES = new EventSource("/flow/stream" + (agent ? "?agent=" + encodeURIComponent(agent) : ""));
    flowES.addEventListener("message", (e) => addMessage(JSON.parse(e.data)));
    flowES.addEventListener("status", (e) => updateMessage(JSON.parse(e.data)));
  }
  flowAgent?.addEventListener("change", connectFlow);
  $("#flow-filter")?.addEventListener("submit", (e) => {
    e.preventDefault();
    connectFlow();
  });
  $("#flow-clear")?.addEventListener("click", () => {
    flowAgent.value = "";
    connectFlow();
  });

  /* ---------- telemetry charts (uPlot) ---------- */
  const CHARTS = [
    ["turns_per_min", "turns / min"],
    ["duration", "turn duration p50 / p95 (s)"],
    ["tool_calls", "tool calls / turn"],
    ["exit_codes", "claude exit codes (turns)"],
    ["inbox_depth", "inbox depth"],
    ["messages", "messages sent (by recipient) / received"],
    ["tools", "tool calls by tool"],
    ["since_last_turn", "time since previous turn (s)"],
    ["tokens", "tokens (input / output / cache read / cache write)"],
    ["cost", "cost (USD, notes compactions included)"],
    ["notes", "notes file size (KiB)"],
  ];
  const HIVE_CHARTS = [
    ["cost_per_day", "cost per day, every agent (USD)"],
    ["approval_queue", "approvals waiting for the operator"],
  ];
  // sparse series: points, joined across empty buckets
  const SCATTER = new Set(["duration", "tool_calls", "inbox_depth", "since_last_turn", "notes"]);
  const COLORS = ["#39ff88", "#ff3cac", "#2de2e6", "#ffe600", "#ffa43c", "#ff5c7a"];
  const plots = [];

  function fmtAgo(s) {
    if (s == null) return "no turns yet";
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return (s / 3600).toFixed(1) + "h ago";
    return (s / 86400).toFixed(1) + "d ago";
  }

  function fmtTokens(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(n);
  }

  async function fetchJson(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.status);
    return data;
  }

  // A sparkline: the first series of a chart as an SVG polyline (no axes).
  function spark(svg, chart) {
    svg.textContent = "";
    const ys = chart ? Object.values(chart.series)[0] || [] : [];
    const vals = ys.map((v) => (v == null ? null : Number(v)));
    const max = Math.max(0, ...vals.filter((v) => v != null));
    if (!vals.length || max === 0) {
      svg.classList.add("empty");
      return;
    }
    svg.classList.remove("empty");
    const step = 100 / Math.max(1, vals.length - 1);
    let d = "";
    vals.forEach((v, i) => {
      if (v == null) return;
      const x = (i * step).toFixed(2);
      const y = (22 - (v / max) * 20).toFixed(2);
      d += (d ? " L" : "M") + x + " " + y;
    });
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    svg.append(path);
  }

  const agentData = new Map(); // agent -> the last /api/stats answer

  async function drawTelemetry() {
    for (const p of plots.splice(0)) p.destroy();
    const win = $("#tele-win")?.value || "3600";
    const hive = $(".tele[data-hive]");
    if (hive) {
      const box = $('[data-role="charts"]', hive);
      const last = $('[data-role="last"]', hive);
      try {
        const data = await fetchJson("/api/stats/hive?window=" + win);
        last.textContent = "";
        drawCharts(box, HIVE_CHARTS, data.charts, data);
      } catch (e) {
        box.textContent = "";
        last.textContent = "approvals is down: " + e.message;
      }
      drawUsage($('[data-role="usage"]', hive));
    }
    for (const row of $$("tr.tele[data-agent]")) {
      const agent = row.dataset.agent;
      const cell = (role) => $('[data-role="' + role + '"]', row);
      let data;
      try {
        data = await fetchJson("/api/stats?agent=" + encodeURIComponent(agent) + "&window=" + win);
      } catch (e) {
        cell("last").textContent = "broker is down: " + e.message;
        continue;
      }
      agentData.set(agent, data);
      const s = data.summary;
      cell("turns").textContent = s.turns_today + (s.failed_today ? " (" + s.failed_today + " failed)" : "");
      cell("cost").textContent = "$" + s.cost_today_usd.toFixed(2);
      cell("tokens").textContent = fmtTokens(s.tokens_today);
      cell("last").textContent =
        s.last_turn_s == null
          ? "no turns yet"
          : s.last_turn_s.toFixed(1) + " s, " + fmtAgo(data.since_last_turn_s) + " · " + data.turns + " turns in window";
      cell("inbox").textContent = s.inbox_depth == null ? "–" : String(s.inbox_depth);
      for (const svg of $$("svg[data-spark]", row)) spark(svg, data.charts[svg.dataset.spark]);
      const open = $('[data-role="open"]', row);
      open.hidden = Object.keys(data.charts).length === 0;
      const panel = document.getElementById("tele-charts-" + agent);
      if (panel && !panel.hidden) drawAgentCharts(agent);
    }
  }

  function drawAgentCharts(agent) {
    const panel = document.getElementById("tele-charts-" + agent);
    const data = agentData.get(agent);
    if (!panel || !data) return;
    const box = $('[data-role="charts"]', panel);
    drawCharts(box, CHARTS, data.charts, data);
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest?.('tr.tele [data-role="open"]');
    if (!btn) return;
    const agent = btn.closest("tr").dataset.agent;
    const panel = document.getElementById("tele-charts-" + agent);
    const open = panel.hidden;
    panel.hidden = !open;
    btn.setAttribute("aria-expanded", String(open));
    if (open) drawAgentCharts(agent);
  });

  const USAGE_COLS = [
    ["day", "day (UTC)"], ["agent", "agent"], ["turns", "turns"], ["model_calls", "calls"],
    ["input_tokens", "in"], ["output_tokens", "out"], ["cache_read_tokens", "cache read"],
    ["cache_creation_tokens", "cache write"], ["cost_usd", "USD"],
  ];

  async function drawUsage(box) {
    if (!box) return;
    let data;
    try {
      data = await fetchJson("/api/usage");
    } catch (e) {
      box.textContent = "usage: the broker is not answering: " + e.message;
      return;
    }
    const rows = [...data.days].reverse();
    for (const [agent, t] of Object.entries(data.totals)) rows.push({ ...t, day: "total", agent });
    const table = document.createElement("table");
    table.className = "usage";
    const cap = document.createElement("caption");
    cap.textContent = "usage per agent and day, last " + data.window_days + " days";
    table.append(cap);
    const head = table.insertRow();
    for (const [, label] of USAGE_COLS) {
      const th = document.createElement("th");
      th.textContent = label;
      head.append(th);
    }
    for (const r of rows) {
      const tr = table.insertRow();
      tr.dataset.agent = r.agent;
      tr.dataset.day = r.day;
      for (const [key] of USAGE_COLS) {
        const v = r[key];
        tr.insertCell().textContent =
          key === "cost_usd" ? v.toFixed(4) : typeof v === "number" ? fmtTokens(v) : v;
      }
    }
    box.textContent = "";
    if (rows.length === 0) {
      box.textContent = "no usage in the last " + data.window_days + " days";
      return;
    }
    box.append(table);
  }

  // Charts that have data (the server leaves empty ones out), on a time axis
  // that spans the window (one point must not stretch it over years).
  function drawCharts(box, list, charts, span) {
    for (const p of plots.filter((q) => box.contains(q.root))) {
      p.destroy();
      plots.splice(plots.indexOf(p), 1);
    }
    box.textContent = "";
    for (const [key, title] of list) {
      const chart = charts[key];
      const labels = chart ? Object.keys(chart.series) : [];
      if (!chart || chart.x.length === 0 || labels.length === 0) continue;
      const values = labels.flatMap((l) => chart.series[l]).filter((v) => v != null);
      if (!values.some((v) => v !== 0)) continue;
      const fig = document.createElement("figure");
      fig.className = "chart";
      fig.dataset.chart = key;
      const h = document.createElement("h4");
      h.textContent = title;
      fig.append(h);
      box.append(fig);
      const scatter = SCATTER.has(key);
      const daily = key === "cost_per_day";
      const range = daily
        ? [chart.x[0] - 43200, chart.x[chart.x.length - 1] + 43200]
        : [span.start, span.end];
      const opts = {
        width: Math.max(200, fig.clientWidth), // the figure's own column, not the box
        height: 130,
        cursor: { focus: { prox: 16 } },
        scales: { x: { time: true, range: () => range } },
        axes: [
          { stroke: "#9a9ab8", grid: { stroke: "#1d1d33" }, ticks: { stroke: "#2b2b48" } },
          { stroke: "#9a9ab8", grid: { stroke: "#1d1d33" }, ticks: { stroke: "#2b2b48" }, size: 50 },
        ],
        series: [
          {},
          ...labels.map((label, i) => ({
            label,
            stroke: COLORS[i % COLORS.length],
            width: daily ? 0 : 1.5,
            spanGaps: scatter,
            points: { show: scatter || daily, size: daily ? 8 : 5, fill: COLORS[i % COLORS.length] },
            fill: key === "turns_per_min" || daily ? "rgba(57,255,136,0.12)" : undefined,
            paths: daily && uPlot.paths?.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
          })),
        ],
      };
      const plot = new uPlot(opts, [chart.x, ...labels.map((l) => chart.series[l])], fig);
      fig.uplot = plot; // its scales, for tests and the curious
      plots.push(plot);
    }
    if (!box.children.length) {
      const p = document.createElement("p");
      p.className = "nodata";
      p.textContent = "No data in this window";
      box.append(p);
    }
  }
  window.addEventListener("resize", () => {
    for (const p of plots) {
      const fig = p.root.parentElement;
      if (!fig?.isConnected) continue; // a chart a redraw has just replaced
      p.setSize({ width: Math.max(200, fig.clientWidth), height: 130 });
    }
  });
  $("#tele-win")?.addEventListener("change", drawTelemetry);
  $("#tele-refresh")?.addEventListener("click", drawTelemetry);
  setInterval(drawTelemetry, 60000);

  /* ---------- start ---------- */
  hydrate(document);
  filterActivity();
  showWaiting();
  connectChanges();
  connectFlow();
  if (typeof uPlot !== "undefined") drawTelemetry();
})();
