// The console's entry: who is signed in, the sections they may see, and the address bar as
// the router (#/chat/ID, #/control/SECTION/ARG). Nothing here holds a key: the gateway's
// session cookie (HttpOnly) is the only credential, and every API checks it again.
import { api } from "./api.js";
import { el, clear } from "./dom.js";
import { Models } from "./models.js";
import { Chat } from "./chat.js";

const root = document.getElementById("app");
const nav = document.getElementById("nav");
let me = null;
let models = null;
let chat = null;
let control = null;

function theme() {
  const saved = localStorage.getItem("modelyard-theme"); // a preference, not a secret
  if (saved) document.documentElement.dataset.theme = saved;
  document.getElementById("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    document.documentElement.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("modelyard-theme", document.documentElement.dataset.theme);
  });
}

async function whoami() {
  try {
    return await api("/console/me");
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

function signIn(message = "") {
  clear(nav);
  const key = el("input", { type: "password", id: "key", autocomplete: "current-password", required: true });
  const said = el("p", { class: "notice", role: "alert" }, message);
  const form = el("form", { class: "signin" },
    el("h1", {}, "Sign in"),
    el("label", { for: "key" }, "API key"), key,
    el("button", { type: "submit" }, "Sign in"), said);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/console/login", { method: "POST", body: { key: key.value } });
      key.value = "";
      boot();
    } catch (error) {
      said.textContent = error.message;
    }
  });
  clear(root).append(form);
  key.focus();
}

async function signOut() {
  await api("/console/logout", { method: "POST" }).catch(() => {});
  location.hash = "";
  location.reload();
}

function drawNav() {
  clear(nav).append(el("a", { href: "#/chat" }, "Chat"));
  if (me.admin) nav.append(el("a", { href: "#/control/models" }, "Control"));
  if (!me.open) nav.append(el("button", { type: "button", class: "link", onclick: signOut }, `Sign out (${me.key})`));
}

let Control = null; // control.js, loaded only for an admin who opens it

async function route() {
  const [, section = "chat", arg, extra] = location.hash.split("/");
  const current = (name) => nav.querySelectorAll("a").forEach((a) => a.setAttribute("aria-current", a.hash.startsWith(`#/${name}`) ? "page" : "false"));
  if (section === "control" && me.admin) {
    current("control");
    chat = null;
    Control ??= (await import("./control.js")).Control;
    control ??= new Control(root);
    control.show(arg, extra);
    return;
  }
  current("chat");
  control?.close();
  control = null;
  if (!chat) chat = new Chat(root, models, me);
  const id = section === "chat" && arg ? decodeURIComponent(arg) : null;
  if ((chat.conversation?.id ?? null) !== id) chat.open(id);
}

async function boot() {
  let who;
  try {
    who = await whoami();
  } catch {
    clear(root).append(el("p", { class: "notice", role: "status" }, "The gateway does not answer; trying again…"));
    setTimeout(boot, 3000);
    return;
  }
  if (!who) return signIn();
  me = who;
  models = new Models();
  await models.load();
  models.follow();
  drawNav();
  chat = null;
  control = null;
  window.onhashchange = route;
  route();
}

theme();
boot();
