// Madoguchi operator console: plain JS over the /v1/operator API. The key stays in this tab
// (sessionStorage) and travels in the Authorization header. Every text from the server is rendered with
// textContent (never innerHTML); source links must be http(s). Lists and the open transcript are
// re-read every REFRESH_MS; a sent message shows its undo countdown until its window ends.
(() => {
  "use strict";

  const STORE = "madoguchi.operatorKey";
  const REFRESH_MS = 1000;
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const state = {
    key: sessionStorage.getItem(STORE), me: null, current: null, lastSeq: -1, suggestions: null,
    chosen: null, usedSources: [], lastSent: null, timer: null, refreshing: false,
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "testid") node.dataset.testid = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function showError(text) { $("error").textContent = text || ""; $("error").hidden = !text; }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const detail = data && (typeof data.detail === "string" ? data.detail : data.code);
      const error = new Error(detail || `HTTP ${response.status}`);
      error.status = response.status; error.code = data && data.code;
      throw error;
    }
    return data;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (_) { return null; }
  }

  // --- signing in and the lists ---------------------------------------------------------------------
  async function connect(event) {
    if (event) event.preventDefault();
    if (event) state.key = $("key").value.trim();
    if (!state.key) return;
    try {
      state.me = await api("GET", "/v1/operator/me");
    } catch (error) {
      state.key = null; sessionStorage.removeItem(STORE);
      showError(error.status === 403 ? "This key is not an operator key." : `Cannot sign in: ${error.message}`);
      return;
    }
    sessionStorage.setItem(STORE, state.key);
    showError("");
    $("login").hidden = true; $("me").hidden = false; $("desk").hidden = false;
    $("me-name").textContent = state.me.name;
    $("on-shift").checked = state.me.on_shift;
    await refresh();
    state.timer = setInterval(refresh, REFRESH_MS);
    document.body.dataset.ready = "true";
  }

  function logout() {
    sessionStorage.removeItem(STORE);
    location.reload();
  }

  async function setShift() {
    try { state.me = await api("POST", "/v1/operator/shift", { on_shift: $("on-shift").checked }); }
    catch (error) { showError(error.message); }
  }

  async function refresh() {
    if (state.refreshing) return;
    state.refreshing = true;
    try {
      const [queue, mine] = await Promise.all([api("GET", "/v1/operator/queue"), api("GET", "/v1/operator/conversations")]);
      renderList($("queue"), queue, "queue-item", true);
      renderList($("mine"), mine, "mine-item", false);
      $("queue-count").textContent = String(queue.length);
      if (state.current) await refreshTranscript();
    } catch (error) {
      showError(`Refresh failed: ${error.message}`);
    } finally {
      state.refreshing = false;
    }
  }

  function renderList(list, items, testid, claimable) {
    list.replaceChildren(...items.map((c) => {
      const label = `${c.vip ? "VIP · " : ""}${c.member_id || c.id.slice(0, 8)}`;
      const waited = c.queued_at ? ` · since ${new Date(c.queued_at).toLocaleTimeString()}` : "";
      const item = el("li", { class: `item${c.vip ? " item--vip" : ""}`, testid, "data-id": c.id },
        el("span", {}, label + waited));
      if (c.id === state.current) item.setAttribute("aria-current", "true");
      if (claimable) {
        item.append(el("div", { class: "item__actions" },
          el("button", { type: "button", testid: "claim", onclick: (e) => { e.stopPropagation(); claim(c.id); } }, "Claim")));
      } else {
        item.addEventListener("click", () => open(c.id));
      }
      return item;
    }));
  }

  async function claim(id) {
    try {
      await api("POST", `/v1/operator/conversations/${id}/claim`);
    } catch (error) {
      showError(error.code === "already_claimed" ? "Another operator took this conversation." : error.message);
      return refresh();
    }
    await open(id);
    await refresh();
  }

  // --- one conversation ---------------------------------------------------------------------------------
  async function open(id) {
    state.current = id; state.lastSeq = -1; state.suggestions = null; state.chosen = null; state.usedSources = [];
    $("pending").replaceChildren();
    $("chat").hidden = false;
    let packet;
    try { packet = await api("GET", `/v1/operator/conversations/${id}`); }
    catch (error) { showError(error.message); return; }
    renderPacket(packet);
    renderLog(packet.transcript);
    await loadSuggestions(false);
  }

  function renderPacket(packet) {
    const c = packet.customer;
    const who = c ? [c.name, c.member_id, c.plan && `plan ${c.plan}`, c.vip && "VIP"].filter(Boolean).join(" · ")
      : "anonymous visitor";
    $("customer").textContent = `${who} · ${packet.channel} · ${packet.locale}`;
    $("customer").dataset.vip = c && c.vip ? "true" : "false";
    $("summary").textContent = packet.summary ? packet.summary.text : "";
    const attempts = packet.attempts.map((a) => `${a.decision || "?"} ${a.confidence == null ? "" : a.confidence.toFixed(2)}`);
    $("reasons").textContent = [packet.decision, ...packet.reasons].filter(Boolean).join(", ")
      + (attempts.length ? ` · bot: ${attempts.join("; ")}` : "");
  }

  function renderLog(messages) {
    const last = messages.length ? messages[messages.length - 1].seq : 0;
    if (last === state.lastSeq) return;
    state.lastSeq = last;
    $("log").replaceChildren(...messages.map((m) => el("li", { class: `msg msg--${m.role}`, testid: `msg-${m.role}`, "data-seq": m.seq },
      el("span", { class: "msg__meta" }, `${m.role} · ${new Date(m.created_at).toLocaleTimeString()}`), m.text)));
    $("log").scrollTop = $("log").scrollHeight;
    const customer = messages.filter((m) => m.role === "customer").pop();
    if (customer && state.suggestions && state.suggestions.for_message_id !== customer.id) loadSuggestions(false);
  }

  async function refreshTranscript() {
    const id = state.current;
    const transcript = await api("GET", `/v1/conversations/${id}`);
    if (id !== state.current) return;
    renderLog(transcript.messages);
    const closed = transcript.status === "closed";
    $("send").disabled = closed;
    $("text").disabled = closed;
  }

  // --- suggestions -----------------------------------------------------------------------------------
  async function loadSuggestions(refresh) {
    const id = state.current;
    let set;
    try { set = await api("GET", `/v1/operator/conversations/${id}/suggestions${refresh ? "?refresh=true" : ""}`); }
    catch (error) {
      state.suggestions = null;
      $("suggestions").replaceChildren(el("p", { class: "draft__source" }, `No suggestions: ${error.message}`));
      return;
    }
    if (id !== state.current) return;
    state.suggestions = set;
    $("suggestions").replaceChildren(...set.drafts.map((d, i) => {
      const sources = el("div", { class: "draft__source" });
      for (const c of d.citations) {
        const href = c.url && safeUrl(c.url);
        const link = el(href ? "a" : "span", href ? { href, target: "_blank", rel: "noopener noreferrer" } : {}, c.title);
        sources.append(`[${c.number}] `, link, " ");
      }
      return el("article", { class: "draft", testid: "draft", "data-index": i, "data-source": d.source_id },
        el("p", { class: "draft__text", testid: "draft-text" }, d.text), sources,
        el("button", { type: "button", testid: "use", onclick: () => send(d.text, { setId: set.id, index: i, source: d.source_id }) }, "Use"),
        " ",
        el("button", { type: "button", testid: "edit", onclick: () => edit(i) }, "Edit"));
    }));
  }

  function edit(index) {
    const draft = state.suggestions.drafts[index];
    state.chosen = { setId: state.suggestions.id, index, source: draft.source_id };
    $("text").value = draft.text;
    $("draft-note").textContent = `editing suggestion ${index + 1}`;
    $("text").focus();
  }

  // --- send with undo ----------------------------------------------------------------------------------
  async function send(text, chosen) {
    const body = { text };
    if (chosen) { body.suggestion_set_id = chosen.setId; body.draft_index = chosen.index; }
    let delivery;
    try { delivery = await api("POST", `/v1/operator/conversations/${state.current}/messages`, body); }
    catch (error) { showError(error.message); return false; }
    showError("");
    if (chosen && chosen.source) state.usedSources.push(chosen.source);
    state.lastSent = text;
    showPending(delivery, chosen);
    return true;
  }

  async function submitComposer(event) {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    if (await send(text, state.chosen)) {
      $("text").value = ""; state.chosen = null; $("draft-note").textContent = "";
    }
  }

  function showPending(delivery, chosen) {
    // The window's length from the server's own times, counted on this clock: no clock-skew surprises.
    const windowMs = new Date(delivery.deliver_at) - new Date(delivery.created_at);
    const endsAt = performance.now() + windowMs;
    const countdown = el("span", { testid: "countdown" }, "");
    const undoButton = el("button", { type: "button", testid: "undo" }, "Undo");
    const item = el("li", { testid: "pending-item", "data-id": delivery.id, "data-status": "pending" },
      el("span", { class: "pending__text" }, delivery.text), countdown, undoButton);
    $("pending").append(item);
    const tick = () => {
      const left = Math.max(0, endsAt - performance.now());
      countdown.textContent = left > 0 ? `sending in ${(left / 1000).toFixed(1)} s` : "sent";
      if (left > 0 && item.dataset.status === "pending") { setTimeout(tick, 100); return; }
      if (item.dataset.status !== "pending") return;
      item.dataset.status = "sent";
      undoButton.disabled = true;
      setTimeout(() => item.remove(), 1500);
    };
    undoButton.addEventListener("click", async () => {
      try {
        await api("POST", `/v1/operator/conversations/${state.current}/messages/${delivery.id}/undo`);
      } catch (error) {
        showError(error.status === 409 ? "Too late to undo: the message was sent." : error.message);
        return;
      }
      item.dataset.status = "cancelled";
      item.remove();
      if (chosen && chosen.source) state.usedSources.splice(state.usedSources.lastIndexOf(chosen.source), 1);
      if (state.lastSent === delivery.text) state.lastSent = null;
      if (!$("text").value) { $("text").value = delivery.text; state.chosen = chosen || null; }
    });
    tick();
  }

  // --- closing -------------------------------------------------------------------------------------------
  async function resolve(event) {
    event.preventDefault();
    const tags = $("tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const body = { outcome: $("outcome").value, tags, answer_source_ids: [...new Set(state.usedSources)] };
    if (state.lastSent) body.answer_text = state.lastSent;
    try { await api("POST", `/v1/operator/conversations/${state.current}/resolve`, body); }
    catch (error) { showError(error.message); return; }
    closeChat();
  }

  async function release() {
    try { await api("POST", `/v1/operator/conversations/${state.current}/release`); }
    catch (error) { showError(error.message); return; }
    closeChat();
  }

  function closeChat() {
    state.current = null; state.lastSent = null;
    $("chat").hidden = true;
    $("tags").value = "";
    refresh();
  }

  $("login").addEventListener("submit", connect);
  $("logout").addEventListener("click", logout);
  $("on-shift").addEventListener("change", setShift);
  $("composer").addEventListener("submit", submitComposer);
  $("resolve-form").addEventListener("submit", resolve);
  $("release").addEventListener("click", release);
  if (state.key) connect(); else document.body.dataset.ready = "login";
})();
