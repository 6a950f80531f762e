// What this tab remembers of the answers it streams, so that one cut short by a dropped socket
// or a page reload can be resumed (protocol.md, "Resuming streams"): per conversation, the
// stream's id (null until its first delta) and the highest seq received. In sessionStorage,
// so a reload of this tab finds it and other tabs (which did not ask) do not.

const PREFIX = "gateway.stream.";

/** @returns {{streamId: string|null, seq: number}|null} */
export function recall(conversationId) {
  try {
    const rec = JSON.parse(sessionStorage.getItem(PREFIX + conversationId) || "null");
    if (!rec || typeof rec !== "object") return null;
    return {
      streamId: typeof rec.streamId === "string" ? rec.streamId : null,
      seq: Number.isInteger(rec.seq) ? rec.seq : -1,
    };
  } catch {
    return null;
  }
}

export function remember(conversationId, streamId, seq) {
  try {
    sessionStorage.setItem(PREFIX + conversationId, JSON.stringify({ streamId, seq }));
  } catch { /* storage full or disabled: resuming after a reload will not work, nothing else */ }
}

export function forget(conversationId) {
  try { sessionStorage.removeItem(PREFIX + conversationId); } catch { /* disabled */ }
}

/** Signed out: nothing of this user's streams stays in the tab. */
export function forgetAll() {
  try {
    for (let i = sessionStorage.length - 1; i >= 0; i -= 1) {
      const key = sessionStorage.key(i);
      if (key?.startsWith(PREFIX)) sessionStorage.removeItem(key);
    }
  } catch { /* disabled */ }
}
