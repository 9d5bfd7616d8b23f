// Every model's live state: /v1/models once, then the gateway's instance events as they come
// (no polling); after a restart the feed comes back by itself and the list is read again.
import { api, follow } from "./api.js";

export class Models {
  constructor() {
    this.cards = [];
    this.starts = new Map(); // model → {at, expected} of a start in progress
    this.listeners = [];
    this.feed = "connecting";
  }

  async load() {
    const data = await api("/v1/models");
    this.cards = data.data ?? [];
    this.emit();
  }

  follow() {
    return follow("/console/api/models/events", (kind, event) => this.event(kind, event), (state) => {
      const was = this.feed;
      this.feed = state;
      // Back after a break (a gateway restart): read the list again; not on the first open.
      if (state === "live" && was === "reconnecting") this.load().catch(() => {});
      this.emit();
    });
  }

  event(kind, event) {
    if (kind === "lost") return this.load().catch(() => {});
    if (kind !== "instance") return;
    const card = this.byId(event.model);
    if (!card) return;
    card.state = event.state;
    if (event.event === "starting") this.starts.set(event.model, { at: Date.now(), expected: event.seconds });
    if (event.state !== "starting") this.starts.delete(event.model);
    // While something loads, its progress moves on its own: redraw twice a second.
    if (this.starts.size && !this.ticker) this.ticker = setInterval(() => this.emit(), 500);
    if (!this.starts.size && this.ticker) this.ticker = clearInterval(this.ticker);
    if (event.event === "failed" || event.event === "crashed") card.error = event.detail;
    if (event.state === "ready") card.error = null;
    this.emit();
  }

  all() {
    return this.cards;
  }

  byId(id) {
    return this.cards.find((m) => m.id === id || (m.aliases ?? []).includes(id));
  }

  // Share of a start done, from the load time the gateway expects (its past loads).
  progress(card) {
    const start = this.starts.get(card.id);
    if (start?.expected) return Math.min(0.99, (Date.now() - start.at) / 1000 / start.expected);
    return card.progress ?? null;
  }

  stateText(card) {
    if (card.state === "starting") {
      const p = this.progress(card);
      return p === null ? "starting…" : `loading… ${Math.floor(p * 100)} %`;
    }
    return card.state ?? "";
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  emit() {
    for (const listener of this.listeners) listener();
  }
}
