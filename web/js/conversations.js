// The conversation sidebar: the person's conversations as the gateway keeps them (pinned
// first, then newest first), search, rename, pin, delete; a drawer on small screens.

import { confirmAction } from "./dialog.js";
import { describeError } from "./errors.js";
import { announce, showToastError } from "./ui.js";

const PAGE = 50;
const SEARCH_DELAY_MS = 250;
const els = {
  sidebar: document.getElementById("sidebar"),
  toggle: document.getElementById("sidebar-toggle"),
  backdrop: document.getElementById("sidebar-backdrop"),
  search: document.getElementById("conversation-search"),
  list: document.getElementById("conversation-list"),
  empty: document.getElementById("conversation-empty"),
  more: document.getElementById("conversation-more"),
};

let conn = null;
let items = [];
let nextCursor = null;
let currentId = null;
let loading = 0; // generation of the newest list request; older answers are dropped
let menuOpenFor = null; // id whose actions row is open: a re-render keeps it open
let renaming = false; // a title is being edited: re-rendering waits until it is done
let renderPending = false;
const hooks = { open: () => {}, deleted: () => {}, changed: () => {} };

/** `open(id)` when one is chosen, `deleted(id)` after one was deleted, `changed(conv)` after
 * a rename or pin. */
export function setHooks(h) { Object.assign(hooks, h); }
export function attach(connection) { conn = connection; }
export const find = (id) => items.find((c) => c.id === id) || null;

export function setCurrent(id) {
  currentId = id;
  for (const li of els.list.children) {
    const on = li.dataset.id === id;
    li.classList.toggle("current", on);
    const open = li.querySelector(".conversation-open");
    if (on) open.setAttribute("aria-current", "page");
    else open.removeAttribute("aria-current");
  }
}

/** Fetch the first page again (with the search in the box). */
export async function refresh() {
  if (!conn?.ready) return;
  const generation = ++loading;
  const query = els.search.value.trim();
  try {
    const page = await conn.rpc("conversation.list", query ? { limit: PAGE, query } : { limit: PAGE });
    if (generation !== loading) return;
    items = page.items || [];
    nextCursor = page.nextCursor || null;
    render();
  } catch (err) {
    if (err.code !== "disconnected") console.warn("could not list conversations", err);
  }
}

async function loadMore() {
  if (!nextCursor || !conn?.ready) return;
  const generation = ++loading;
  const query = els.search.value.trim();
  const params = { limit: PAGE, cursor: nextCursor };
  if (query) params.query = query;
  try {
    const page = await conn.rpc("conversation.list", params);
    if (generation !== loading) return;
    const known = new Set(items.map((c) => c.id));
    items.push(...(page.items || []).filter((c) => !known.has(c.id)));
    nextCursor = page.nextCursor || null;
    render();
  } catch (err) {
    if (err.code !== "disconnected") showToastError(describeError(err));
  }
}

/** Show a conversation this page just made or changed without waiting for the next list. */
export function upsert(conv) {
  const i = items.findIndex((c) => c.id === conv.id);
  if (i >= 0) items[i] = { ...items[i], ...conv };
  else if (!els.search.value.trim()) items.unshift(conv);
  render();
}

export function clear() {
  items = [];
  nextCursor = null;
  els.search.value = "";
  render();
}

const titleOf = (c) => c.title || "New conversation";

function render() {
  if (renaming) {
    renderPending = true;
    return;
  }
  const focused = els.list.contains(document.activeElement) ? document.activeElement : null;
  const refocus = focused?.dataset.testid || (focused?.classList.contains("conversation-menu") && "menu");
  els.list.replaceChildren(...items.map(item));
  const open = menuOpenFor && find(menuOpenFor);
  if (open) {
    const li = els.list.querySelector(`[data-id="${CSS.escape(open.id)}"]`);
    showActions(li, open, li.querySelector(".conversation-menu"));
    const target = refocus === "menu" ? li.querySelector(".conversation-menu") : li.querySelector(`[data-testid="${refocus}"]`);
    if (refocus) target?.focus();
  } else {
    menuOpenFor = null;
  }
  const searching = !!els.search.value.trim();
  els.empty.textContent = searching ? "No conversation matches." : "No conversations yet.";
  els.empty.hidden = items.length > 0;
  els.more.hidden = !nextCursor;
  setCurrent(currentId);
}

function item(c) {
  const li = document.createElement("li");
  li.className = "conversation-item";
  li.dataset.id = c.id;
  li.dataset.testid = "conversation-item";
  if (c.pinned) li.classList.add("pinned");
  const open = document.createElement("button");
  open.type = "button";
  open.className = "conversation-open";
  open.title = titleOf(c);
  if (c.pinned) {
    const pin = document.createElement("span");
    pin.className = "pin-mark";
    pin.setAttribute("aria-label", "Pinned");
    pin.textContent = "📌";
    open.append(pin);
  }
  const title = document.createElement("span");
  title.className = "conversation-name";
  title.textContent = titleOf(c);
  open.append(title);
  open.addEventListener("click", () => {
    closeDrawer();
    hooks.open(c.id);
  });
  const menu = document.createElement("button");
  menu.type = "button";
  menu.className = "conversation-menu btn-tiny";
  menu.textContent = "⋯";
  menu.setAttribute("aria-label", `Actions for ${titleOf(c)}`);
  menu.setAttribute("aria-expanded", "false");
  menu.addEventListener("click", () => toggleActions(li, c, menu));
  li.append(open, menu);
  return li;
}

