// Madoguchi customer chat widget: plain JS, fetch API, server-sent events for streamed replies.
// Every text from the server is rendered with textContent (never innerHTML); source links must be http(s).
(() => {
  "use strict";

  const KEY = document.querySelector('meta[name="madoguchi-key"]').content;
  const params = new URLSearchParams(location.search);
  const LANG = (params.get("lang") || navigator.language || "ja").toLowerCase().startsWith("ja") ? "ja" : "en";
  const STORE = "madoguchi.conversation";
  const MAX_ATTEMPTS = 4;

  const TEXT = {
    ja: {
      title: "サポート", newChat: "新しい会話", inputLabel: "メッセージ", placeholder: "ご質問をどうぞ",
      human: "担当者と話す", send: "送信", humanRequest: "担当者と話したいです",
      sources: "参考", helpful: "解決した", notHelpful: "解決しない", thanks: "ご評価ありがとうございます",
      escalated: "担当者におつなぎしています。このままお待ちください。",
      take_message: "メッセージをお預かりしました。担当者が確認してご連絡します。",
      closed: "この会話は終了しました。", noKey: "ウィジェットの設定にAPIキーがありません。",
      rateLimited: "送信が多すぎます。少し待ってからお試しください。",
      invalid: "メッセージを送信できませんでした（長すぎるか空です）。",
      network: "通信に失敗しました。もう一度お試しください。", typing: "…",
      endChat: "会話を終了", surveyTitle: "アンケートにご協力ください", csatQ: "今回の対応の満足度",
      cesQ: "解決までのかんたんさ（0 = とても大変、10 = とてもかんたん）", npsQ: "友人や知人にすすめたいと思う度合い（0〜10）",
      resolvedQ: "問題は解決しましたか", reasonsQ: "当てはまるもの（複数可）", commentQ: "ご意見（任意）",
      surveySend: "回答する", surveyThanks: "ご回答ありがとうございました。", yes: "はい", no: "いいえ",
      csatLabels: ["とても不満", "不満", "ふつう", "満足", "とても満足", "感動した"],
      reasons: {
        faq_hard_to_understand: "FAQがわかりにくかった", answer_wrong: "回答が間違っていた",
        answer_not_found: "知りたいことが見つからなかった", could_not_reach_person: "担当者につながらなかった",
        took_too_long: "時間がかかった", had_to_repeat: "同じ説明を繰り返した", other: "その他",
      },
    },
    en: {
      title: "Support", newChat: "New chat", inputLabel: "Message", placeholder: "Ask us anything",
      human: "Talk to a person", send: "Send", humanRequest: "I'd like to talk to a person",
      sources: "Sources", helpful: "Helpful", notHelpful: "Not helpful", thanks: "Thanks for your feedback",
      escalated: "We're connecting you with a person. Please stay in this chat.",
      take_message: "We've kept your message; a member of our team will get back to you.",
      closed: "This conversation is closed.", noKey: "The widget has no API key configured.",
      rateLimited: "Too many messages. Please wait a moment and try again.",
      invalid: "The message could not be sent (too long or empty).",
      network: "Connection problem. Please try again.", typing: "…",
      endChat: "End chat", surveyTitle: "Tell us how we did", csatQ: "How satisfied are you?",
      cesQ: "How easy was it to get help? (0 = very hard, 10 = very easy)",
      npsQ: "How likely are you to recommend us? (0-10)", resolvedQ: "Was your issue resolved?",
      reasonsQ: "Anything that applies", commentQ: "Comments (optional)", surveySend: "Submit",
      surveyThanks: "Thank you for your answers.", yes: "Yes", no: "No",
      csatLabels: ["Very dissatisfied", "Dissatisfied", "Neutral", "Satisfied", "Very satisfied", "Delighted"],
      reasons: {
        faq_hard_to_understand: "The FAQ was hard to understand", answer_wrong: "The answer was wrong",
        answer_not_found: "I could not find what I needed", could_not_reach_person: "Could not reach a person",
        took_too_long: "It took too long", had_to_repeat: "I had to repeat myself", other: "Other",
      },
    },
  }[LANG];

  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const log = $("log"), input = $("input"), form = $("form"), banner = $("status-banner");
  const errorBox = $("error"), sendButton = $("send"), humanButton = $("human");
  const state = { conversationId: null, status: "open", lastHandoff: null, busy: false, surveyFor: null };
  const surveyForm = $("survey"), surveyThanks = $("survey-thanks"), endButton = $("end-chat");

  function translatePage() {
    document.documentElement.lang = LANG;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = TEXT[el.dataset.i18n]; });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
      el.placeholder = TEXT[el.dataset.i18nPlaceholder];
    });
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (c) => {
      const r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
  }

  function visitorId() {
    let id = localStorage.getItem("madoguchi.visitor");
    if (!id) { id = "v-" + uuid(); localStorage.setItem("madoguchi.visitor", id); }
    return id;
  }

  function showError(text) {
    errorBox.textContent = text || "";
    errorBox.hidden = !text;
  }

  function setStatus(status, handoff) {
    state.status = status;
    if (handoff) state.lastHandoff = handoff;
    const message = status === "closed" ? TEXT.closed
      : status === "escalated" ? TEXT[state.lastHandoff || "escalated"] : "";
    banner.textContent = message;
    banner.hidden = !message;
    banner.dataset.status = status;
    const closed = status === "closed";
    input.disabled = closed || state.busy;
    sendButton.disabled = closed || state.busy;
    humanButton.disabled = closed || state.busy || status === "escalated";
    endButton.disabled = closed || state.busy;
    if (closed) showSurvey();
  }

  // --- the post-chat survey: CSAT 1-6 (6 = 感動した), CES 0-10 (higher = easier), NPS 0-10, resolved, reasons.
  function choice(fieldset, type, name, value, label) {
    const el = document.createElement("label");
    const box = document.createElement("input");
    box.type = type; box.name = name; box.value = String(value);
    box.dataset.testid = `survey-${name}-${value}`;
    el.append(box, document.createTextNode(label));
    fieldset.appendChild(el);
  }

  function buildSurvey() {
    const sets = {};
    surveyForm.querySelectorAll("fieldset").forEach((f) => { sets[f.dataset.scale] = f; });
    TEXT.csatLabels.forEach((label, i) => choice(sets.csat, "radio", "csat", i + 1, label));
    for (let v = 0; v <= 10; v++) {
      choice(sets.ces, "radio", "ces", v, String(v));
      choice(sets.nps, "radio", "nps", v, String(v));
    }
    choice(sets.resolved, "radio", "resolved", "yes", TEXT.yes);
    choice(sets.resolved, "radio", "resolved", "no", TEXT.no);
    for (const [code, label] of Object.entries(TEXT.reasons)) choice(sets.reasons, "checkbox", "reasons", code, label);
  }

  function surveyAnswers() {
    const picked = (name) => {
      const el = surveyForm.querySelector(`input[name="${name}"]:checked`);
      return el ? el.value : null;
    };
    const body = {};
    for (const name of ["csat", "ces", "nps"]) { const v = picked(name); if (v !== null) body[name] = Number(v); }
    const resolved = picked("resolved");
    if (resolved !== null) body.resolved = resolved === "yes";
    const reasons = [...surveyForm.querySelectorAll('input[name="reasons"]:checked')].map((el) => el.value);
    if (reasons.length) body.reasons = reasons;
    const comment = $("survey-comment").value.trim();
    if (comment) body.comment = comment;
    return body;
  }

  function showSurvey() {
    if (!state.conversationId || state.surveyFor === state.conversationId || !log.children.length) return;
    state.surveyFor = state.conversationId;
    surveyForm.reset();
    surveyForm.hidden = false;
    surveyThanks.hidden = true;
  }

  function hideSurvey() { surveyForm.hidden = true; surveyThanks.hidden = true; }

  async function submitSurvey(event) {
    event.preventDefault();
    const body = surveyAnswers();
    if (!Object.keys(body).length) return;
    const response = await api("POST", `/v1/conversations/${state.conversationId}/survey`, body);
    const data = await readJson(response);
    if (response.ok || (data && data.code === "survey_already_answered")) {
      surveyForm.hidden = true;
      surveyThanks.hidden = false;
      return;
    }
    showError(errorText(response.status, data));
  }

  async function endChat() {
    if (!state.conversationId || state.status === "closed") return;
    const response = await api("POST", `/v1/conversations/${state.conversationId}/close`);
    if (!response.ok) { showError(errorText(response.status, await readJson(response))); return; }
    setStatus("closed");
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (_) { return null; }
  }

  function renderSources(li, citations) {
    if (!citations || !citations.length) return;
    const list = document.createElement("ol");
    list.className = "msg__sources";
    list.setAttribute("aria-label", TEXT.sources);
    for (const c of citations) {
      const item = document.createElement("li");
      const href = c.url && safeUrl(c.url);
      const el = document.createElement(href ? "a" : "span");
      if (href) { el.href = href; el.target = "_blank"; el.rel = "noopener noreferrer"; }
      el.textContent = c.title;
      el.dataset.testid = "source";
      item.appendChild(el);
      list.appendChild(item);
    }
    li.appendChild(list);
  }

  function renderRating(li, message) {
    if (message.role !== "bot" || !["answer", "clarify"].includes(message.decision)) return;
    const box = document.createElement("div");
    box.className = "msg__rate";
    // Words, not emoji: a page must not depend on an emoji font being installed.
    for (const [rating, label] of [["up", TEXT.helpful], ["down", TEXT.notHelpful]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.setAttribute("aria-label", label);
      button.setAttribute("aria-pressed", "false");
      button.dataset.testid = `thumb-${rating}`;
      button.addEventListener("click", () => rate(message.id, rating, box));
      box.appendChild(button);
    }
    li.appendChild(box);
  }

  function renderMessage(message, existing) {
    const li = existing || document.createElement("li");
    li.replaceChildren();
    li.className = `msg msg--${message.role}`;
    li.dataset.testid = `msg-${message.role}`;
    if (message.id) li.dataset.messageId = String(message.id);
    if (message.decision) li.dataset.decision = message.decision;
    const body = document.createElement("div");
    body.className = "msg__text";
    body.textContent = message.text;
    li.appendChild(body);
    renderSources(li, message.citations);
    renderRating(li, message);
    if (!existing) log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return li;
  }

  async function api(method, path, body, headers) {
    const response = await fetch(path, {
      method,
      headers: Object.assign({ Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" }, headers || {}),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return response;
  }

  async function readJson(response) {
    try { return await response.json(); } catch (_) { return null; }
  }

  function errorText(status, data) {
    if (status === 429) return TEXT.rateLimited;
    if (status === 413 || status === 422) return TEXT.invalid;
    if (status === 409 && data && data.code === "conversation_closed") return TEXT.closed;
    return TEXT.network;
  }

  async function openConversation() {
    const saved = sessionStorage.getItem(STORE);
    if (saved) {
      const response = await api("GET", `/v1/conversations/${saved}`);
      if (response.ok) {
        const transcript = await response.json();
        state.conversationId = transcript.id;
        log.replaceChildren();
        for (const m of transcript.messages) {
          renderMessage(m);
          if (m.decision === "escalate" || m.decision === "take_message") state.lastHandoff = m.decision;
        }
        setStatus(transcript.status);
        return;
      }
    }
    await newConversation();
  }

  async function newConversation() {
    const response = await api("POST", "/v1/conversations", {
      visitor_id: visitorId(), channel: "web", locale: LANG,
      page_context: { url: String(document.referrer || location.href).slice(0, 1000), title: document.title },
    }, { "Idempotency-Key": uuid() });
    const data = await readJson(response);
    if (!response.ok) { showError(errorText(response.status, data)); return; }
    state.conversationId = data.id;
    state.lastHandoff = null;
    hideSurvey();
    sessionStorage.setItem(STORE, data.id);
    log.replaceChildren();
    setStatus(data.status);
  }

  function parseEvents(buffer, onEvent) {
    // Split complete events (blank-line separated); return the unfinished tail.
    const parts = buffer.split(/\r?\n\r?\n/);
    const tail = parts.pop();
    for (const part of parts) {
      let event = "message";
      const data = [];
      for (const line of part.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
    return tail;
  }

  async function readTurn(response, pendingReply) {
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("text/event-stream")) return readJson(response);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", streamed = "", turn = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), (event, data) => {
        if (event === "delta") {
          streamed += data.text;
          pendingReply.el.hidden = false;
          pendingReply.el.querySelector(".msg__text").textContent = streamed;
        } else if (event === "reply") turn = data;
      });
    }
    return turn;
  }

  function delay(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  async function postMessage(text, pendingReply) {
    // One idempotency key for every attempt: a retry after a lost response never duplicates the message.
    const key = uuid();
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await api("POST", `/v1/conversations/${state.conversationId}/messages`, { text },
          { "Idempotency-Key": key, Accept: "text/event-stream" });
      } catch (err) {
        if (attempt >= MAX_ATTEMPTS) throw err;
        await delay(500 * attempt);
        continue;
      }
      const retryable = response.status === 409 || response.status === 503 || response.status === 502;
      if (response.ok) return { ok: true, turn: await readTurn(response, pendingReply) };
      const data = await readJson(response);
      if (retryable && data && data.code !== "conversation_closed" && attempt < MAX_ATTEMPTS) {
        await delay(1000 * Number(response.headers.get("Retry-After") || attempt));
        continue;
      }
      return { ok: false, status: response.status, data };
    }
  }

  function pendingBubble(role, text, hidden) {
    const el = renderMessage({ role, text, citations: [] });
    el.classList.add("msg--pending");
    el.hidden = !!hidden;
    return { el };
  }

  async function send(text) {
    text = text.trim();
    if (!text || state.busy || !state.conversationId) return;
    showError("");
    state.busy = true;
    setStatus(state.status);
    const mine = pendingBubble("customer", text);
    const reply = pendingBubble("bot", TEXT.typing, true);
    try {
      const result = await postMessage(text, reply);
      if (!result.ok) {
        mine.el.remove(); reply.el.remove();
        showError(errorText(result.status, result.data));
        if (result.data && result.data.code === "conversation_closed") setStatus("closed");
        return;
      }
      const turn = result.turn;
      renderMessage(turn.message, mine.el);
      if (turn.reply) renderMessage(turn.reply, reply.el); else reply.el.remove();
      const handoff = turn.reply && ["escalate", "take_message"].includes(turn.reply.decision)
        ? turn.reply.decision : null;
      input.value = "";
      setStatus(turn.status, handoff);
    } catch (_) {
      mine.el.remove(); reply.el.remove();
      showError(TEXT.network);
    } finally {
      state.busy = false;
      setStatus(state.status);
      input.focus();
    }
  }

  async function rate(messageId, rating, box) {
    const response = await api("POST", `/v1/conversations/${state.conversationId}/feedback`,
      { message_id: messageId, rating });
    if (!response.ok) { showError(errorText(response.status, await readJson(response))); return; }
    box.querySelectorAll("button").forEach((b) => {
      b.setAttribute("aria-pressed", String(b.dataset.testid === `thumb-${rating}`));
    });
    box.title = TEXT.thanks;
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); send(input.value); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(input.value); }
  });
  humanButton.addEventListener("click", () => send(TEXT.humanRequest));
  endButton.addEventListener("click", () => endChat().catch(() => showError(TEXT.network)));
  surveyForm.addEventListener("submit", (event) => submitSurvey(event).catch(() => showError(TEXT.network)));
  $("new-chat").addEventListener("click", () => { sessionStorage.removeItem(STORE); newConversation(); });

  translatePage();
  buildSurvey();
  if (!KEY || KEY.startsWith("{{")) { showError(TEXT.noKey); setStatus("closed"); return; }
  openConversation().catch(() => showError(TEXT.network)).finally(() => {
    document.body.dataset.ready = "true";
  });
})();
