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
const GPU_HISTORY = 150; // samples kept per GPU: 5 minutes at the gateway's 2 s

export class Control {
  constructor(root) {
    this.root = root;
    this.section = "models";
    this.gpuHistory = new Map(); // "node/index" → [{at, used, util}]
    this.unfollow = follow("/admin/events?kinds=instance,node,config", (kind, event) => this.event(kind, event));
  }

  close() {
    this.unfollow();
  }

  event(kind, event) {
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
      const ttl = m.ttl_s ? `${Math.round(m.ttl_s)} s idle` : "never";
      return el("tr", {},
        el("th", { scope: "row" }, m.name),
        el("td", { "data-state": m.state }, state),
        el("td", {}, m.node),
        el("td", {}, `${m.in_flight}/${m.slots ?? "∞"}`),
        el("td", {}, String(m.waiting)),
        el("td", {}, ttl),
        el("td", { class: "error" }, m.error ?? m.reason ?? ""),
        buttons);
    });
    body.append(el("table", {},
      el("thead", {}, el("tr", {}, ...["Model", "State", "Node", "In use", "Queued", "TTL", "Last error", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
    if (open) await this.log(body, decodeURIComponent(open));
  }

  async log(body, name) {
    const pre = el("pre", { class: "log", "aria-label": `Engine log of ${name}` });
    const refresh = async () => {
      const data = await api(`/admin/models/${encodeURIComponent(name)}/logs?lines=300`);
      pre.textContent = (data.lines ?? []).join("\n");
      pre.scrollTop = pre.scrollHeight;
    };
    body.append(el("h2", {}, `Engine log: ${name}`), el("button", { type: "button", onclick: refresh }, "Refresh log"), pre);
    await refresh();
  }

  // --- nodes and GPUs -----------------------------------------------------------------
  async nodes(body) {
    const data = await api("/admin/nodes");
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
        ...(gpus.length ? gpus : [el("p", {}, "no GPU: models run on the CPU")])));
    }
  }

  gpu(node, g) {
    const key = `${node}/${g.index}`;
    const history = this.gpuHistory.get(key) ?? [];
    history.push({ at: Date.now(), used: g.memory_used, util: g.utilization });
    while (history.length > GPU_HISTORY) history.shift();
    this.gpuHistory.set(key, history);
    const share = g.memory_total ? g.memory_used / g.memory_total : 0;
    const facts = [
      `${formatBytes(g.memory_used)} of ${formatBytes(g.memory_total)}`,
      g.utilization != null ? `${g.utilization} % busy` : null,
      g.temperature != null ? `${g.temperature} °C` : null,
      g.power != null ? `${g.power} W` : null,
      g.measured ? "measured" : "declared",
    ].filter(Boolean);
    return el("div", { class: "gpu" },
      el("span", {}, `GPU ${g.index} ${g.name ?? ""}`),
      el("meter", { min: "0", max: "1", value: String(share), "aria-label": `GPU ${g.index} memory used` }),
      el("span", {}, facts.join(" · ")),
      this.spark(history));
  }

  spark(history) {
    const canvas = el("canvas", { width: "150", height: "28", class: "spark", "aria-hidden": "true" });
    const ctx = canvas.getContext("2d");
    if (!ctx || history.length < 2) return canvas;
    const top = Math.max(...history.map((h) => h.used ?? 0), 1);
    ctx.strokeStyle = getComputedStyle(document.body).color;
    ctx.beginPath();
    history.forEach((h, i) => {
      const x = (i / (GPU_HISTORY - 1)) * canvas.width;
      const y = canvas.height - ((h.used ?? 0) / top) * (canvas.height - 2) - 1;
      if (i) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
    });
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
    const out = el("pre", { class: "reload-result" });
    const reload = el("button", {
      type: "button",
      onclick: async () => {
        try {
          const applied = await api("/admin/reload", { method: "POST" });
          out.textContent = `reloaded: ${JSON.stringify(applied, null, 2)}`;
        } catch (error) {
          out.textContent = error.message; // the validation errors, file:line: key: what
        }
      },
    }, "Reload config");
    body.append(
      el("p", {}, `file: ${status.config ?? "(none)"} · listen ${status.listen} · state in ${status.state_dir} · up ${formatSeconds(status.uptime_s)} · version ${status.version}`),
      reload, out,
      el("h2", {}, "Slot audit"), el("p", {}, `leaks found now: ${status.slot_audit?.leaks_found?.length ?? 0}, in all: ${status.slot_audit?.leaks_total ?? 0}`),
      el("h2", {}, "Latest events"),
      el("ol", { class: "events" }, ...(status.events ?? []).map((e) => el("li", {}, `${e.at ? new Date(e.at * 1000).toLocaleTimeString() : ""} ${e.subject ?? ""} ${e.kind ?? e.event ?? ""} ${e.detail ?? ""}`))));
  }
}
