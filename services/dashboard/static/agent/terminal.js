// hyperhive agent page: a terminal (xterm.js, vendored) on a login shell in the
// agent's working dir, over a WebSocket. Closing the panel or the page ends the shell.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  // the page is the dashboard's /agents/<name>/; its API is proxied under api/
  const base = document.body.dataset.base;
  const toggle = document.getElementById("term-toggle");
  const pane = document.getElementById("term-pane");
  const box = document.getElementById("term");
  const info = document.getElementById("term-info");
  let loading = null;
  let term = null;
  let fit = null;
  let ws = null;

  function load(tag, attrs) {
    return new Promise(function (resolve, reject) {
      const el = document.createElement(tag);
      Object.keys(attrs).forEach(function (k) { el[k] = attrs[k]; });
      el.onload = resolve;
      el.onerror = function () { reject(new Error("cannot load " + (attrs.src || attrs.href))); };
      document.head.appendChild(el);
    });
  }

  // xterm.js is large: fetched the first time the terminal opens
  function vendor() {
    if (!loading) {
      loading = Promise.all([
        load("link", { rel: "stylesheet", href: "/static/agent/vendor/xterm.css" }),
        load("script", { src: "/static/agent/vendor/xterm.js" }).then(function () {
          return load("script", { src: "/static/agent/vendor/addon-fit.js" });
        }),
      ]);
    }
    return loading;
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  function open() {
    pane.hidden = false;
    toggle.classList.add("on");
    info.textContent = "connecting…";
    vendor().then(function () {
      term = new window.Terminal({
        cursorBlink: true,
        fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
        fontSize: 13,
        scrollback: 5000,
        theme: { background: "#07100a", foreground: "#c8f7c5", cursor: "#7cf29c" },
      });
      fit = new window.FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      window.hiveTerminal = term; // for tests and the console
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const url = proto + "//" + location.host + base + "api/terminal?csrf=" + encodeURIComponent(csrf) +
        "&cols=" + term.cols + "&rows=" + term.rows;
      const sock = new WebSocket(url);
      ws = sock;
      sock.binaryType = "arraybuffer";
      sock.onmessage = function (e) {
        if (typeof e.data === "string") {
          const msg = JSON.parse(e.data);
          if (msg.type === "started") info.textContent = msg.shell + " · pid " + msg.pid + " · " + msg.cwd;
          else if (msg.type === "error") term.write("\r\n\x1b[31m" + msg.text + "\x1b[0m\r\n");
          return;
        }
        term.write(new Uint8Array(e.data));
      };
      sock.onclose = function (e) {
        if (ws !== sock) return;
        info.textContent = "closed" + (e.reason ? ": " + e.reason : "");
        term.write("\r\n\x1b[2m[terminal closed" + (e.reason ? ": " + e.reason : "") + "]\x1b[0m\r\n");
        ws = null;
      };
      term.onData(function (data) { send({ type: "input", data: data }); });
      term.onResize(function (size) { send({ type: "resize", cols: size.cols, rows: size.rows }); });
      term.focus();
    }).catch(function (err) { info.textContent = String(err); });
  }

  function close() {
    if (ws) { const s = ws; ws = null; s.close(1000, "closed by the operator"); }
    if (term) { term.dispose(); term = null; fit = null; window.hiveTerminal = null; }
    box.textContent = "";
    pane.hidden = true;
    toggle.classList.remove("on");
  }

  toggle.addEventListener("click", function () { if (pane.hidden) open(); else close(); });
  window.addEventListener("resize", function () { if (fit) fit.fit(); });
  window.addEventListener("pagehide", function () { if (ws) ws.close(1000, "page closed"); });
})();
