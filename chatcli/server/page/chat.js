// The chat page of `chatcli serve`: a model picker, a conversation and a composer, talking to
// the server's OpenAI-compatible API (/v1/models, /v1/chat/completions with stream: true).
//
// Safety rule: text from the model or the server reaches the page only through `textContent`
// and `document.createElement` (see the Markdown renderer below), never through innerHTML or
// anything else that parses HTML.
"use strict";

const TOKEN_KEY = "chatcli.token"; // sessionStorage: the server's token, for this tab only
const MODEL_KEY = "chatcli.model"; // localStorage: the last model picked

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), input: $("input"), send: $("send"), stop: $("stop"), fresh: $("new"),
  messages: $("messages"), empty: $("empty"), composer: $("composer"),
  tokenForm: $("token-form"), tokenInput: $("token-input"),
};

let conversation = []; // [{role, content}], sent whole with each request
let controller = null; // the AbortController of the answer streaming now, if any

// -- the token ----------------------------------------------------------------------------------

// `#token=...` in the address (as `chatcli serve` prints it) is kept for this tab, then taken
// out of the address bar so it does not linger in the history or a screenshot.
function takeTokenFromAddress() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

let tokenAsked = null; // the pending question, shared by every request that got a 401

// Show the token form; resolves once a token is entered.
function askForToken() {
  tokenAsked ||= new Promise((resolve) => {
    ui.tokenForm.hidden = false;
    ui.tokenInput.value = "";
    ui.tokenInput.focus();
    ui.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, ui.tokenInput.value.trim());
      ui.tokenForm.hidden = true;
      tokenAsked = null;
      resolve();
    }, { once: true });
  });
  return tokenAsked;
}

// fetch() with the token; on a 401, ask for the token and try again.
async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askForToken();
  }
}

// The message of a non-2xx response: its {"error": {"message"}}, else its text, else the status.
async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const message = JSON.parse(text).error.message;
    if (message) return String(message);
  } catch { /* not the error object */ }
  return text.trim().slice(0, 500) || `HTTP ${response.status} ${response.statusText}`;
}

// -- the model picker ---------------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await api("/v1/models");
    if (!response.ok) throw new Error(await errorOf(response));
    const ids = ((await response.json()).data || []).map((model) => String(model.id));
    const option = (id) => Object.assign(element("option", "", id), { value: id });
    ui.model.replaceChildren(...ids.map(option));
    const saved = localStorage.getItem(MODEL_KEY);
    if (ids.includes(saved)) ui.model.value = saved; // else the first: the server's default
    if (!ids.length) showNotice("The server lists no models.");
  } catch (error) {
    showNotice(`Could not list the models: ${error.message}`);
  }
}

// -- messages -----------------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Follow the conversation down as it grows, unless the reader scrolled up.
const nearBottom = () => innerHeight + scrollY >= document.body.scrollHeight - 80;
const keepScrolled = (wasNearBottom) => wasNearBottom && scrollTo(0, document.body.scrollHeight);

const showNotice = (text) => ui.messages.append(element("p", "notice", text));

function addMessage(role) {
  ui.empty.hidden = true;
  const message = element("div", `message ${role}`);
  ui.messages.append(message);
  return message;
}

// An answer: thinking (collapsed, hidden until there is some), body (Markdown), status line.
function addAnswer() {
  const thinking = element("details", "reasoning");
  const thinkingText = element("div", "reasoning-text");
  thinking.append(element("summary", "", "Thinking"), thinkingText);
  const body = element("div", "body");
  const status = element("div", "status");
  thinking.hidden = status.hidden = true;
  addMessage("assistant").append(thinking, body, status);
  return { thinking, thinkingText, body, status };
}

function setState(state) {
  document.body.dataset.state = state;
  ui.send.disabled = state === "streaming";
  ui.stop.hidden = state !== "streaming";
}

// -- streaming an answer ------------------------------------------------------------------------

