// mimirlite chat page. No framework, no build step. Text from models and peers is only ever set with
// textContent (never innerHTML): whatever they send stays text.
"use strict";

(() => {
  const KEY_STORE = "mimirlite.apiKey";
  const REFRESH_MS = 3000; // the node panel and the model picker
  const $ = (id) => document.getElementById(id);

  const picker = $("model");
  const transcript = $("transcript");
  const empty = $("empty");
  const banner = $("banner");
  const composer = $("composer");
  const prompt = $("prompt");
  const sendButton = $("send");
  const stopButton = $("stop");
  const nodeList = $("nodes");
  const nodeCount = $("node-count");
  const nodesStatus = $("nodes-status");
  const keyOverlay = $("key-overlay");
  const keyForm = $("key-form");
  const keyInput = $("key");
  const keyError = $("key-error");

  let conversation = []; // the messages sent with each turn
  let controller = null; // the answer streaming now
  let keyPrompt = null; // the pending "give me the key" promise, shared by every call that got 401
  let keyGiven = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // What went wrong, for people: fetch() says "Failed to fetch" / "network error" (a TypeError) when the
  // connection to the gateway failed.
  function describe(error) {
    if (error instanceof TypeError) return `the connection to the gateway failed (${error.message})`;
    return error.message || String(error);
  }

  function showBanner(text) {
    banner.textContent = text;
    banner.hidden = !text;
  }

  // ---- the API key ----

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return "";
    }
  }

  function askKey(refused) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve) => {
        keyGiven = resolve;
      });
      keyError.textContent = refused ? "The gateway refused that key." : "";
      keyError.hidden = !refused;
      keyInput.value = "";
      keyOverlay.hidden = false;
      keyInput.focus();
    }
    return keyPrompt;
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    try {
      sessionStorage.setItem(KEY_STORE, key);
    } catch {
      // storage refused (private mode...): the key is asked again after a reload
    }
    keyInput.value = "";
    keyOverlay.hidden = true;
    const resolve = keyGiven;
    keyPrompt = keyGiven = null;
    resolve();
  });

  // A fetch to the gateway's API with the key; on 401 the key is asked (once for all callers), then
  // the call is made again.
  async function api(path, options = {}) {
    for (;;) {
      const key = storedKey();
      const headers = new Headers(options.headers || {});
      if (key) headers.set("Authorization", `Bearer ${key}`);
      const response = await fetch(path, { ...options, headers, cache: "no-store" });
      if (response.status !== 401) return response;
      await response.body?.cancel();
      if (storedKey() !== key) continue; // another key was given meanwhile: try that one
      if (key) {
        try {
          sessionStorage.removeItem(KEY_STORE);
        } catch {
          // nothing stored
        }
      }
      await askKey(Boolean(key));
      if (options.signal?.aborted) throw new DOMException("stopped", "AbortError");
    }
  }

  // The error message an HTTP error answer carries (OpenAI's or Ollama's shape), else its status.
  async function errorOf(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      const error = body && body.error;
      if (typeof error === "string") return `${error} (HTTP ${response.status})`;
      if (error && typeof error.message === "string") return `${error.message} (HTTP ${response.status})`;
    } catch {
      // not JSON
    }
    return `The gateway answered HTTP ${response.status} ${response.statusText}`.trim();
  }

  // ---- models and nodes ----

  function fillPicker(ids) {
    const current = [...picker.options].filter((o) => !o.disabled).map((o) => o.value);
    if (current.length === ids.length && current.every((id, i) => id === ids[i])) return;
    const chosen = picker.value;
    picker.replaceChildren();
    if (!ids.length) {
      const none = el("option", "", "no model available");
      none.value = "";
      none.disabled = true;
      picker.append(none);
      picker.value = "";
      return;
    }
    for (const id of ids) {
      const option = el("option", "", id);
      option.value = id;
      picker.append(option);
    }
    picker.value = ids.includes(chosen) ? chosen : ids[0];
  }

  async function loadModels() {
    const response = await api("/v1/models");
    if (!response.ok) throw new Error(await errorOf(response));
    const body = await response.json();
    const data = body && Array.isArray(body.data) ? body.data : [];
    const ids = [...new Set(data.map((m) => m && m.id).filter((id) => typeof id === "string"))];
    fillPicker(ids.sort());
  }

  function ping(rtt, seconds) {
    if (typeof rtt !== "number" || typeof seconds !== "number") return "not pinged yet";
    const ms = `${rtt.toFixed(rtt < 10 ? 2 : 0)} ms`;
    if (seconds < 1) return `ping ${ms} · just now`;
    if (seconds < 120) return `ping ${ms} · ${Math.round(seconds)} s ago`;
    return `ping ${ms} · ${Math.round(seconds / 60)} min ago`;
  }

  function nodeItem(node) {
    const item = el("li", "node");
    item.dataset.peer = String(node.peer_id);
    const head = el("div", "node-head");
    const peer = el("span", "peer", node.short);
    peer.title = String(node.peer_id);
    const connection = ["direct", "relayed"].includes(node.connection) ? node.connection : "none";
    head.append(
      peer,
      el("span", `badge ${connection}`, connection === "none" ? "not connected" : connection),
      el("span", "badge", node.generation === "latest" ? "latest gen" : "first gen"),
    );
    const models = el("ul", "node-models");
    for (const model of Array.isArray(node.models) ? node.models : []) {
      models.append(el("li", "", model));
    }
    const stats = el("div", "node-stats", `${Number(node.in_flight) || 0} in flight · ${ping(node.rtt_ms, node.pinged)}`);
    stats.title = "requests through this gateway now · last ping round trip · when it was measured";
    item.append(head, models, stats);
    return item;
  }

  async function loadNodes() {
    const response = await api("/mimirlite/nodes");
    if (!response.ok) throw new Error(await errorOf(response));
    const body = await response.json();
    const nodes = body && Array.isArray(body.nodes) ? body.nodes : [];
    nodeList.replaceChildren(...nodes.map(nodeItem));
    nodeCount.textContent = `(${nodes.length})`;
    nodesStatus.textContent = nodes.length ? "" : "No node known yet.";
  }

  async function refresh() {
    try {
      await Promise.all([loadModels(), loadNodes()]);
      nodeList.classList.remove("stale");
      if (banner.dataset.kind === "refresh") {
        showBanner("");
        delete banner.dataset.kind;
      }
    } catch (error) {
      nodeList.classList.add("stale");
      nodesStatus.textContent = `Not refreshed: ${describe(error)}.`;
      banner.dataset.kind = "refresh";
      showBanner(`Cannot list the models: ${describe(error)}. Trying again every ${REFRESH_MS / 1000} s.`);
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  // ---- the conversation ----

  function addMessage(role, label, text) {
    empty.hidden = true;
    const item = el("li", `msg ${role}`);
    const body = el("div", "text", text);
    const note = el("div", "note");
    note.hidden = true;
    item.append(el("div", "role", label), body, note);
    transcript.append(item);
    transcript.scrollTop = transcript.scrollHeight;
    return { item, body, note };
  }

  function finish(view, state, note) {
    view.item.dataset.state = state;
    if (note) {
      view.note.textContent = note;
      view.note.hidden = false;
    }
  }

  function setBusy(busy) {
    sendButton.hidden = busy;
    stopButton.hidden = !busy;
  }

  // The text pieces of an answer streamed as Server-Sent Events; throws when the stream carries an
  // error or ends without [DONE].
  async function* answerPieces(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") {
          await reader.cancel();
          return;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch {
          throw new Error("The gateway sent an event that is not JSON.");
        }
        if (chunk && chunk.error) {
          const message = typeof chunk.error === "string" ? chunk.error : chunk.error.message;
          throw new Error(message || "The answer broke off with an error.");
        }
        const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
        const content = choice && choice.delta ? choice.delta.content : null;
        if (typeof content === "string" && content) yield content;
      }
    }
    throw new Error("The answer broke off: the stream ended before it was finished.");
  }

  async function ask(text) {
    const model = picker.value;
    if (!model) {
      showBanner("No model to ask: no node serving one is known yet.");
      return;
    }
    showBanner("");
    const messages = conversation; // New chat starts another array: this turn keeps its own
    messages.push({ role: "user", content: text });
    addMessage("user", "You", text);
    const view = addMessage("assistant", model, "");
    view.item.dataset.state = "streaming";
    const mine = new AbortController();
    controller = mine;
    setBusy(true);
    let answer = "";
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, messages, stream: true }),
        signal: mine.signal,
      });
      if (!response.ok) throw new Error(await errorOf(response));
      for await (const piece of answerPieces(response)) {
        answer += piece;
        view.body.textContent = answer;
        transcript.scrollTop = transcript.scrollHeight;
      }
      finish(view, "done");
    } catch (error) {
      if (mine.signal.aborted) finish(view, "stopped", answer ? "Stopped." : "Stopped before the first word.");
      else finish(view, "error", error instanceof TypeError ? `The answer broke off: ${describe(error)}.` : describe(error));
    } finally {
      if (answer) messages.push({ role: "assistant", content: answer });
      if (controller === mine) {
        controller = null;
        setBusy(false);
      }
    }
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    prompt.value = "";
    ask(text);
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => {
    if (controller) controller.abort();
  });

  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    conversation = [];
    transcript.replaceChildren();
    empty.hidden = false;
    showBanner("");
    prompt.focus();
  });

  refresh();
  prompt.focus();
})();
