// Madoguchi operator console: plain JS over the /v1/operator API. The key stays in this tab
// (sessionStorage) and travels in the Authorization header. Every text from the server is rendered with
// textContent (never innerHTML); source links must be http(s).
//
// Live updates come from the operator event streams (/v1/operator/events for the queue and "mine",
// /v1/operator/conversations/{id}/events for the open chat), read with fetch() because EventSource
// cannot send an Authorization header. A stream that ends or fails is reopened with Last-Event-ID
// (backing off while it keeps failing); a slow safety refresh (?refresh_s=, default 30 s) re-reads the
// lists and the open transcript in case a stream silently stalls.
(() => {
  "use strict";

  const STORE = "madoguchi.operatorKey";
  const LANG_STORE = "madoguchi.consoleLang";
  const RECONNECT_MS = 300;       // after a stream ended normally (the server closes it every few minutes)
  const FIRST_BACKOFF_MS = 1000;  // after a failure; doubles per failure in a row
  const MAX_BACKOFF_MS = 30000;
  const SAFETY_MS = safetyInterval();

  const STRINGS = {
    ja: {
      title: "オペレーター画面", keyLabel: "オペレーター API キー", connect: "接続", onShift: "対応中",
      signOut: "サインアウト", queue: "待ち行列", mine: "担当中", suggestions: "返信候補",
      composerLabel: "お客様へのメッセージ", composerPlaceholder: "お客様への返信を入力", send: "送信",
      notesTitle: "内部メモ", notesWarning: "🔒 オペレーター専用：お客様には表示されません",
      noteLabel: "内部メモ", notePlaceholder: "オペレーター間の引き継ぎメモ（お客様には見えません）",
      addNote: "メモを追加", transferTo: "転送先", transfer: "転送", release: "待ち行列に戻す",
      handBack: "ボットに戻す", outcome: "結果", outcomeResolved: "解決", outcomeUnresolved: "未解決",
      outcomeFollowUp: "要フォローアップ", tagsPlaceholder: "タグ（カンマ区切り）", tags: "タグ",
      resolve: "完了", claim: "対応する", use: "そのまま使う", edit: "編集", undo: "取り消す",
      shiftCount: "対応中のオペレーター: {n}人", since: "{time} から待機", anonymous: "匿名の訪問者",
      plan: "プラン {plan}", bot: "ボット", noSuggestions: "返信候補なし: {error}",
      editing: "候補 {n} を編集中", sendingIn: "送信まで {s} 秒", sent: "送信済み",
      noTarget: "転送できるオペレーターがいません", live: "● ライブ", reconnecting: "◌ 再接続中…",
      streamFailed: "✕ 切断", notOperatorKey: "このキーはオペレーター用ではありません。",
      cannotSignIn: "サインインできません: {error}", takenByOther: "他のオペレーターが対応を始めました。",
      tooLateToUndo: "取り消せません: すでに送信されました。", operatorUnavailable: "転送先のオペレーターは対応中ではありません。",
      notYours: "この会話はあなたの担当ではなくなりました。", handedBack: "この会話はボットに戻されました。",
      closedByCustomer: "お客様が会話を終了しました。結果を記録して完了してください。",
      refreshFailed: "更新に失敗しました: {error}", streamLost: "ライブ更新が止まりました: {error}",
      role_customer: "お客様", role_bot: "ボット", role_operator: "オペレーター", role_system: "システム",
      langButton: "English",
    },
    en: {
      title: "operator console", keyLabel: "Operator API key", connect: "Connect", onShift: "on shift",
      signOut: "Sign out", queue: "Queue", mine: "Mine", suggestions: "Suggested replies",
      composerLabel: "Message to the customer", composerPlaceholder: "Reply to the customer", send: "Send",
      notesTitle: "Internal notes", notesWarning: "🔒 Operators only: never shown to the customer",
      noteLabel: "Internal note", notePlaceholder: "A note for operators (the customer never sees it)",
      addNote: "Add note", transferTo: "Transfer to", transfer: "Transfer", release: "Release to queue",
      handBack: "Hand back to the bot", outcome: "Outcome", outcomeResolved: "resolved",
      outcomeUnresolved: "unresolved", outcomeFollowUp: "follow-up needed",
      tagsPlaceholder: "tags, comma separated", tags: "Tags", resolve: "Resolve", claim: "Claim",
      use: "Use", edit: "Edit", undo: "Undo", shiftCount: "{n} on shift", since: "since {time}",
      anonymous: "anonymous visitor", plan: "plan {plan}", bot: "bot", noSuggestions: "No suggestions: {error}",
      editing: "editing suggestion {n}", sendingIn: "sending in {s} s", sent: "sent",
      noTarget: "nobody else is on shift", live: "● live", reconnecting: "◌ reconnecting…",
      streamFailed: "✕ disconnected", notOperatorKey: "This key is not an operator key.",
      cannotSignIn: "Cannot sign in: {error}", takenByOther: "Another operator took this conversation.",
      tooLateToUndo: "Too late to undo: the message was sent.",
      operatorUnavailable: "That operator is not on shift.",
      notYours: "This conversation is no longer yours.", handedBack: "This conversation was handed back to the bot.",
      closedByCustomer: "The customer closed the chat: record the outcome and resolve it.",
      refreshFailed: "Refresh failed: {error}", streamLost: "Live updates stopped: {error}",
      role_customer: "customer", role_bot: "bot", role_operator: "operator", role_system: "system",
      langButton: "日本語",
    },
  };

  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const state = {
    key: sessionStorage.getItem(STORE), lang: pickLanguage(), me: null, operators: [], queue: [], mine: [],
    desk: null, safetyTimer: null, chat: null, suggestions: null, chosen: null, usedSources: [], lastSent: null,
  };

  // --- language --------------------------------------------------------------------------------------
  function pickLanguage() {
    const saved = localStorage.getItem(LANG_STORE);
    if (saved === "ja" || saved === "en") return saved;
    return String(navigator.language || "").toLowerCase().startsWith("ja") ? "ja" : "en";
  }

  function t(name, params) {
    const text = STRINGS[state.lang][name] ?? STRINGS.en[name] ?? name;
    return text.replace(/\{(\w+)\}/g, (_, k) => (params && k in params ? String(params[k]) : `{${k}}`));
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
    for (const node of document.querySelectorAll("[data-i18n-aria]")) node.setAttribute("aria-label", t(node.dataset.i18nAria));
    $("lang").textContent = t("langButton");
    setLive($("live").dataset.state);
    if (!state.me) return;
    renderShiftCount(); renderLists();
    if (state.chat) { renderPacket(); renderLog(); renderNotes(); renderTargets(); renderNotice(); renderSuggestions(); }
  }

  function toggleLanguage() {
    state.lang = state.lang === "ja" ? "en" : "ja";
    localStorage.setItem(LANG_STORE, state.lang);
    applyLanguage();
  }

  // --- small tools ----------------------------------------------------------------------------------------
  function safetyInterval() {
    const seconds = Number(new URLSearchParams(location.search).get("refresh_s"));
    return (Number.isFinite(seconds) && seconds >= 5 && seconds <= 3600 ? seconds : 30) * 1000;
  }

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

  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const time = (iso) => new Date(iso).toLocaleTimeString(state.lang === "ja" ? "ja-JP" : "en-US");

  function showError(text) { $("error").textContent = text || ""; $("error").hidden = !text; }

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();  // secure contexts only (https, localhost)
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(method, path, body, extraHeaders) {
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json", ...(extraHeaders || {}) };
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

  // --- server-sent events over fetch() -----------------------------------------------------------------
  // One stream: reads `event:`/`data:`/`id:`/`retry:` lines, dispatches each event's JSON to onEvent,
  // and reopens the stream with Last-Event-ID when it ends or fails (401/403/404 end it for good).
  function openStream(path, { onEvent, onStatus, lastId }) {
    const s = { closed: false, lastId: lastId ?? null, retryMs: null, controller: null };
    (async () => {
      let failures = 0;
      while (!s.closed) {
        let received = false;
        try {
          received = await readStream(s, path, onEvent, onStatus);
        } catch (error) {
          if (s.closed) break;
          if (error.fatal) { s.closed = true; onStatus("failed", error); break; }
        }
        if (s.closed) break;
        onStatus("reconnecting");
        failures = received ? 0 : failures + 1;  // a stream that gave nothing counts as a failure
        const wait = failures === 0 ? (s.retryMs ?? RECONNECT_MS)
          : Math.min(MAX_BACKOFF_MS, Math.max(s.retryMs ?? 0, FIRST_BACKOFF_MS) * 2 ** (failures - 1));
        await sleep(wait * (0.75 + Math.random() / 2));  // jitter: consoles do not all come back at once
      }
    })();
    return { close() { s.closed = true; if (s.controller) s.controller.abort(); } };
  }

  async function readStream(s, path, onEvent, onStatus) {
    s.controller = new AbortController();
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
    if (s.lastId !== null) headers["Last-Event-ID"] = s.lastId;
    const response = await fetch(path, { headers, signal: s.controller.signal, cache: "no-store" });
    if (!response.ok || !response.body) {
      const error = new Error(`HTTP ${response.status}`);
      error.status = response.status; error.fatal = [401, 403, 404].includes(response.status);
      throw error;
    }
    onStatus("live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", name = "", data = [], received = false;
    const dispatch = () => {
      if (data.length) {
        received = true;
        let payload;
        try { payload = JSON.parse(data.join("\n")); } catch (_) { payload = null; }
        if (payload !== null) onEvent(name || "message", payload);
      }
      name = ""; data = [];
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;  // maybe half of a \r\n
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);
      for (const line of lines) {
        if (line === "") { dispatch(); continue; }
        if (line.startsWith(":")) { received = true; continue; }  // a keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) s.lastId = text;
        else if (field === "retry" && /^\d+$/.test(text)) s.retryMs = Number(text);
      }
    }
    return received;
  }

  function setLive(status) {
    const live = $("live");
    live.dataset.state = status || "off";
    live.hidden = !status || status === "off";
    live.textContent = status === "live" ? t("live") : status === "failed" ? t("streamFailed") : t("reconnecting");
  }

  // --- signing in, shift and the lists ---------------------------------------------------------------
  async function connect(event) {
    if (event) event.preventDefault();
    if (event) state.key = $("key").value.trim();
    if (!state.key) return;
    try {
      state.me = await api("GET", "/v1/operator/me");
    } catch (error) {
      state.key = null; sessionStorage.removeItem(STORE);
      showError(error.status === 403 ? t("notOperatorKey") : t("cannotSignIn", { error: error.message }));
      return;
    }
    sessionStorage.setItem(STORE, state.key);
    showError("");
    $("login").hidden = true; $("me").hidden = false; $("desk").hidden = false;
    $("me-name").textContent = state.me.name;
    $("on-shift").checked = state.me.on_shift;
    state.desk = openStream("/v1/operator/events", {
      onEvent: onDeskEvent,
      onStatus: (status, error) => {
        setLive(status);
        if (status === "failed") showError(t("streamLost", { error: error.message }));
      },
    });
    state.safetyTimer = setInterval(safetyRefresh, SAFETY_MS);
    await loadOperators();
    document.body.dataset.ready = "true";
  }

  function logout() {
    sessionStorage.removeItem(STORE);
    location.reload();
  }

  function onDeskEvent(name, payload) {
    if (name === "queue") state.queue = payload.items;
    else if (name === "mine") state.mine = payload.items;
    else return;
    renderLists();
  }

  async function safetyRefresh() {
    try {
      const [queue, mine] = await Promise.all([api("GET", "/v1/operator/queue"), api("GET", "/v1/operator/conversations")]);
      state.queue = queue; state.mine = mine;
      renderLists();
      await loadOperators();
      if (state.chat) await refreshTranscript();
    } catch (error) {
      showError(t("refreshFailed", { error: error.message }));
    }
  }

  async function loadOperators() {
    try { state.operators = await api("GET", "/v1/operator/operators"); }
    catch (error) { showError(error.message); return; }
    renderShiftCount();
    if (state.chat) renderTargets();
  }

  function renderShiftCount() {
    $("shift-count").textContent = t("shiftCount", { n: state.operators.filter((o) => o.on_shift).length });
  }

  async function setShift() {
    try { state.me = await api("POST", "/v1/operator/shift", { on_shift: $("on-shift").checked }); }
    catch (error) { showError(error.message); $("on-shift").checked = state.me.on_shift; return; }
    await loadOperators();
  }

  function renderLists() {
    renderList($("queue"), state.queue, "queue-item", true);
    renderList($("mine"), state.mine, "mine-item", false);
    $("queue-count").textContent = String(state.queue.length);
  }

  function renderList(list, items, testid, claimable) {
    list.replaceChildren(...items.map((c) => {
      const label = `${c.position ? `${c.position}. ` : ""}${c.vip ? "VIP · " : ""}${c.member_id || c.id.slice(0, 8)}`;
      const waited = c.queued_at ? ` · ${t("since", { time: time(c.queued_at) })}` : "";
      const item = el("li", { class: `item${c.vip ? " item--vip" : ""}`, testid, "data-id": c.id, "data-status": c.status },
        el("span", {}, label + waited));
      if (state.chat && c.id === state.chat.id) item.setAttribute("aria-current", "true");
      if (claimable) {
        item.append(el("div", { class: "item__actions" },
          el("button", { type: "button", testid: "claim", onclick: (e) => { e.stopPropagation(); claim(c.id); } }, t("claim"))));
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
      showError(error.code === "already_claimed" ? t("takenByOther") : error.message);
      return;
    }
    showError("");
    await open(id);
  }

  // --- one conversation ---------------------------------------------------------------------------------
  async function open(id) {
    closeChatStream();
    state.suggestions = null; state.chosen = null; state.usedSources = []; state.lastSent = null;
    let packet;
    try { packet = await api("GET", `/v1/operator/conversations/${id}`); }
    catch (error) { showError(error.message); return; }
    state.chat = {
      id, packet, conversation: packet.conversation, messages: [...packet.transcript],
      notes: new Map(packet.notes.map((n) => [n.id, n])), stream: null,
    };
    $("pending").replaceChildren();
    $("chat").hidden = false;
    renderLists(); renderPacket(); renderLog(); renderNotes(); renderTargets(); renderNotice();
    loadOperators();  // who may take a transfer now
    const lastSeq = lastSeqOf(state.chat);
    state.chat.stream = openStream(`/v1/operator/conversations/${id}/events`, {
      lastId: String(lastSeq),
      onEvent: (name, payload) => onChatEvent(id, name, payload),
      onStatus: (status, error) => { if (status === "failed") showError(t("streamLost", { error: error.message })); },
    });
    await loadSuggestions(false);
  }

  const lastSeqOf = (chat) => (chat.messages.length ? chat.messages[chat.messages.length - 1].seq : 0);

  function onChatEvent(id, name, payload) {
    const chat = state.chat;
    if (!chat || chat.id !== id) return;
    if (name === "message") mergeMessages([payload]);
    else if (name === "note") { chat.notes.set(payload.id, payload); renderNotes(); }
    else if (name === "state") { chat.conversation = payload; renderNotice(); }
  }

  function mergeMessages(messages) {
    const chat = state.chat;
    const fresh = messages.filter((m) => m.seq > lastSeqOf(chat));
    if (!fresh.length) return;
    chat.messages.push(...fresh);
    renderLog();
    const customer = chat.messages.filter((m) => m.role === "customer").pop();
    if (customer && state.suggestions && state.suggestions.for_message_id < customer.id && isMine()) loadSuggestions(false);
  }

  async function refreshTranscript() {
    const id = state.chat.id;
    const transcript = await api("GET", `/v1/conversations/${id}`);
    if (!state.chat || id !== state.chat.id) return;
    mergeMessages(transcript.messages);
  }

  function renderPacket() {
    const packet = state.chat.packet;
    const c = packet.customer;
    const who = c ? [c.name, c.member_id, c.plan && t("plan", { plan: c.plan }), c.vip && "VIP"].filter(Boolean).join(" · ")
      : t("anonymous");
    $("customer").textContent = `${who} · ${packet.channel} · ${packet.locale}`;
    $("customer").dataset.vip = c && c.vip ? "true" : "false";
    $("summary").textContent = packet.summary ? packet.summary.text : "";
    const attempts = packet.attempts.map((a) => `${a.decision || "?"} ${a.confidence == null ? "" : a.confidence.toFixed(2)}`);
    $("reasons").textContent = [packet.decision, ...packet.reasons].filter(Boolean).join(", ")
      + (attempts.length ? ` · ${t("bot")}: ${attempts.join("; ")}` : "");
  }

  function renderLog() {
    $("log").replaceChildren(...state.chat.messages.map((m) => el("li", { class: `msg msg--${m.role}`, testid: `msg-${m.role}`, "data-seq": m.seq },
      el("span", { class: "msg__meta" }, `${t(`role_${m.role}`)} · ${time(m.created_at)}`), m.text)));
    $("log").scrollTop = $("log").scrollHeight;
  }

  function operatorName(id) {
    const found = state.operators.find((o) => o.id === id);
    return found ? found.name : `#${id}`;
  }

  function renderNotes() {
    const notes = [...state.chat.notes.values()].sort((a, b) => a.id - b.id);
    $("note-list").replaceChildren(...notes.map((n) => el("li", { class: "note", testid: "note", "data-id": n.id },
      el("span", { class: "note__meta" }, `${operatorName(n.operator_id)} · ${time(n.created_at)}`), n.text)));
  }

  function renderTargets() {
    const others = state.operators.filter((o) => o.on_shift && o.id !== state.me.id);
    const select = $("transfer-to");
    const chosen = select.value;
    select.replaceChildren(...(others.length ? others.map((o) => el("option", { value: String(o.id) }, o.name))
      : [el("option", { value: "" }, t("noTarget"))]));
    if (others.some((o) => String(o.id) === chosen)) select.value = chosen;
    renderNotice();
  }

  const isMine = () => state.chat && state.chat.conversation.assigned_operator_id === state.me.id;

  function renderNotice() {
    const c = state.chat.conversation;
    const mine = isMine();
    const live = mine && c.status === "escalated";
    let notice = "";
    if (c.status === "open") notice = t("handedBack");
    else if (!mine) notice = t("notYours");
    else if (c.status === "closed") notice = t("closedByCustomer");
    $("notice").textContent = notice;
    $("notice").hidden = !notice;
    $("chat").dataset.status = c.status;
    for (const id of ["text", "send", "release", "handback"]) $(id).disabled = !live;
    $("transfer").disabled = !live || !$("transfer-to").value;
    $("transfer-to").disabled = !live;
    $("resolve").disabled = !mine;
  }

  // --- suggestions -----------------------------------------------------------------------------------
  async function loadSuggestions(refresh) {
    const id = state.chat.id;
    let set;
    try { set = await api("GET", `/v1/operator/conversations/${id}/suggestions${refresh ? "?refresh=true" : ""}`); }
    catch (error) {
      if (!state.chat || id !== state.chat.id) return;
      state.suggestions = { error: error.message };
      renderSuggestions();
      return;
    }
    if (!state.chat || id !== state.chat.id) return;
    state.suggestions = set;
    renderSuggestions();
    const customer = state.chat.messages.filter((m) => m.role === "customer").pop();
    if (customer && customer.id > set.for_message_id) loadSuggestions(false);  // a message came meanwhile
  }

  function renderSuggestions() {
    const set = state.suggestions;
    if (!set) { $("suggestions").replaceChildren(); return; }
    if (set.error) {
      $("suggestions").replaceChildren(el("p", { class: "draft__source" }, t("noSuggestions", { error: set.error })));
      return;
    }
    $("suggestions").replaceChildren(...set.drafts.map((d, i) => {
      const sources = el("div", { class: "draft__source" });
      for (const c of d.citations) {
        const href = c.url && safeUrl(c.url);
        const link = el(href ? "a" : "span", href ? { href, target: "_blank", rel: "noopener noreferrer" } : {}, c.title);
        sources.append(`[${c.number}] `, link, " ");
      }
      return el("article", { class: "draft", testid: "draft", "data-index": i, "data-source": d.source_id },
        el("p", { class: "draft__text", testid: "draft-text" }, d.text), sources,
        el("button", { type: "button", testid: "use", onclick: () => send(d.text, { setId: set.id, index: i, source: d.source_id }) }, t("use")),
        " ",
        el("button", { type: "button", testid: "edit", onclick: () => edit(i) }, t("edit")));
    }));
  }

  function edit(index) {
    const draft = state.suggestions.drafts[index];
    state.chosen = { setId: state.suggestions.id, index, source: draft.source_id };
    $("text").value = draft.text;
    $("draft-note").textContent = t("editing", { n: index + 1 });
    $("text").focus();
  }

  // --- send with undo ----------------------------------------------------------------------------------
  async function send(text, chosen) {
    const body = { text };
    if (chosen) { body.suggestion_set_id = chosen.setId; body.draft_index = chosen.index; }
    const path = `/v1/operator/conversations/${state.chat.id}/messages`;
    const headers = { "Idempotency-Key": newKey() };  // a retry after a lost answer is sent once
    let delivery;
    for (let attempt = 1; ; attempt += 1) {
      try { delivery = await api("POST", path, body, headers); break; }
      catch (error) {
        if (error.status === undefined && attempt < 3) { await sleep(500 * attempt); continue; }  // network
        showError(error.message);
        return false;
      }
    }
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
    const conversationId = state.chat.id;
    const countdown = el("span", { testid: "countdown" }, "");
    const undoButton = el("button", { type: "button", testid: "undo" }, t("undo"));
    const item = el("li", { testid: "pending-item", "data-id": delivery.id, "data-status": "pending" },
      el("span", { class: "pending__text" }, delivery.text), countdown, undoButton);
    $("pending").append(item);
    const tick = () => {
      const left = Math.max(0, endsAt - performance.now());
      countdown.textContent = left > 0 ? t("sendingIn", { s: (left / 1000).toFixed(1) }) : t("sent");
      if (left > 0 && item.dataset.status === "pending") { setTimeout(tick, 100); return; }
      if (item.dataset.status !== "pending") return;
      item.dataset.status = "sent";
      undoButton.disabled = true;
      setTimeout(() => item.remove(), 1500);
    };
    undoButton.addEventListener("click", async () => {
      try {
        await api("POST", `/v1/operator/conversations/${conversationId}/messages/${delivery.id}/undo`);
      } catch (error) {
        showError(error.status === 409 ? t("tooLateToUndo") : error.message);
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

  // --- notes -----------------------------------------------------------------------------------------------
  async function addNote(event) {
    event.preventDefault();
    const text = $("note-text").value.trim();
    if (!text) return;
    let note;
    try { note = await api("POST", `/v1/operator/conversations/${state.chat.id}/notes`, { text }); }
    catch (error) { showError(error.message); return; }
    showError("");
    $("note-text").value = "";
    state.chat.notes.set(note.id, note);
    renderNotes();
  }

  // --- handing over and closing --------------------------------------------------------------------------
  async function act(action, body, errors) {
    try { await api("POST", `/v1/operator/conversations/${state.chat.id}/${action}`, body); }
    catch (error) { showError((errors && errors[error.code]) || error.message); return; }
    showError("");
    closeChat();
  }

  function transfer() {
    const target = Number($("transfer-to").value);
    if (!target) return;
    act("transfer", { operator_id: target }, { operator_unavailable: t("operatorUnavailable") });
  }

  function resolve(event) {
    event.preventDefault();
    const tags = $("tags").value.split(",").map((x) => x.trim()).filter(Boolean);
    const body = { outcome: $("outcome").value, tags, answer_source_ids: [...new Set(state.usedSources)] };
    if (state.lastSent) body.answer_text = state.lastSent;
    act("resolve", body);
  }

  function closeChatStream() {
    if (state.chat && state.chat.stream) state.chat.stream.close();
  }

  function closeChat() {
    closeChatStream();
    state.chat = null; state.lastSent = null; state.suggestions = null;
    $("chat").hidden = true;
    $("tags").value = "";
    renderLists();
  }

  $("login").addEventListener("submit", connect);
  $("logout").addEventListener("click", logout);
  $("lang").addEventListener("click", toggleLanguage);
  $("on-shift").addEventListener("change", setShift);
  $("composer").addEventListener("submit", submitComposer);
  $("note-form").addEventListener("submit", addNote);
  $("resolve-form").addEventListener("submit", resolve);
  $("transfer-to").addEventListener("focus", loadOperators);
  $("transfer-to").addEventListener("change", renderNotice);
  $("transfer").addEventListener("click", transfer);
  $("release").addEventListener("click", () => act("release"));
  $("handback").addEventListener("click", () => act("handback"));
  applyLanguage();
  if (state.key) connect(); else document.body.dataset.ready = "login";
})();
