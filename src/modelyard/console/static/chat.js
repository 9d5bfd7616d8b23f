// The chat: conversations kept on the gateway, answers streamed as they come, Stop that
// stops the generation upstream, a context meter, and the state of every model live.
import { api, ApiError, errorOf, sseEvents } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { el, clear, formatSeconds } from "./dom.js";

const CONVERSATIONS = "/console/api/conversations";
const RETRIES = 5; // a busy model (429/503) is asked again this many times, as Retry-After says
const EFFORTS = ["", "low", "medium", "high"];

// The gateway's own estimate (routing.TOKEN_METHOD): characters / 3 rounded up, + 4 a message.
export function estimateTokens(messages) {
  let chars = 0;
  for (const m of messages) chars += (m.content ?? "").length;
  return Math.ceil(chars / 3) + 4 * messages.length;
}

export class Chat {
  constructor(root, models, me) {
    this.root = root;
    this.models = models; // the live model list (models.js)
    this.me = me;
    this.conversation = null; // {id, title, model, system, params, messages}
    this.views = []; // one per message shown, in order
    this.running = null; // {abort, message} while an answer streams
    this.lastUsage = null;
    this.build();
    this.models.onChange(() => this.renderPicker());
  }

  build() {
    const newChat = el("button", { type: "button", class: "new", onclick: () => this.open(null) }, "New chat");
    this.search = el("input", {
      type: "search", placeholder: "Search", "aria-label": "Search conversations",
      oninput: () => this.loadList(),
    });
    this.list = el("ul", { class: "conversations", "aria-label": "Conversations" });
    this.side = el("aside", { class: "side" }, newChat, this.search, this.list);

    this.picker = el("select", { id: "model", "aria-label": "Model", onchange: () => this.saveSettings() });
    this.meter = el("meter", { min: "0", max: "1", value: "0", "aria-label": "Context used" });
    this.meterText = el("span", { class: "meter-text" });
    this.system = el("textarea", { rows: "2", "aria-label": "System prompt", placeholder: "System prompt", onchange: () => this.saveSettings() });
    this.temperature = el("input", { type: "number", min: "0", max: "2", step: "0.1", "aria-label": "Temperature", onchange: () => this.saveSettings() });
    this.maxTokens = el("input", { type: "number", min: "1", step: "1", "aria-label": "Max tokens", onchange: () => this.saveSettings() });
    this.effort = el("select", { "aria-label": "Reasoning effort", onchange: () => this.saveSettings() },
      ...EFFORTS.map((e) => el("option", { value: e }, e || "effort: default")));
    const settings = el("details", { class: "settings" }, el("summary", {}, "Settings"),
      this.system, el("div", { class: "row" }, this.temperature, this.maxTokens, this.effort));
    const head = el("div", { class: "chat-head" }, el("label", { for: "model" }, "Model"), this.picker,
      el("span", { class: "meter" }, this.meter, this.meterText), settings);

    this.log = el("ol", { class: "messages", "aria-label": "Messages" });
    this.input = el("textarea", {
      rows: "3", "aria-label": "Message", placeholder: "Message",
      onkeydown: (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.send(); } },
      oninput: () => this.updateMeter(),
    });
    this.sendButton = el("button", { type: "button", class: "send", onclick: () => this.send() }, "Send");
    this.stopButton = el("button", { type: "button", class: "stop", hidden: "", onclick: () => this.stop() }, "Stop");
    this.notice = el("p", { class: "notice", role: "status" });
    const composer = el("div", { class: "composer" }, this.input, this.sendButton, this.stopButton);
    this.main = el("section", { class: "chat" }, head, this.log, this.notice, composer);
    clear(this.root).append(this.side, this.main);
    this.renderPicker();
    this.loadList();
  }

  // --- the model picker, live -----------------------------------------------------------
  renderPicker() {
    const chosen = this.picker.value || this.conversation?.model || "";
    clear(this.picker);
    // Only what chats: not a voice, ears or an embedding model (their cards list endpoints).
    const chats = this.models.all().filter((m) => !m.endpoints || m.endpoints.includes("chat"));
    for (const m of chats) {
      const label = m.tier ? `${m.id} (tier)` : m.policy ? `${m.id} (routed by policy)`
        : m.persona ? `${m.id} (persona: ${m.persona.use})` : `${m.id} — ${this.models.stateText(m)}`;
      this.picker.append(el("option", { value: m.id }, label));
    }
    const ids = chats.map((m) => m.id);
    this.picker.value = ids.includes(chosen) ? chosen : ids[0] ?? "";
    this.showEffort();
    this.updateMeter();
  }

  // --- conversations ------------------------------------------------------------------
  async loadList() {
    const q = this.search.value.trim();
    let data;
    try {
      data = await api(`${CONVERSATIONS}?limit=100${q ? `&q=${encodeURIComponent(q)}` : ""}`);
    } catch (error) {
      return this.say(error.message);
    }
    const items = data.conversations ?? data.data ?? data;
    clear(this.list);
    for (const c of items) {
      const link = el("a", { href: `#/chat/${encodeURIComponent(c.id)}` }, c.title || "(untitled)");
      const rename = el("button", { type: "button", class: "small", "aria-label": `Rename ${c.title}`, onclick: () => this.rename(c) }, "✎");
      const remove = el("button", { type: "button", class: "small", "aria-label": `Delete ${c.title}`, onclick: () => this.remove(c) }, "✕");
      const md = el("a", { class: "small", href: `${CONVERSATIONS}/${encodeURIComponent(c.id)}/export?format=markdown`, "aria-label": `Export ${c.title} as Markdown` }, "md");
      const json = el("a", { class: "small", href: `${CONVERSATIONS}/${encodeURIComponent(c.id)}/export?format=json`, "aria-label": `Export ${c.title} as JSON` }, "json");
      const item = el("li", { class: c.id === this.conversation?.id ? "current" : "" }, link, rename, md, json, remove);
      this.list.append(item);
    }
  }

  async open(id) {
    if (this.running) this.stop();
    if (id === null) {
      this.conversation = null;
      this.views = [];
      clear(this.log);
      this.system.value = "";
      this.temperature.value = "";
      this.maxTokens.value = "";
      this.effort.value = "";
      this.say("");
      this.updateMeter();
      this.loadList();
      this.input.focus();
      return;
    }
    try {
      this.conversation = await api(`${CONVERSATIONS}/${encodeURIComponent(id)}`);
    } catch (error) {
      return this.say(error.message);
    }
    const c = this.conversation;
    c.messages = c.messages ?? [];
    if (c.model) this.picker.value = c.model;
    this.system.value = c.system ?? "";
    this.temperature.value = c.params?.temperature ?? "";
    this.maxTokens.value = c.params?.max_tokens ?? "";
    this.effort.value = c.params?.reasoning_effort ?? "";
    this.showEffort();
    this.showAll(c.messages);
    this.updateMeter();
    this.loadList();
  }

  // A long conversation is drawn newest first, a batch a frame, so the page never freezes:
  // the end (what one reads first) is there at once, older messages come in above it.
  showAll(messages) {
    clear(this.log);
    this.views = [];
    const token = (this.drawing = {});
    const BATCH = 20;
    const views = [];
    let end = messages.length;
    const step = () => {
      if (this.drawing !== token || end <= 0) return;
      const start = Math.max(0, end - BATCH);
      const before = this.log.scrollHeight - this.log.scrollTop;
      const first = this.log.firstChild;
      const made = messages.slice(start, end).map((m) => this.renderMessage(m, false));
      for (const view of made) this.log.insertBefore(view.item, first);
      views.unshift(...made);
      this.views = views;
      if (end === messages.length) this.log.lastElementChild?.scrollIntoView({ block: "end" });
      else this.log.scrollTop = this.log.scrollHeight - before; // keep the reader's place
      end = start;
      if (end > 0) requestAnimationFrame(step);
    };
    step();
  }

  params() {
    const params = {};
    if (this.temperature.value !== "") params.temperature = Number(this.temperature.value);
    if (this.maxTokens.value !== "") params.max_tokens = Number(this.maxTokens.value);
    if (this.effort.value) params.reasoning_effort = this.effort.value;
    return params;
  }

  // The reasoning-effort preset, for the models that take one (and tiers, which may).
  showEffort() {
    const model = this.models.byId(this.picker.value);
    this.effort.hidden = !(model?.reasoning_effort || model?.tier || model?.policy);
    if (this.effort.hidden) this.effort.value = "";
  }

  async saveSettings() {
    this.showEffort();
    this.updateMeter();
    if (!this.conversation) return;
    const patch = { model: this.picker.value, system: this.system.value, params: this.params() };
    try {
      await api(`${CONVERSATIONS}/${encodeURIComponent(this.conversation.id)}`, { method: "PATCH", body: patch });
      Object.assign(this.conversation, patch);
    } catch (error) {
      this.say(error.message);
    }
  }

  async rename(c) {
    const title = prompt("New title", c.title ?? "");
    if (title === null) return;
    await api(`${CONVERSATIONS}/${encodeURIComponent(c.id)}`, { method: "PATCH", body: { title } }).catch((e) => this.say(e.message));
    this.loadList();
  }

  async remove(c) {
    if (!confirm(`Delete "${c.title || "(untitled)"}"?`)) return;
    await api(`${CONVERSATIONS}/${encodeURIComponent(c.id)}`, { method: "DELETE" }).catch((e) => this.say(e.message));
    if (this.conversation?.id === c.id) location.hash = "#/chat";
    this.loadList();
  }

  // --- messages -----------------------------------------------------------------------
  renderMessage(m, append = true) {
    const body = el("div", { class: "body" });
    const thinking = el("details", { class: "thinking", hidden: "" }, el("summary", {}, "Thinking"), el("div", { class: "reasoning" }));
    const meta = el("p", { class: "meta" });
    const tools = el("div", { class: "tools" });
    const item = el("li", { class: `message ${m.role}` }, thinking, body, meta, tools);
    item.dataset.seq = m.seq ?? "";
    const view = { item, body, thinking, meta, tools, message: m };
    this.fill(view);
    if (append) {
      this.log.append(item);
      this.views.push(view);
    }
    return view;
  }

  fill(view) {
    const m = view.message;
    if (m.role === "assistant") renderMarkdown(view.body, m.content ?? "");
    else view.body.textContent = m.content ?? "";
    if (m.reasoning) {
      view.thinking.hidden = false;
      view.thinking.querySelector(".reasoning").textContent = m.reasoning;
    }
    clear(view.meta);
    if (m.role === "assistant") {
      const parts = [];
      if (m.model) parts.push(m.node ? `${m.model} on ${m.node}` : m.model);
      if (m.ttft_s != null) parts.push(`first token ${formatSeconds(m.ttft_s)}`);
      if (m.tokens_per_s != null) parts.push(`${m.tokens_per_s.toFixed(1)} tokens/s`);
      if (m.status && m.status !== "complete") parts.push(m.status === "stopped" ? "stopped" : `${m.status}${m.error ? `: ${m.error}` : ""}`);
      view.meta.append(parts.join(" · "));
      if (m.degraded) view.meta.append(el("span", { class: "degraded" }, ` · degraded: ${m.degraded}`));
      if (m.decision && this.me.admin) view.meta.append(" · ", el("a", { href: `#/control/decisions/${encodeURIComponent(m.decision)}` }, "decision"));
    }
    clear(view.tools);
    if (m.role === "assistant" && !this.running) {
      view.tools.append(el("button", { type: "button", class: "small", onclick: () => this.regenerate(view) }, "Regenerate"));
    }
    if (m.role === "user" && !this.running) {
      view.tools.append(el("button", { type: "button", class: "small", onclick: () => this.edit(view) }, "Edit"));
    }
  }

  async regenerate(view) {
    const messages = this.conversation.messages;
    const at = messages.indexOf(view.message);
    await this.cut(at);
    await this.ask();
  }

  async edit(view) {
    const text = prompt("Edit the message and send it again", view.message.content);
    if (text === null || !text.trim()) return;
    const at = this.conversation.messages.indexOf(view.message);
    await this.cut(at);
    this.input.value = text;
    await this.send();
  }

  // Drops the messages from index `at` on, on the gateway and here.
  async cut(at) {
    const c = this.conversation;
    const from = c.messages[at]?.seq;
    if (from !== undefined) {
      await api(`${CONVERSATIONS}/${encodeURIComponent(c.id)}/messages?from=${from}`, { method: "DELETE" });
    }
    c.messages = c.messages.slice(0, at);
    while (this.log.children.length > at) this.log.lastElementChild.remove();
    this.views = this.views.slice(0, at);
  }

  // --- sending and streaming ---------------------------------------------------------
  async send() {
    const text = this.input.value.trim();
    if (!text || this.running) return;
    if (!this.conversation) {
      const created = await api(CONVERSATIONS, {
        method: "POST",
        body: { title: text.slice(0, 80), model: this.picker.value, system: this.system.value, params: this.params() },
      }).catch((e) => this.say(e.message));
      if (!created) return;
      this.conversation = { ...created, messages: [] };
      history.replaceState(null, "", `#/chat/${encodeURIComponent(created.id)}`);
      this.loadList();
    }
    this.input.value = "";
    const user = { role: "user", content: text };
    this.conversation.messages.push(user);
    this.renderMessage(user);
    await this.ask();
  }

  request() {
    const messages = [];
    if (this.system.value.trim()) messages.push({ role: "system", content: this.system.value });
    for (const m of this.conversation.messages) if (m.role !== "system") messages.push({ role: m.role, content: m.content ?? "" });
    return { model: this.picker.value, messages, stream: true, stream_options: { include_usage: true }, ...this.params() };
  }

  async ask() {
    const answer = { role: "assistant", content: "", reasoning: "", status: "streaming" };
    this.conversation.messages.push(answer);
    const view = this.renderMessage(answer);
    const abort = new AbortController();
    this.running = { abort, view };
    this.sendButton.hidden = true;
    this.stopButton.hidden = false;
    const began = performance.now();
    let first = null;
    let frame = 0;
    // Until the first token: what the model is doing (loading with its progress, or queued).
    const waiting = setInterval(() => { if (first === null) this.waiting(); }, 250);
    try {
      const response = await this.post(abort.signal, view);
      answer.model = response.headers.get("x-modelyard-model");
      answer.node = response.headers.get("x-modelyard-node");
      answer.decision = response.headers.get("x-modelyard-decision");
      answer.degraded = response.headers.get("x-modelyard-degraded");
      const warning = response.headers.get("x-modelyard-context-warning");
      if (warning) this.say(`Context warning: ${warning}`);

      for await (const event of sseEvents(response)) {
        if (event.comment !== undefined) continue; // keep-alive while it waits: shown by the timer
        if (event.data === "[DONE]") break;
        const chunk = JSON.parse(event.data);
        if (chunk.error) throw new ApiError(502, chunk.error.message, chunk.error.code);
        if (chunk.usage) this.lastUsage = chunk.usage;
        if (chunk.model && !answer.model) answer.model = chunk.model;
        const delta = chunk.choices?.[0]?.delta ?? {};
        const text = delta.content ?? "";
        const thought = delta.reasoning_content ?? "";
        if ((text || thought) && first === null) {
          first = performance.now();
          answer.ttft_s = (first - began) / 1000;
          this.say("");
        }
        answer.content += text;
        answer.reasoning += thought;
        if (!frame) {
          frame = requestAnimationFrame(() => {
            frame = 0;
            this.fill(view);
            view.item.scrollIntoView({ block: "end" });
          });
        }
      }
      answer.status = "complete";
      const out = this.lastUsage?.completion_tokens;
      const spent = first === null ? 0 : (performance.now() - first) / 1000;
      if (out > 1 && spent >= 0.05) answer.tokens_per_s = (out - 1) / spent; // not for a burst
    } catch (error) {
      if (abort.signal.aborted) answer.status = "stopped";
      else {
        answer.status = "error";
        answer.error = error.message;
        this.say(error.code === "context_length_exceeded" ? `Refused: ${error.message}` : error.message);
      }
    } finally {
      clearInterval(waiting);
      if (frame) cancelAnimationFrame(frame);
      this.running = null;
      this.sendButton.hidden = false;
      this.stopButton.hidden = true;
      this.fill(view);
      this.updateMeter();
      this.refreshSeqs();
    }
  }

  // POSTs the request; a busy model (429/503 with Retry-After) is asked again, shown waiting.
  async post(signal, view) {
    for (let attempt = 0; ; attempt++) {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "x-modelyard-conversation": this.conversation.id },
        body: JSON.stringify(this.request()),
        signal,
      });
      if (response.ok) return response;
      const error = await errorOf(response);
      if (![429, 503].includes(error.status) || error.retryAfter === null || attempt >= RETRIES) throw error;
      for (let left = Math.ceil(error.retryAfter); left > 0; left--) {
        this.say(`${error.message}: trying again in ${left} s (${attempt + 1}/${RETRIES})`);
        await new Promise((done) => setTimeout(done, 1000));
        if (signal.aborted) throw new DOMException("stopped", "AbortError");
      }
    }
  }

  // While no token has come: the model loading (with its progress) or the request queued.
  waiting() {
    const model = this.models.byId(this.picker.value);
    if (model?.state === "starting") {
      const progress = this.models.progress(model);
      this.say(progress !== null ? `loading… ${Math.floor(progress * 100)} %` : "loading…");
    } else if (model && model.state !== "ready") this.say("waiting for the model…");
  }

  stop() {
    this.running?.abort.abort();
  }

  // The new rows got their seq (and the gateway's own figures) when they were stored: read
  // just those back, for edit/regenerate and the line under the answer.
  async refreshSeqs() {
    const c = this.conversation;
    if (!c) return;
    const known = c.messages.filter((m) => m.seq !== undefined);
    const after = known.length ? known[known.length - 1].seq : 0;
    const fresh = c.messages.slice(known.length);
    try {
      const got = await api(`${CONVERSATIONS}/${encodeURIComponent(c.id)}?after=${after}`);
      (got.messages ?? []).slice(0, fresh.length).forEach((m, i) => {
        const mine = fresh[i];
        mine.seq = m.seq;
        for (const key of ["tokens_out", "tokens_per_s", "ttft_s", "node", "decision", "model"]) mine[key] ??= m[key];
      });
    } catch {
      /* the list stays as streamed */
    }
    for (const view of this.views.slice(-fresh.length || this.views.length)) this.fill(view);
    this.loadList();
  }

  // --- the context meter --------------------------------------------------------------
  updateMeter() {
    const model = this.models.byId(this.picker.value);
    const size = model?.window;
    if (!size) {
      this.meter.hidden = true;
      this.meterText.textContent = "";
      return;
    }
    const messages = this.conversation ? this.request().messages : [];
    const draft = this.input?.value ? [{ content: this.input.value }] : [];
    const estimate = estimateTokens([...messages, ...draft]);
    const used = this.lastUsage ? Math.max(this.lastUsage.prompt_tokens + this.lastUsage.completion_tokens, estimate) : estimate;
    const share = used / size;
    this.meter.hidden = false;
    this.meter.value = Math.min(share, 1);
    this.meter.low = model.context_warn;
    this.meter.high = model.context_refuse;
    this.meter.optimum = 0;
    const state = share > model.context_refuse ? "over" : share > model.context_warn ? "warn" : "ok";
    this.meter.dataset.state = state;
    this.meterText.textContent = `${used} / ${size} tokens (${Math.round(share * 100)} %)${state === "over" ? " — over the limit: the gateway will refuse" : state === "warn" ? " — nearing the limit" : ""}`;
  }

  say(text) {
    this.notice.textContent = text;
  }
}
