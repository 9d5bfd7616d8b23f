// Control (admin keys only; every call below is refused to a user key by the gateway too):
// models with start/stop/restart and their engine log, nodes with their modes and GPUs,
// the request log, routing decisions with their trail, and a route-explain form.
import { api, follow } from "./api.js";
import { el, clear, formatBytes, formatSeconds, ago } from "./dom.js";

const SECTIONS = [
  ["models", "Models"],
  ["nodes", "Nodes"],
  ["requests", "Requests"],
  ["decisions", "Decisions"],
  ["explain", "Route explain"],
  ["config", "Config"],
];
// "GPU 0: 3.1 GiB, GPU 1: 3.1 GiB" from a model's need (how it was worked out as a tooltip).
function need(n) {
  if (!n) return "—";
  const parts = Object.entries(n.per_gpu ?? {}).map(([gpu, bytes]) => `GPU ${gpu}: ${bytes ? formatBytes(bytes) : "?"}`);
  return el("span", { title: n.how ?? "" }, parts.length ? parts.join(", ") : "CPU");
}

const GPU_HISTORY = 150; // samples kept per GPU: 5 minutes at the gateway's 2 s

export class Control {
  constructor(root) {
    this.root = root;
    this.section = "models";
    this.gpuHistory = new Map(); // "node/index" → [{at, used, util}]
    this.unfollow = follow("/admin/events?kinds=instance,node,config,sample", (kind, event) => this.event(kind, event));
  }

  close() {
    this.unfollow();
  }

  event(kind, event) {
    if (kind === "sample") return this.sample(event); // the Nodes page's readings, in place
    if (kind === "lost" || (kind === "instance" && this.section === "models") || (kind === "node" && this.section === "nodes") || kind === "config") {
      clearTimeout(this.pending);
      this.pending = setTimeout(() => this.show(this.section, this.arg, true), 150); // a burst of events: one redraw
    }
  }

  async show(section, arg, quiet = false) {
    this.section = SECTIONS.some(([s]) => s === section) ? section : "models";
    this.arg = arg;
    const tabs = el("nav", { class: "tabs", "aria-label": "Control" },
      ...SECTIONS.map(([s, label]) => el("a", { href: `#/control/${s}`, "aria-current": s === this.section ? "page" : false }, label)));
    const body = el("section", { class: "control-body" });
    this.notice = el("p", { class: "notice", role: "status" });
    if (!quiet) clear(this.root).append(tabs, this.notice, body);
    else {
      const old = this.root.querySelector(".control-body");
      if (!old) return this.show(section, arg);
      clear(this.root).append(tabs, this.notice, body);
    }
    try {
      await this[this.section](body, arg);
    } catch (error) {
      this.say(error.message);
    }
  }

  say(text) {
    if (this.notice) this.notice.textContent = text;
  }

  async act(label, call) {
    this.say(`${label}…`);
    try {
      await call();
      this.say(`${label}: done`);
    } catch (error) {
      this.say(`${label}: ${error.message}`);
    }
  }