function action(label, testid, run) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "btn btn-ghost btn-tiny";
  b.dataset.testid = testid;
  b.textContent = label;
  b.addEventListener("click", run);
  return b;
}

function closeActions() {
  menuOpenFor = null;
  for (const other of els.list.querySelectorAll(".conversation-actions")) other.remove();
  for (const m of els.list.querySelectorAll(".conversation-menu")) m.setAttribute("aria-expanded", "false");
}

function toggleActions(li, c, menu) {
  const existing = li.querySelector(".conversation-actions");
  closeActions();
  if (existing) return;
  showActions(li, c, menu);
  li.querySelector(".conversation-actions").firstElementChild.focus();
}

function showActions(li, c, menu) {
  menuOpenFor = c.id;
  const row = document.createElement("div");
  row.className = "conversation-actions";
  row.append(
    action("Rename", "rename", () => startRename(li, c)),
    action(c.pinned ? "Unpin" : "Pin", "pin", () => setPinned(c, !c.pinned)),
    action("Delete", "delete", () => remove(c)),
  );
  li.append(row);
  menu.setAttribute("aria-expanded", "true");
}

function startRename(li, c) {
  closeActions();
  renaming = true;
  const open = li.querySelector(".conversation-open");
  const input = document.createElement("input");
  input.type = "text";
  input.className = "conversation-rename";
  input.dataset.testid = "rename-input";
  input.value = c.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  open.hidden = true;
  open.after(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    input.remove();
    open.hidden = false;
    renaming = false;
    if (renderPending) {
      renderPending = false;
      render();
    }
    if (!save || !title || title === c.title) {
      els.list.querySelector(`[data-id="${CSS.escape(c.id)}"] .conversation-open`)?.focus();
      return;
    }
    try {
      const updated = await conn.rpc("conversation.rename", { conversationId: c.id, title });
      loading++; // a list answer already on its way was read before the rename: drop it
      upsert(updated?.id ? updated : { ...c, title });
      announce(`Renamed to ${title}.`);
      hooks.changed(find(c.id));
    } catch (err) {
      showToastError(describeError(err));
    }
    els.list.querySelector(`[data-id="${CSS.escape(c.id)}"] .conversation-open`)?.focus();
  };
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); finish(true); }
    else if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

async function setPinned(c, pinned) {
  try {
    await conn.rpc("conversation.pin", { conversationId: c.id, pinned });
    announce(pinned ? "Pinned." : "Unpinned.");
    await refresh();
  } catch (err) {
    showToastError(describeError(err));
  }
}

async function remove(c) {
  const ok = await confirmAction({
    heading: "Delete this conversation?",
    body: `“${titleOf(c)}” and all its messages will be deleted for good, on every device.`,
    confirm: "Delete",
  });
  if (!ok) return;
  try {
    await conn.rpc("conversation.delete", { conversationId: c.id });
  } catch (err) {
    if (err.code !== -32030) {
      showToastError(describeError(err));
      return;
    }
  }
  loading++; // a list answer already on its way was read before the delete: drop it
  items = items.filter((x) => x.id !== c.id);
  render();
  announce("Conversation deleted.");
  hooks.deleted(c.id);
}

// ---------------------------------------------------------------------------
// Search and the drawer

let searchTimer = 0;
els.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(refresh, SEARCH_DELAY_MS);
});
els.search.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && els.search.value) {
    ev.preventDefault();
    els.search.value = "";
    refresh();
  }
});
els.more.addEventListener("click", loadMore);

export function openDrawer() {
  els.sidebar.classList.add("open");
  els.backdrop.hidden = false;
  els.toggle.setAttribute("aria-expanded", "true");
  (els.list.querySelector(".current .conversation-open") || els.search).focus();
}

export function closeDrawer() {
  if (!els.sidebar.classList.contains("open")) return;
  els.sidebar.classList.remove("open");
  els.backdrop.hidden = true;
  els.toggle.setAttribute("aria-expanded", "false");
}

els.toggle.addEventListener("click", () => {
  if (els.sidebar.classList.contains("open")) closeDrawer();
  else openDrawer();
});
els.backdrop.addEventListener("click", closeDrawer);
// Esc closes the open drawer wherever the focus is: the list re-renders
// after a refresh, and a focused item it replaces leaves the focus on the
// body, outside the drawer. Handlers that use Esc themselves (clearing the
// search, cancelling a rename) mark the event handled first.
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !ev.defaultPrevented && els.sidebar.classList.contains("open")) {
    closeDrawer();
    els.toggle.focus();
  }
});
