// Talking to the gateway: JSON calls, and the Server-Sent Events of a streamed answer.
// Every call rides the session cookie (same origin); no key is ever kept in the page.

export class ApiError extends Error {
  constructor(status, message, code = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, from the Retry-After header
  }
}

export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    message = body?.error?.message ?? message;
    code = body?.error?.code ?? null;
  } catch {
    /* not JSON: keep the status line */
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, message, code, Number.isFinite(retry) && retry > 0 ? retry : null);
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// The events of an SSE body, as {data} for `data:` lines and {comment} for `:` lines.
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith(":")) yield { comment: line.slice(1).trim() };
      }
      if (data.length) yield { data: data.join("\n") };
    }
  }
}

// A live feed from an SSE endpoint that comes back by itself after the gateway restarts.
export function follow(path, onEvent, onState = () => {}) {
  let source = null;
  let closed = false;
  const open = () => {
    if (closed) return;
    source = new EventSource(path, { withCredentials: true });
    source.onopen = () => onState("live");
    source.onerror = () => {
      onState("reconnecting");
      // EventSource retries by itself; a refused stream (401/403) closes it for good.
      if (source.readyState === EventSource.CLOSED) setTimeout(open, 3000);
    };
    for (const kind of ["instance", "node", "config", "request", "sample", "lost"]) {
      source.addEventListener(kind, (e) => onEvent(kind, JSON.parse(e.data || "{}")));
    }
  };
  open();
  return () => {
    closed = true;
    source?.close();
  };
}