  // --- models -------------------------------------------------------------------------
  async models(body, open) {
    const data = await api("/admin/models");
    const rows = data.models.map((m) => {
      const name = encodeURIComponent(m.name);
      const buttons = el("td", { class: "actions" },
        el("button", { type: "button", onclick: () => this.act(`start ${m.name}`, () => api(`/admin/models/${name}/start`, { method: "POST" })) }, "Start"),
        el("button", { type: "button", onclick: () => this.act(`stop ${m.name}`, () => api(`/admin/models/${name}/stop`, { method: "POST" })) }, "Stop"),
        el("button", { type: "button", onclick: () => this.act(`restart ${m.name}`, () => api(`/admin/models/${name}/restart`, { method: "POST" })) }, "Restart"),
        el("a", { href: `#/control/models/${name}` }, "Log"));
      const state = m.state === "starting" && m.progress != null ? `loading… ${Math.floor(m.progress * 100)} %` : m.state;
      const ttl = !m.ttl_s || m.pinned ? "never" : m.ttl_left_s != null ? `${Math.round(m.ttl_left_s)} s left` : `${Math.round(m.ttl_s)} s idle`;
      return el("tr", {},
        el("th", { scope: "row" }, m.name),
        el("td", { "data-state": m.state }, state),
        el("td", {}, m.node),
        el("td", {}, need(m.need)),
        el("td", {}, `${m.in_flight}/${m.slots ?? "∞"}`),
        el("td", {}, String(m.waiting)),
        el("td", {}, ttl),
        el("td", { class: "why" }, m.reason ?? ""),
        el("td", { class: "error" }, m.error ?? ""),
        buttons);
    });
    body.append(el("table", {},
      el("thead", {}, el("tr", {}, ...["Model", "State", "Node", "GPUs and memory", "In use", "Queued", "Stops in", "Why", "Last error", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
    this.log(body, open ? decodeURIComponent(open) : null); // no log asked: closes one open
  }

  // The engine log of `name`, followed live (GET …/logs?follow=1, Server-Sent Events): the
  // last lines, then each new one, through the model's restarts. The view outlives the
  // models table's redraws (they move it into the new table's page: no second stream) and
  // closes its stream when the address leaves it, or when called with no name.
  log(body, name) {
    const kept = this.logView;
    if (kept && kept.name === name) {
      body.append(kept.box);
      kept.restore();
      return;
    }
    kept?.close();
    if (!name) return;
    const KEEP = 2000; // lines kept on the page
    const url = `/admin/models/${encodeURIComponent(name)}/logs?follow=1&lines=300`;
    const here = location.hash;
    const pre = el("pre", { class: "log", tabindex: "0", "aria-label": `Engine log of ${name}` });
    const state = el("span", { class: "log-state", role: "status" });
    const toggle = el("button", { type: "button", onclick: () => (source ? pause("paused") : follow()) }, "Pause");
    const view = {
      name,
      box: el("div", { class: "log-view" }, el("h2", {}, `Engine log: ${name}`), el("p", {}, toggle, " ", state), pre),
      stick: true, // the reader is at the bottom: new lines scroll into view
      top: 0,
    };
    let source = null;
    let pending = [];
    let timer = null;
    const flush = () => {
      timer = null;
      const lines = document.createDocumentFragment();
      for (const [text, lost] of pending) lines.append(lost ? el("span", { class: "log-lost" }, `${text}\n`) : `${text}\n`);
      pending = [];
      pre.append(lines);
      while (pre.childNodes.length > KEEP) pre.firstChild.remove();
      if (view.stick && pre.isConnected) pre.scrollTop = pre.scrollHeight;
    };
    const add = (text, lost = false) => {
      pending.push([text, lost]);
      if (pending.length > KEEP) pending.splice(0, pending.length - KEEP);
      timer ??= setTimeout(flush, 50); // a burst of lines: one change of the page
    };
    const follow = () => {
      source = new EventSource(url, { withCredentials: true });
      toggle.textContent = "Pause";
      state.textContent = "connecting…";
      source.onopen = () => {
        // Each (re)connection begins with the last lines again: show them afresh.
        pending = [];
        pre.replaceChildren();
        state.textContent = "following";
      };
      source.onmessage = (e) => add(e.data);
      source.addEventListener("lost", (e) => add(`[… ${e.data} lines skipped: this page fell behind]`, true));
      source.onerror = () => {
        // EventSource reconnects by itself after a stream ends; a refusal closes it for good.
        if (source?.readyState === EventSource.CLOSED) pause("the log could not be followed: Follow to try again");
        else state.textContent = "reconnecting…";
      };
    };
    const pause = (why) => {
      source?.close();
      source = null;
      toggle.textContent = "Follow";
      state.textContent = why;
    };
    pre.addEventListener("scroll", () => {
      if (!pre.isConnected) return; // moved between pages by a redraw: keep what was
      view.stick = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
      view.top = pre.scrollTop;
    });
    view.restore = () => {
      pre.scrollTop = view.stick ? pre.scrollHeight : view.top;
    };
    const left = () => {
      if (location.hash !== here) view.close();
    };
    view.close = () => {
      source?.close();
      source = null;
      clearTimeout(timer);
      window.removeEventListener("hashchange", left);
      if (this.logView === view) this.logView = null;
    };
    window.addEventListener("hashchange", left);
    this.logView = view;
    body.append(view.box);
    follow();
  }

  // --- nodes and GPUs -----------------------------------------------------------------
  // Each GPU's and machine's readings of the last 5 minutes are kept in a ring, seeded by
  // the first /admin/nodes read and fed by `sample` events (every 2 s); a sample updates
  // the numbers and charts in place (a rebuilt page would take the focus from a button).
  async nodes(body) {
    const data = await api("/admin/nodes");
    this.machineHistory ??= new Map(); // node → [{at, cpu, cpus, load1, total, available}]
    this.live = new Map(); // "node" or "node/index" → redraws that part from its ring
    for (const node of data.nodes) {
      const modes = Object.keys(node.modes ?? {}).map((mode) =>
        el("button", {
          type: "button", "aria-pressed": mode === node.mode ? "true" : "false",
          onclick: () => this.act(`mode ${node.name} → ${mode}`, () => api(`/admin/nodes/${encodeURIComponent(node.name)}/mode`, { method: "PUT", body: { mode } })),
        }, mode));
      const gpus = (node.gpus ?? []).map((g) => this.gpu(node.name, g));
      body.append(el("article", { class: "node" },
        el("h2", {}, node.name, " ", el("span", { class: node.reachable ? "ok" : "bad" }, node.reachable ? "reachable" : `unreachable${node.error ? `: ${node.error}` : ""}`)),
        el("p", {}, `mode: ${node.mode} (${node.kind})`, node.last_seen ? ` · seen ${ago(node.last_seen)}` : ""),
        el("div", { class: "modes", role: "group", "aria-label": `Modes of ${node.name}` }, ...modes),
        this.machine(node),
        ...(gpus.length ? gpus : [el("p", {}, "no GPU: models run on the CPU")])));
    }
  }

  // A `sample` event: every node's readings now, into the rings; on the Nodes page, the
  // numbers and charts shown are redrawn where they are.
  sample(event) {
    this.machineHistory ??= new Map();
    for (const node of event.nodes ?? []) {
      const m = node.machine ?? {};
      this.remember(this.machineHistory, node.name, { at: Date.now(), cpu: m.cpu_percent, cpus: m.cpus, load1: m.load1, total: m.memory_total, available: m.memory_available });
      for (const g of node.gpus ?? []) {
        this.remember(this.gpuHistory, `${node.name}/${g.index}`, { at: Date.now(), used: g.memory_used, total: g.memory_total, util: g.utilization, temp: g.temperature, power: g.power });
      }
    }
    if (this.section !== "nodes" || !this.live) return;
    for (const [key, redraw] of this.live) {
      if (this.root.contains(redraw.part)) redraw();
      else this.live.delete(key); // a page left or rebuilt
    }
  }

  // Appends a reading to the ring of `key` (or seeds it: `seed`, only while it is empty);
  // readings older than 5 minutes go.
  remember(rings, key, point, seed = false) {
    const ring = rings.get(key) ?? [];
    rings.set(key, ring);
    if (seed && ring.length) return ring;
    ring.push(point);
    while (ring.length > GPU_HISTORY || (ring.length && ring[0].at < point.at - 300_000)) ring.shift();
    return ring;
  }

  machine(node) {
    const m = node.machine ?? {};
    const ring = this.remember(this.machineHistory, node.name, { at: Date.now(), cpu: m.cpu_percent, cpus: m.cpus, load1: m.load1, total: m.memory_total, available: m.memory_available }, true);
    const cpu = el("span", { class: "cpu" });
    const ram = el("span", { class: "ram" });
    const cpuChart = this.spark();
    const ramChart = this.spark();
    const part = el("div", { class: "gpu machine", role: "group", "aria-label": `Machine ${node.name}` },
      el("span", {}, "Machine"), cpu, cpuChart, ram, ramChart);
    const redraw = () => {
      const now = ring.at(-1) ?? {};
      const load = now.load1 != null ? ` · load ${now.load1.toFixed(2)}` : "";
      const cpus = now.cpus != null ? ` of ${now.cpus} CPUs` : "";
      cpu.textContent = `CPU ${now.cpu != null ? `${Math.round(now.cpu)} %` : "—"}${cpus}${load}`;
      ram.textContent = now.total != null && now.available != null
        ? `RAM ${formatBytes(now.total - now.available)} of ${formatBytes(now.total)} used`
        : "RAM —";
      part.dataset.at = String(now.at ?? "");
      this.spark(ring, (p) => p.cpu, () => 100, cpuChart);
      this.spark(ring, (p) => (p.total != null && p.available != null ? p.total - p.available : null), (p) => p.total, ramChart);
    };
    redraw.part = part;
    redraw();
    this.live.set(node.name, redraw);
    return part;
  }

  gpu(node, g) {
    const key = `${node}/${g.index}`;
    const ring = this.remember(this.gpuHistory, key, { at: Date.now(), used: g.memory_used, total: g.memory_total, util: g.utilization, temp: g.temperature, power: g.power }, true);
    const meter = el("meter", { min: "0", max: "1", "aria-label": `GPU ${g.index} memory used` });
    const facts = el("span", { class: "gpu-facts" });
    const memory = this.spark();
    const busy = this.spark();
    const part = el("div", { class: "gpu" },
      el("span", {}, `GPU ${g.index} ${g.name ?? ""}`), meter, facts,
      el("span", {}, "memory"), memory, el("span", {}, "busy"), busy);
    const redraw = () => {
      const now = ring.at(-1) ?? {};
      meter.value = now.total ? (now.used ?? 0) / now.total : 0;
      facts.textContent = [
        `${formatBytes(now.used)} of ${formatBytes(now.total)}`,
        now.util != null ? `${now.util} % busy` : null,
        now.temp != null ? `${now.temp} °C` : null,
        now.power != null ? `${Math.round(now.power)} W` : null,
        g.measured ? "measured" : "declared",
      ].filter(Boolean).join(" · ");
      part.dataset.at = String(now.at ?? "");
      this.spark(ring, (p) => p.used, (p) => p.total, memory);
      this.spark(ring, (p) => p.util, () => 100, busy);
    };
    redraw.part = part;
    redraw();
    this.live.set(key, redraw);
    return part;
  }

  // A small line chart of the last 5 minutes (newest on the right) of `value` of each
  // reading against `top` (its full scale), drawn into `canvas` (a new one if none); a
  // missing reading or a gap of over 10 s breaks the line. The numbers are in the text
  // beside it: the chart is hidden from screen readers.
  spark(ring = [], value = () => null, top = () => null, canvas = null) {
    canvas ??= el("canvas", { width: "150", height: "28", class: "spark", "aria-hidden": "true" });
    const ctx = canvas.getContext("2d");
    if (!ctx) return canvas;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const now = Date.now();
    const style = getComputedStyle(document.body);
    ctx.strokeStyle = style.color;
    ctx.globalAlpha = 0.25;
    ctx.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
    ctx.globalAlpha = 1;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let last = null;
    for (const p of ring) {
      const v = value(p);
      const full = top(p);
      if (v == null || !full) {
        last = null;
        continue;
      }
      const x = 2 + (canvas.width - 5) * (1 - (now - p.at) / 300_000); // inside the frame
      const y = canvas.height - Math.min(Math.max(v / full, 0), 1) * (canvas.height - 4) - 2;
      if (last != null && p.at - last < 10_000) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      ctx.rect(x - 0.5, y - 0.5, 1, 1); // a lone reading still shows
      ctx.moveTo(x, y);
      last = p.at;
    }
    ctx.stroke();
    return canvas;
  }

  // --- the request log ----------------------------------------------------------------
  async requests(body) {
    const form = el("form", { class: "filters", role: "search" });
    const model = el("input", { name: "model", placeholder: "model", "aria-label": "Filter by model" });
    const status = el("input", { name: "status", placeholder: "status", "aria-label": "Filter by status", size: "5" });
    const table = el("div");
    const load = async () => {
      const params = new URLSearchParams({ limit: "200" });
      if (model.value) params.set("model", model.value);
      if (status.value) params.set("status", status.value);
      const data = await api(`/admin/requests?${params}`);
      const rows = (data.requests ?? []).map((r) => el("tr", {},
        el("td", {}, new Date(r.at * 1000).toLocaleTimeString()),
        el("td", {}, r.key ?? ""),
        el("td", {}, r.endpoint),
        el("td", {}, r.asked),
        el("td", {}, r.model ?? ""),
        el("td", {}, String(r.status)),
        el("td", {}, formatSeconds(r.ttft_s)),
        el("td", {}, formatSeconds(r.duration_s)),
        el("td", {}, r.tokens_out ?? ""),
        el("td", {}, r.decision ? el("a", { href: `#/control/decisions/${encodeURIComponent(r.decision)}` }, "trail") : ""),
        el("td", { class: "error" }, r.error ?? "")));
      clear(table).append(el("table", {},
        el("thead", {}, el("tr", {}, ...["At", "Key", "Endpoint", "Asked", "Model", "Status", "TTFT", "Took", "Tokens", "", "Error"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows)));
    };
    form.append(model, status, el("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (e) => { e.preventDefault(); load().catch((err) => this.say(err.message)); });
    body.append(form, table);
    await load();
  }

  // --- decisions ----------------------------------------------------------------------
  async decisions(body, id) {
    if (id) {
      const d = await api(`/admin/decisions/${encodeURIComponent(decodeURIComponent(id))}`);
      body.append(this.trail(d));
      return;
    }
    const data = await api("/admin/decisions?limit=100");
    const rows = (data.decisions ?? []).map((d) => el("tr", {},
      el("td", {}, el("a", { href: `#/control/decisions/${encodeURIComponent(d.id)}` }, d.id)),
      el("td", {}, d.asked ?? ""),
      el("td", {}, d.rule ?? ""),
      el("td", {}, d.served_by ?? d.model ?? "—"),
      el("td", {}, String(d.status ?? "")),
      el("td", {}, d.degraded ?? "")));
    body.append(el("table", {},
      el("thead", {}, el("tr", {}, ...["Decision", "Asked", "Rule", "Served by", "Status", "Degraded"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
  }

  trail(d) {
    const steps = (d.trail ?? []).map((s) => el("li", { class: s.ok ? "ok" : "skipped" }, `${s.kind} ${s.name}: ${s.why}`));
    const hops = (d.hops ?? []).map((h) => el("li", {}, `${h.model}: ${h.status} ${h.why ?? ""}`));
    return el("article", { class: "trail" },
      el("h2", {}, `Decision ${d.id ?? ""}`),
      el("p", {}, `asked ${d.asked} · about ${d.tokens} tokens · ${d.rule ? `rule ${d.rule} · ` : ""}→ ${d.model ?? d.served_by ?? "nothing"}`),
      el("ol", { "aria-label": "Trail" }, ...steps),
      hops.length ? el("div", {}, el("h3", {}, "Hops"), el("ol", {}, ...hops)) : "",
      d.degraded ? el("p", { class: "degraded" }, `degraded: ${d.degraded}`) : "");
  }

  // --- route explain ------------------------------------------------------------------
  async explain(body) {
    const model = el("input", { value: "auto", "aria-label": "Model asked for" });
    const text = el("textarea", { rows: "4", "aria-label": "Prompt", placeholder: "Prompt" });
    const headers = el("textarea", { rows: "2", "aria-label": "Headers", placeholder: "Header: value, one per line" });
    const out = el("div", { class: "explained" });
    const form = el("form", {}, model, text, headers, el("button", { type: "submit" }, "Explain"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const sent = {};
      for (const line of headers.value.split("\n")) {
        const cut = line.indexOf(":");
        if (cut > 0) sent[line.slice(0, cut).trim()] = line.slice(cut + 1).trim();
      }
      try {
        const d = await api("/admin/route/explain", {
          method: "POST",
          body: { request: { model: model.value, messages: [{ role: "user", content: text.value }] }, headers: sent },
        });
        clear(out).append(this.trail(d));
      } catch (error) {
        clear(out).append(el("p", { class: "error" }, error.message));
      }
    });
    body.append(el("p", {}, "The decision a request would get now, without sending it."), form, out);
  }

  // --- config -------------------------------------------------------------------------
  async config(body) {
    const status = await api("/admin/status");
    const file = await api("/admin/config").catch((error) => ({ path: status.config, text: "", error: error.message }));
    const out = el("pre", { class: "reload-result", role: "status" });
    const lines = (file.text ?? "").split("\n");
    const listing = el("ol", { class: "config-text", "aria-label": `Config file ${file.path ?? ""}` },
      ...lines.map((line) => el("li", {}, el("code", {}, line || " "))));
    // Marks the lines a failed reload names ("FILE:LINE: key: what is wrong").
    const mark = (message) => {
      for (const li of listing.children) li.classList.remove("bad");
      for (const found of message.matchAll(/:(\d+): ([^\n]*)/g)) {
        const li = listing.children[Number(found[1]) - 1];
        if (!li) continue;
        li.classList.add("bad");
        li.title = found[2];
        li.append(el("span", { class: "why-bad" }, ` ← ${found[2]}`));
      }
    };
    const reload = el("button", {
      type: "button",
      onclick: async () => {
        try {
          const applied = await api("/admin/reload", { method: "POST" });
          out.textContent = `reloaded: added ${applied.added?.join(", ") || "none"}; changed ${applied.changed?.join(", ") || "none"}; removed ${applied.removed?.join(", ") || "none"}`;
          this.show("config");
        } catch (error) {
          out.textContent = error.message; // each error with its file, line and key
          mark(error.message);
        }
      },
    }, "Reload config");
    body.append(
      el("p", {}, `listen ${status.listen} · state in ${status.state_dir} · up ${formatSeconds(status.uptime_s)} · version ${status.version}`),
      el("h2", {}, file.path ?? "(no config file)"),
      file.error ? el("p", { class: "error" }, file.error) : listing,
      reload, out,
      el("h2", {}, "Slot audit"), el("p", {}, `leaks found now: ${status.slot_audit?.leaks_found?.length ?? 0}, in all: ${status.slot_audit?.leaks_total ?? 0}`),
      el("h2", {}, "Latest events"),
      el("ol", { class: "events" }, ...(status.events ?? []).map((e) => el("li", {}, `${e.at ? new Date(e.at * 1000).toLocaleTimeString() : ""} ${e.model ?? ""} ${e.event ?? ""} ${e.detail ?? ""}`))));
  }
}