// Calls onData(payload) for each `data: ...` line of a server-sent event stream, until the
// stream ends or onData returns false.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    buffer += decoder.decode(value, { stream: !done });
    const lines = buffer.split(/\r?\n/);
    buffer = done ? "" : lines.pop(); // a line not complete yet waits for the rest
    for (const line of lines) {
      if (line.startsWith("data:") && onData(line.slice(5).trim()) === false) {
        reader.cancel().catch(() => {});
        return;
      }
    }
    if (done) return;
  }
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || controller) return;
  if (!ui.model.value) return showNotice("There is no model to ask: the server listed none.");
  ui.input.value = "";
  addMessage("user").append(element("div", "body", text));
  scrollTo(0, document.body.scrollHeight);
  // This conversation: "New chat" mid-answer starts another, which this answer stays out of.
  const turns = conversation;
  turns.push({ role: "user", content: text });

  const answer = addAnswer();
  let content = "", reasoning = "";
  let finish = null; // the finish_reason, once the last chunk gives it
  let problem = ""; // how the answer went wrong, for its status line
  const view = markdownView(answer.body);
  let unrendered = false; // the Markdown renderer failed: the answer shows as plain text
  let framePending = false;
  let renderedAt = 0, renderCost = 0; // when the last render ended, and how long it took (ms)
  const render = () => {
    framePending = false;
    const started = performance.now();
    const wasNearBottom = nearBottom();
    if (!unrendered) {
      try {
        view(content);
      } catch {
        unrendered = true; // e.g. a RangeError: not tried again for this answer
      }
    }
    if (unrendered) { // the raw text, as one Text node, its line breaks kept
      const raw = element("p", "unrendered", content);
      raw.style.whiteSpace = "pre-wrap";
      answer.body.replaceChildren(raw);
    }
    answer.thinkingText.textContent = reasoning;
    answer.thinking.hidden = !reasoning;
    keepScrolled(wasNearBottom);
    renderedAt = performance.now();
    renderCost = renderedAt - started;
  };
  // Re-render at most once per animation frame, however fast the pieces come, and while renders
  // are slow (a long answer) at most one part of the time in four, so the page stays responsive.
  const scheduleRender = () => {
    if (framePending) return;
    framePending = true;
    const frame = () => requestAnimationFrame(() => framePending && render());
    const wait = renderedAt + 3 * renderCost - performance.now();
    if (wait > 0) setTimeout(frame, wait);
    else frame();
  };

  controller = new AbortController();
  setState("streaming");
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: ui.model.value, messages: turns, stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorOf(response));
    await readEvents(response, (data) => {
      if (data === "[DONE]") return false;
      const event = JSON.parse(data);
      if (event.error) {
        problem = `error: ${event.error.message || JSON.stringify(event.error)}`;
        return false;
      }
      const choice = event.choices?.[0];
      if (!choice) return true; // e.g. a last chunk with only the usage
      const delta = choice.delta || {};
      if (typeof delta.content === "string") content += delta.content;
      const thought = delta.reasoning_content ?? delta.reasoning;
      if (typeof thought === "string") reasoning += thought;
      if (choice.finish_reason) finish = choice.finish_reason;
      scheduleRender();
      return true;
    });
    if (!problem && !finish) problem = "the answer ended early: the stream closed unfinished";
  } catch (error) {
    problem = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
  } finally {
    controller = null;
  }
  if (!problem && finish === "length") problem = "cut at the token limit";
  else if (!problem && finish !== "stop") problem = `ended: ${finish}`;
  try {
    render();
  } finally {
    // Whatever happened above, the page is usable again: Send works, the status says it all.
    const wasNearBottom = nearBottom();
    if (unrendered) {
      problem = ["could not render this answer; shown as text", problem].filter(Boolean).join("; ");
    }
    answer.status.textContent = problem;
    answer.status.hidden = !problem;
    keepScrolled(wasNearBottom);
    if (content) turns.push({ role: "assistant", content }); // kept even when cut short
    setState("idle");
    ui.input.focus();
  }
}

const stop = () => controller?.abort();

function newChat() {
  stop();
  conversation = [];
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  ui.input.focus();
}

// -- Markdown, to DOM nodes (never HTML) -------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+([^]*)$/; // its closing #s are taken off by headingText
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^ {0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/;
const BLANK = /^\s*$/;
const indentOf = (line) => line.length - line.trimStart().length;
const startsBlock = (line) => [FENCE, HEADING, RULE, QUOTE, ITEM].some((re) => re.test(line));

// How deep block quotes and lists nest, and emphasis and links inside each other: what is
// deeper shows as plain text. This bounds the renderer's recursion whatever the model writes.
const MAX_BLOCK_DEPTH = 20;
const MAX_INLINE_DEPTH = 20;

// Markdown source -> a DocumentFragment: paragraphs, headings, fenced code, lists, block
// quotes, rules. A fence not closed yet (mid-stream) shows as code up to where the text ends.
function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(source.split(/\r?\n/), fragment, 0);
  return fragment;
}

