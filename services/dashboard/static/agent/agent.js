// hyperhive agent page: live tail over SSE, prompt box, badge, chips.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  // the page is the dashboard's /agents/<name>/; its API is proxied under api/
  const base = document.body.dataset.base;
  const log = document.getElementById("log");
  const pill = document.getElementById("pill");
  const pillN = document.getElementById("pill-n");
  const badge = document.getElementById("badge");
  const badgeState = document.getElementById("badge-state");
  const badgeAge = document.getElementById("badge-age");
  const chipLast = document.getElementById("chip-last");
  const chipModel = document.getElementById("chip-model");
  const cancelBtn = document.getElementById("cancel");
  const form = document.getElementById("prompt-form");
  const input = document.getElementById("prompt");
  const MAX_LINES = 4000;
  const CLIP = 1200;

  let since = Date.now() / 1000;
  let clockSkew = 0; // server time - client time, seconds
  let unseen = 0;
  let stuck = true; // follow the bottom while the reader is there

  // --- scrolling: sticky bottom with a "↓ N new" pill ---------------------------
  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }
  log.addEventListener("scroll", function () {
    stuck = atBottom();
    if (stuck) { unseen = 0; pill.hidden = true; }
  });
  pill.addEventListener("click", function () {
    log.scrollTop = log.scrollHeight;
    stuck = true; unseen = 0; pill.hidden = true;
  });

  function add(cls, text) {
    const div = document.createElement("div");
    div.className = "line " + cls;
    div.textContent = text;
    log.appendChild(div);
    while (log.childElementCount > MAX_LINES) log.removeChild(log.firstElementChild);
    if (stuck) {
      log.scrollTop = log.scrollHeight;
    } else {
      unseen += 1;
      pillN.textContent = String(unseen);
      pill.hidden = false;
    }
    return div;
  }

  function clip(s) {
    s = String(s == null ? "" : s);
    return s.length > CLIP ? s.slice(0, CLIP) + " …(" + (s.length - CLIP) + " more)" : s;
  }

  function textOf(content) {
    if (content == null) return "";
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content.map(function (b) { return b && b.type === "text" ? b.text : JSON.stringify(b); }).join("\n");
    }
    return JSON.stringify(content);
  }

  function fmtMs(ms) {
    if (ms == null) return "–";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    return Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s";
  }

  // --- the badge and chips -------------------------------------------------------
  const STATE_LABELS = { retrying: "api unavailable", login: "login needed" };
  function toolLabel(name) {
    // mcp__<server>__<tool> reads as "<tool> (<server>)"
    const m = /^mcp__(.+?)__(.+)$/.exec(String(name));
    return m ? m[2] + " (" + m[1] + ")" : String(name);
  }
  function setStatus(st) {
    if (!st || !st.state) return;
    if (st.now) clockSkew = st.now - Date.now() / 1000;
    since = st.since || since;
    badge.className = "badge state-" + st.state;
    badge.dataset.state = st.state;
    // while claude runs a tool (its tool_use until its tool_result) the badge names it
    const tools = st.state === "thinking" && Array.isArray(st.tools) ? st.tools : [];
    badge.dataset.tool = tools.join(",");
    badgeState.textContent = tools.length ? "running " + tools.map(toolLabel).join(", ") :
      STATE_LABELS[st.state] || st.state;
    chipModel.textContent = "model " + (st.model || "default");
    chipLast.textContent = "last turn " + fmtMs(st.last_turn_ms);
    chipLast.title = st.last_turn_ms == null ? "duration of the last turn" :
      "duration of the last turn" + (st.last_outcome ? " (" + st.last_outcome + ")" : "") +
      (st.last_turn_model ? " · model " + st.last_turn_model : "");
    cancelBtn.hidden = !(st.state in STATE_LABELS || st.state === "thinking" || st.state === "compacting");
    tick();
  }
  function tick() {
    const age = Math.max(0, Date.now() / 1000 + clockSkew - since);
    badgeAge.textContent = age < 60 ? Math.floor(age) + "s" :
      age < 3600 ? Math.floor(age / 60) + "m" : Math.floor(age / 3600) + "h";
  }
  setInterval(tick, 1000);
  tick();  // the age shows from the first paint, not a second later

  // --- rendering turn records -------------------------------------------------------
  function renderClaude(ev) {
    switch (ev.type) {
      case "system":
        if (ev.subtype === "init") {
          const mcp = (ev.mcp_servers || []).map(function (s) { return s.name + ":" + s.status; }).join(" ");
          add("sys", "session " + String(ev.session_id || "").slice(0, 8) + " · " + (ev.model || "?") + (mcp ? " · mcp " + mcp : ""));
        } else if (ev.subtype === "status" && ev.status) {
          add("sys", ev.status + "…");
        } else if (ev.subtype === "compact_boundary") {
          add("sys", "conversation compacted");
        } else if (ev.subtype === "api_retry") {
          add("err", "API retry " + ev.attempt + "/" + ev.max_retries);
        }
        return;
      case "assistant": {
        const content = (ev.message && ev.message.content) || [];
        content.forEach(function (b) {
          if (b.type === "text" && b.text) add("text", b.text);
          else if (b.type === "tool_use") add("tool", "→ " + b.name + " " + clip(JSON.stringify(b.input)));
          else if (b.type === "thinking" && b.thinking) add("sys", clip(b.thinking));
        });
        return;
      }
      case "user": {
        const content = (ev.message && ev.message.content) || [];
        if (!Array.isArray(content)) return;
        content.forEach(function (b) {
          if (b.type === "tool_result") add("result" + (b.is_error ? " error" : ""), "← " + clip(textOf(b.content)));
        });
        return;
      }
      case "result":
        if (ev.is_error) add("err", "✗ " + clip(ev.result || ev.subtype));
        // total_cost_usd is the whole session's (--continue carries it over): the
        // turn's own cost is on the turn_end line
        else add("done", "✓ " + fmtMs(ev.duration_ms) + " · " + (ev.num_turns || 0) + " model calls");
        return;
      case "raw":
        add("sys", clip(ev.text));
        return;
    }
  }

  function render(rec) {
    const ev = rec.event || {};
    switch (rec.type) {
      case "claude": renderClaude(ev); return;
      case "turn_start": {
        let head = "── turn " + rec.turn + " · ";
        if (ev.command) head += "operator " + ev.command;
        else if (ev.source === "operator") head += "prompt from the operator";
        else head += "#" + ev.id + " from " + ev.sender + (ev.redelivered ? " (redelivered)" : "");
        if (ev.fresh) head += " · fresh session";
        add("turn-head", head + " " + new Date(rec.ts * 1000).toLocaleTimeString() + " ──");
        if (ev.body) add("wake", clip(ev.body));
        return;
      }
      case "turn_end": {
        const st = ev.stats || {};
        const tokens = (st.input_tokens || 0) + (st.output_tokens || 0) + (st.cache_read_tokens || 0) + (st.cache_creation_tokens || 0);
        const usage = st.model_calls ? " · $" + Number(st.cost_usd || 0).toFixed(4) + " · " + tokens + " tokens" : "";
        add("turn-end " + ev.outcome, "── turn " + rec.turn + " " + ev.outcome + " · " + fmtMs(st.duration_ms) + usage + (ev.error ? " · " + clip(ev.error) : "") + " ──");
        return;
      }
      case "api_retry":
        add("err", "api unavailable, retrying in " + Math.round(ev.delay_s) + " s (attempt " + ev.attempt + "): " + clip(ev.error));
        return;
      case "login_needed":
        add("err", "login needed: " + clip(ev.error) + " (turns wait for new credentials)");
        return;
      case "compact_retry":
        add("sys", "context too long: compacting and retrying once");
        return;
      case "new_conversation":
        add("sys", ev.text || "new conversation");
        return;
      case "compaction": {
        const history = ev.history || "hive notes <agent> --history";
        if (ev.phase === "start") add("sys", "notes.md is " + ev.bytes + " bytes (limit " + ev.limit + "): compacting it");
        else if (ev.replaced) add("sys", "notes compacted: " + ev.before + " → " + ev.after + " bytes (v" + ev.version_before + " → v" + ev.version_after + "; every version: " + history + ")");
        else add("err", "notes not compacted (" + ev.outcome + (ev.check ? ", " + ev.check : "") + "): " + clip(ev.error) + "; the notes are unchanged (every version: " + history + ")");
        return;
      }
      case "operator":
        if (ev.text) add("operator", "› " + ev.text);
        else if (ev.command) add("operator", "› " + ev.command + (ev.arg ? " " + ev.arg : ev.model ? " " + ev.model : ""));
        // the harness's reply to a command, in the server's order (before the
        // cancelled turn's end, say), and kept for a reload's backfill
        if (ev.reply) add(ev.error ? "err" : "local", ev.reply);
        return;
      case "state":
        if (rec.n) setStatus(ev); // live only: backfilled states are history
        return;
    }
  }

  // --- the stream ---------------------------------------------------------------------
  const RETRY_MS = 10000;
  let source = null;
  let problem = ""; // the last reason shown for a lost tail (said once, not every retry)
  function say(text) {
    if (text !== problem) { problem = text; add("err", text); }
  }
  // the tail could not be (re)opened: ask the status route why, say it, retry later
  function explain() {
    fetch(base + "api/status", { credentials: "same-origin" }).then(function (r) {
      if (r.ok) return "";
      return r.text().then(function (t) { return t || "HTTP " + r.status; });
    }).catch(function (err) { return "the dashboard does not answer: " + err; })
      .then(function (why) {
        if (why) say("live tail unavailable: " + why);
        setTimeout(connect, RETRY_MS);
      });
  }
  function connect() {
    source = new EventSource(base + "api/events");
    // the dashboard's last word on a tail that broke (the harness or its node's relay gone)
    source.addEventListener("gone", function (e) {
      let text = "live tail lost";
      try { text = JSON.parse(e.data).text || text; } catch (err) { /* keep the default */ }
      say(text);
    });
    source.addEventListener("reset", function () {
      log.textContent = ""; unseen = 0; pill.hidden = true; stuck = true;
    });
    source.addEventListener("turn", function (e) {
      try { render(JSON.parse(e.data)); } catch (err) { add("err", "bad record: " + err); }
    });
    source.addEventListener("status", function (e) { problem = ""; setStatus(JSON.parse(e.data)); });
    source.onerror = function () {
      badge.className = "badge state-offline";
      badge.dataset.state = "offline";
      badge.dataset.tool = "";
      badgeState.textContent = "offline";
      cancelBtn.hidden = true;
      since = Date.now() / 1000 + clockSkew;
      if (source.readyState === EventSource.CLOSED) explain();
    };
  }
  connect();

  // --- the prompt -----------------------------------------------------------------------
  function post(path, body) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    }).then(function (r) {
      return r.json().catch(function () { return { ok: false, text: "HTTP " + r.status }; });
    });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    if (text === "/clear") { log.textContent = ""; unseen = 0; pill.hidden = true; }
    post(base + "api/prompt", { text: text }).then(function (r) {
      if ((r.command || !r.ok) && !r.recorded) add(r.ok ? "local" : "err", r.text);
    }).catch(function (err) { add("err", "not sent: " + err); });
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  cancelBtn.addEventListener("click", function () {
    post(base + "api/cancel").then(function (r) { if (!r.recorded) add(r.ok ? "local" : "err", r.text); })
      .catch(function (err) { add("err", "not sent: " + err); });
  });
})();