// Renders Markdown that grows at its end (a streamed answer) into `box`, once per call with
// the source so far. A top-level block depends only on its own lines and the first line of
// the block after it; so once the block after it starts on a complete line (not the last,
// which may still grow) it is final and stays as it is: each call builds only the rest.
function markdownView(box) {
  let doneChars = 0; // the source before this is rendered for good
  let tail = []; // the nodes rendered from the rest, built again on each call
  return (source) => {
    const lines = source.slice(doneChars).split(/\r?\n/);
    const fragment = document.createDocumentFragment();
    const blocks = []; // [first line, nodes before it in the fragment] of each top-level block
    renderBlocks(lines, fragment, 0, blocks);
    // The last block starting on a complete line: those before it are final.
    let last = blocks.length - 1;
    while (last >= 0 && blocks[last][0] >= lines.length - 1) last--;
    const [finalLines, finalNodes] = last >= 0 ? blocks[last] : [0, 0];
    for (const node of tail) node.remove();
    tail = [...fragment.childNodes].slice(finalNodes);
    box.append(fragment);
    for (let i = 0; i < finalLines; i++) { // past each final line and its line break
      doneChars += lines[i].length;
      doneChars += source[doneChars] === "\r" ? 2 : 1;
    }
  };
}

// Lines of Markdown -> nodes appended to parent. `depth` is how deep in block quotes and list
// items they are; `blocks`, when given, gets [first line, nodes before it in parent] for each
// block (one node each).
function renderBlocks(lines, parent, depth, blocks) {
  if (depth >= MAX_BLOCK_DEPTH) return plainLines(lines, parent);
  let i = 0, match;
  while (i < lines.length) {
    const line = lines[i];
    if (blocks && !BLANK.test(line)) blocks.push([i, parent.childNodes.length]);
    if (BLANK.test(line)) {
      i++;
    } else if ((match = FENCE.exec(line))) {
      const code = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(match[1]); i++) {
        code.push(lines[i]);
      }
      i++; // the closing fence
      parent.append(codeBlock(code.join("\n"), match[2]));
    } else if ((match = HEADING.exec(line))) {
      renderInline(headingText(match[2]), parent.appendChild(element(`h${match[1].length}`)));
      i++;
    } else if (RULE.test(line)) {
      parent.append(element("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      for (; i < lines.length && QUOTE.test(lines[i]); i++) inner.push(lines[i].replace(QUOTE, ""));
      renderBlocks(inner, parent.appendChild(element("blockquote")), depth + 1);
    } else if (ITEM.test(line)) {
      i = renderList(lines, i, parent, depth);
    } else {
      // A paragraph: lines up to a blank line or another block; its line breaks are kept.
      const paragraph = parent.appendChild(element("p"));
      for (let first = true; i < lines.length && !BLANK.test(lines[i]); i++, first = false) {
        if (!first && startsBlock(lines[i])) break;
        if (!first) paragraph.append(element("br"));
        renderInline(lines[i].trim(), paragraph);
      }
    }
  }
}

// The heading's text: without trailing spaces, nor closing #s that follow a space. (Not a
// regular expression: /(\s+#+)?\s*$/ after a lazy match takes time growing with the square
// of the length of a line full of spaces.)
function headingText(text) {
  text = text.trimEnd();
  let cut = text.length;
  while (cut > 0 && text[cut - 1] === "#") cut--;
  return cut < text.length && cut > 0 && /\s/.test(text[cut - 1])
    ? text.slice(0, cut).trimEnd() : text;
}

// Lines too deep to render as Markdown: their text as it is, one line break each.
function plainLines(lines, parent) {
  const paragraph = parent.appendChild(element("p"));
  lines.forEach((line, i) => {
    if (i) paragraph.append(element("br"));
    paragraph.append(line);
  });
}

// The list starting at lines[start]. An item's indented lines (nested lists too) render as
// blocks inside it. Returns the index of the first line after the list.
function renderList(lines, start, parent, depth) {
  const ordered = /\d/.test(ITEM.exec(lines[start])[1]);
  const list = parent.appendChild(element(ordered ? "ol" : "ul"));
  const number = parseInt(ITEM.exec(lines[start])[1], 10);
  if (ordered && number !== 1) list.start = number;
  let i = start, match;
  while (i < lines.length && (match = ITEM.exec(lines[i])) && /\d/.test(match[1]) === ordered) {
    const body = [match[2]];
    for (i++; i < lines.length; i++) {
      const line = lines[i];
      if (BLANK.test(line)) {
        // A blank line stays in the item only when an indented line follows.
        if (i + 1 >= lines.length || indentOf(lines[i + 1]) < 2) break;
        body.push("");
      } else if (indentOf(line) >= 2) {
        body.push(line.slice(Math.min(indentOf(line), match[1].length + 1)));
      } else if (!startsBlock(line)) {
        body.push(line.trim()); // a lazy continuation of the item's text
      } else {
        break;
      }
    }
    const item = list.appendChild(element("li"));
    renderBlocks(body, item, depth + 1);
    // A tight item holds its first paragraph's text directly, not in a <p>. (Moved a node at a
    // time: spread into arguments, a long paragraph's nodes would overflow the stack.)
    const first = item.firstElementChild;
    if (first?.tagName === "P") {
      while (first.firstChild) item.insertBefore(first.firstChild, first);
      first.remove();
    }
    while (i < lines.length && BLANK.test(lines[i])) i++;
  }
  return i;
}

function codeBlock(code, language) {
  const block = element("div", "code");
  const bar = block.appendChild(element("div", "code-bar"));
  const copy = element("button", "copy", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => {
    navigator.clipboard.writeText(code).then(
      () => (copy.textContent = "Copied"), () => (copy.textContent = "Copy failed"));
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  bar.append(element("span", "code-label", language || "code"), copy);
  block.appendChild(element("pre")).append(element("code", "", code));
  return block;
}

// Inline patterns, matched where the scan stands (sticky). Each span has an opener, and the
// whole span (opener, text, closer).
const INLINE = {
  text: /[^\\`*_[]+/y, // nothing special: taken as it is, in one go
  escape: /\\([!-/:-@[-`{-~])/y,
  codeOpen: /`+/y,
  code: /(`+)([^]*?[^`])\1(?!`)/y,
  strongOpen: /(\*\*|__)(?=\S)/y,
  strong: /(\*\*|__)(?=\S)([^]*?\S)\1(?!\*)/y,
  emOpen: /[*_](?=[^\s*_])/y,
  em: /([*_])(?=[^\s*_])([^]*?[^\s\\])\1(?!\1)/y,
  link: /\[([^\]]{0,2000})\]\(\s*(\S{1,4000}?)\s*\)/y,
};
const matchAt = (re, text, i) => ((re.lastIndex = i), re.exec(text));

// Inline Markdown -> nodes appended to parent: `code`, **bold**, *italic*, [text](url) for
// http(s) URLs only, and backslash escapes. Everything else is text, character for character.
// `depth` is how many spans (emphasis, links) this text is inside; deeper, it is plain text.
function renderInline(text, parent, depth = 0) {
  if (depth >= MAX_INLINE_DEPTH) {
    parent.append(text);
    return;
  }
  let plain = "";
  const flush = () => { if (plain) parent.append(plain); plain = ""; }; // a Text node
  const wrap = (tag, inner) => {
    flush();
    renderInline(inner, parent.appendChild(element(tag)), depth + 1);
  };
  // `_` emphasis only at word edges: snake_case_names stay as written.
  const atWordEdges = (i, match) => text[i] === "*" ||
    !/\w/.test(text[i - 1] || "") && !/\w/.test(text[i + match[0].length] || "");
  // An opener with no closer after it has none after any later one of its kind either: looked
  // for once, not again (else "*a *a *a ..." would take time growing with its length squared).
  const unclosed = new Set();
  const span = (kind, i) => {
    const opener = matchAt(INLINE[`${kind}Open`], text, i);
    if (!opener || unclosed.has(kind + opener[0])) return null;
    const found = matchAt(INLINE[kind], text, i);
    if (!found) unclosed.add(kind + opener[0]);
    return found;
  };
  const lastLinkMiddle = text.lastIndexOf("]("); // no link starts after it
  let i = 0, m;
  while (i < text.length) {
    if ((m = matchAt(INLINE.text, text, i))) {
      plain += m[0];
    } else if ((m = matchAt(INLINE.escape, text, i))) {
      plain += m[1];
    } else if ((m = span("code", i))) {
      flush();
      parent.append(element("code", "", m[2].replace(/^ (.*) $/, "$1")));
    } else if ((m = span("strong", i)) && atWordEdges(i, m)) {
      wrap("strong", m[2]);
    } else if ((m = span("em", i)) && atWordEdges(i, m)) {
      wrap("em", m[2]);
    } else if (i < lastLinkMiddle && (m = matchAt(INLINE.link, text, i)) && safeUrl(m[2])) {
      flush();
      const link = parent.appendChild(element("a"));
      link.href = safeUrl(m[2]);
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      renderInline(m[1] || link.href, link, depth + 1);
    } else {
      m = [text[i]]; // a lone special character, or a link to anything but http(s): as text
      plain += m[0];
    }
    i += m[0].length;
  }
  flush();
}

// The URL, normalised, when it is http: or https:; else null.
function safeUrl(raw) {
  let url = null;
  try { url = new URL(raw); } catch { /* not a URL */ }
  return url?.protocol === "http:" || url?.protocol === "https:" ? url.href : null;
}

// -- wiring -------------------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
ui.input.addEventListener("keydown", (event) => { // Enter sends, Shift+Enter is a new line
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", stop);
ui.fresh.addEventListener("click", newChat);
ui.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, ui.model.value));

takeTokenFromAddress();
setState("idle");
loadModels();
ui.input.focus();
