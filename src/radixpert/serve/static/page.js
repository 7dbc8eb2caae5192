// The page of `radixpert serve`: upload a radiograph, stream its report, ask follow-up
// questions, see the boxes of the answers and the attention over the image, copy the report.
// Everything goes to the server that served this page; model output is inserted as text only
// (textContent), never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "radixpert.token";
const COLOURS = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"];

const state = {
  config: null,
  imageURL: null, // the uploaded file as a data: URL (sent with the first user message)
  width: 0,
  height: 0,
  messages: [], // the conversation, OpenAI messages; the image is in the first user message
  report: "", // the first answer
  boxes: [], // {box: [x1, y1, x2, y2], label, answer}
  busy: false,
  attention: null,
};

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

// A clear message for a failed response: status and the server's {"error": {...}} body.
function describe(status, body) {
  const err = (body && body.error) || {};
  const detail = err.message || "";
  if (status === 401) {
    return "Not authorised: this server needs its bearer token. Enter it under Token and press Use token.";
  }
  if (status === 413) {
    const limit = state.config ? ` (the limit is ${formatBytes(state.config.max_image_bytes)} per image)` : "";
    return `The image is too large for this server${limit}. ${detail}`.trim();
  }
  if (status === 503) {
    return "The server is busy (its queue is full or the request waited too long). Try again in a moment.";
  }
  if (status === 400 && err.param && String(err.param).startsWith("image")) {
    return `This file is not an image the server can read (PNG, JPEG or DICOM): ${detail}`;
  }
  if (status === 400 && err.param && String(err.param).includes("content[")) {
    return `The image was refused: ${detail}`;
  }
  return `Request failed (${status}): ${detail || "no details"}`;
}

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.round(n / 1024)} KB`;
}

async function post(path, payload) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(payload) });
  } catch (e) {
    throw new Error(`The server cannot be reached (${e.message}).`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(response.status, body));
  return body;
}

async function loadModels() {
  const select = $("model");
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (e) {
    showError(`The server cannot be reached (${e.message}).`);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    showError(describe(response.status, body));
    return;
  }
  const chosen = select.value;
  select.replaceChildren();
  for (const m of body.data) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = `${m.id} (${m.family})`;
    select.append(option);
  }
  if (chosen && body.data.some((m) => m.id === chosen)) select.value = chosen;
  showError("");
  updateButtons();
}

function updateButtons() {
  const ready = Boolean(state.imageURL) && $("model").options.length > 0 && !state.busy;
  $("ask").disabled = !ready || !state.report;
  $("attention").disabled = !ready || !state.report;
  $("copy").disabled = !state.report;
}

// ---------------------------------------------------------------------------------- the image

function fileAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      let url = String(reader.result);
      const name = file.name.toLowerCase();
      // A browser gives DICOM files no (or a generic) type; the server reads the bytes.
      if (name.endsWith(".dcm") || name.endsWith(".dicom") || !file.type) {
        url = "data:application/dicom;base64," + url.slice(url.indexOf(",") + 1);
      }
      resolve(url);
    };
    reader.onerror = () => reject(new Error(`Cannot read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

async function onFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  showError("");
  resetConversation();
  let url;
  try {
    url = await fileAsDataURL(file);
    setStatus(`Reading ${file.name} ...`);
    const shown = await post("/page/decode", { image: url });
    state.imageURL = url;
    state.width = shown.width;
    state.height = shown.height;
    const img = $("image");
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error("The browser cannot show the decoded image."));
      img.src = shown.png;
    });
    $("boxes-layer").setAttribute("viewBox", `0 0 ${shown.width} ${shown.height}`);
    $("stage").hidden = false;
    setStatus(`${file.name}: ${shown.width} x ${shown.height} pixels${shown.dicom ? " (DICOM)" : ""}`);
  } catch (e) {
    state.imageURL = null;
    $("stage").hidden = true;
    setStatus("");
    showError(e.message);
    return;
  }
  await startReport();
}

// The conversation's first turn: the image and the report prompt the model was trained with.
async function startReport() {
  resetConversation();
  if (!state.imageURL) return;
  const prompt = state.config.report_prompt;
  state.messages.push({
    role: "user",
    content: [
      { type: "image_url", image_url: { url: state.imageURL } },
      { type: "text", text: prompt },
    ],
  });
  await answer($("report"), true);
}

function resetConversation() {
  state.messages = [];
  state.report = "";
  state.boxes = [];
  state.attention = null;
  $("report").textContent = "";
  $("report").removeAttribute("data-state");
  $("turns").replaceChildren();
  $("boxes").replaceChildren();
  $("boxes-layer").replaceChildren();
  hideAttention();
  $("attention-choice").replaceChildren();
  $("attention-info").textContent = "";
  updateButtons();
}

// ------------------------------------------------------------------------------- streaming

// Streams the answer to state.messages into `target` (text only), then keeps it in the history.
async function answer(target, isReport) {
  state.busy = true;
  updateButtons();
  target.textContent = "";
  target.dataset.state = "streaming";
  target.dataset.chunks = "0";
  setStatus("Generating ...");
  let text = "";
  let failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("model").value || undefined, messages: state.messages, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(describe(response.status, body));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const { value, done: finished } = await reader.read();
      if (finished) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") {
          done = true;
          break;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(describe(503, chunk));
        for (const choice of chunk.choices || []) {
          const piece = (choice.delta && choice.delta.content) || "";
          if (piece && choice.index === 0) {
            text += piece;
            target.textContent = text;
            target.dataset.chunks = String(Number(target.dataset.chunks) + 1);
          }
        }
      }
    }
  } catch (e) {
    failure = e;
  }
  state.busy = false;
  if (failure) {
    target.dataset.state = "failed";
    state.messages.pop(); // the question was not answered: ask it again
    setStatus("");
    showError(failure.message);
    updateButtons();
    return;
  }
  target.dataset.state = "done";
  state.messages.push({ role: "assistant", content: text });
  if (isReport) state.report = text;
  setStatus("Done.");
  updateButtons();
  await addBoxes(text, state.messages.length - 1);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy || !state.report) return;
  showError("");
  $("question").value = "";
  const turn = document.createElement("div");
  turn.className = "turn";
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = "You";
  const q = document.createElement("div");
  q.className = "question";
  q.textContent = question;
  const who2 = document.createElement("div");
  who2.className = "who";
  who2.textContent = "Model";
  const a = document.createElement("div");
  a.className = "answer";
  turn.append(who, q, who2, a);
  $("turns").append(turn);
  state.messages.push({ role: "user", content: question });
  await answer(a, false);
}

// ---------------------------------------------------------------------------------- boxes

async function addBoxes(text, index) {
  let found;
  try {
    found = await post("/page/boxes", { text });
  } catch (e) {
    showError(e.message);
    return;
  }
  for (const b of found.boxes) state.boxes.push({ ...b, answer: index });
  drawBoxes();
  if (found.invalid.length) {
    setStatus(`${found.invalid.length} box(es) in the answer are not valid: ` +
      found.invalid.map((b) => `${b.text} (${b.reason})`).join("; "));
  }
}

function drawBoxes() {
  const layer = $("boxes-layer");
  const list = $("boxes");
  layer.replaceChildren();
  list.replaceChildren();
  const w = state.width;
  const h = state.height;
  // Labels about 14 screen pixels high, whatever the image's size in pixels.
  const size = (14 * w) / Math.max(1, $("image").clientWidth || w);
  state.boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b.box;
    const colour = COLOURS[i % COLOURS.length];
    const name = b.label || `box ${i + 1}`;
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("x", String(x1 * w));
    rect.setAttribute("y", String(y1 * h));
    rect.setAttribute("width", String((x2 - x1) * w));
    rect.setAttribute("height", String((y2 - y1) * h));
    rect.setAttribute("stroke", colour);
    rect.dataset.box = JSON.stringify(b.box);
    rect.dataset.label = b.label || "";
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", String(x1 * w + 2));
    label.setAttribute("y", String(y1 * h > size ? y1 * h - 3 : y1 * h + size));
    label.setAttribute("font-size", String(size));
    label.setAttribute("fill", colour);
    label.setAttribute("stroke-width", String(size * 0.06));
    label.textContent = name;
    layer.append(rect, label);
    const item = document.createElement("li");
    item.textContent = `${name}: [${b.box.map((v) => v.toFixed(2)).join(", ")}]`;
    item.style.color = colour;
    list.append(item);
  });
}

// ------------------------------------------------------------------------------- attention

function hideAttention() {
  $("attention-overlay").hidden = true;
  $("attention-hide").hidden = true;
  $("attention-choice").hidden = true;
}

async function showAttention() {
  if (!state.report) return;
  showError("");
  const phrase = $("phrase").value.trim();
  const labels = state.boxes.map((b) => b.label).filter((l) => l);
  const phrases = [...new Set([phrase, ...labels].filter((p) => p))];
  state.busy = true;
  updateButtons();
  setStatus("Computing attention maps ...");
  try {
    const body = await post("/v1/report", {
      model: $("model").value || undefined,
      image: state.imageURL,
      prompt: state.config.report_prompt,
      report: state.report,
      attention: true,
      phrases,
    });
    const att = body.attention;
    if (att.error) throw new Error(att.error);
    state.attention = att;
    const choice = $("attention-choice");
    choice.replaceChildren();
    att.maps.forEach((m, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.disabled = !m.overlay;
      option.textContent = m.kind === "report" ? "whole report"
        : m.kind === "sentence" ? `sentence: ${m.text}`
        : `"${m.text}"${m.found ? "" : " (not in the report)"}`;
      choice.append(option);
    });
    choice.hidden = att.maps.length < 2;
    pickAttention(0);
    const a = att.aggregation;
    $("attention-info").textContent =
      `Attention of the report's tokens over the image: ${a.heads} over heads, ${a.layers} over layers; ${att.geometry.note}.`;
    setStatus("Attention shown.");
  } catch (e) {
    setStatus("");
    showError(e.message);
  }
  state.busy = false;
  updateButtons();
}

function pickAttention(i) {
  const m = state.attention && state.attention.maps[i];
  if (!m || !m.overlay) return;
  const overlay = $("attention-overlay");
  overlay.src = m.overlay;
  overlay.dataset.map = m.kind === "report" ? "report" : m.text;
  overlay.hidden = false;
  $("attention-hide").hidden = false;
  $("attention-choice").value = String(i);
}

// ------------------------------------------------------------------------------------ copy

async function copyReport() {
  const text = state.report;
  if (!text) return;
  let how = "clipboard";
  try {
    if (!navigator.clipboard || !window.isSecureContext) throw new Error("no clipboard API");
    await navigator.clipboard.writeText(text);
  } catch (e) {
    // Fallback: a hidden text area and the older copy command (works outside secure contexts).
    how = "fallback";
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    area.style.position = "fixed";
    area.style.left = "-10000px";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) {
      showError("The browser refused to copy; select the report text and copy it by hand.");
      return;
    }
  }
  $("copy").dataset.copied = how;
  setStatus(`Report copied (${text.length} characters).`);
}

// ---------------------------------------------------------------------------------- start

async function start() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("save-token").addEventListener("click", () => {
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    loadModels();
  });
  $("file").addEventListener("change", onFile);
  $("ask-form").addEventListener("submit", ask);
  $("copy").addEventListener("click", copyReport);
  $("attention").addEventListener("click", showAttention);
  $("attention-hide").addEventListener("click", hideAttention);
  $("attention-choice").addEventListener("change", (e) => pickAttention(Number(e.target.value)));
  $("model").addEventListener("change", startReport);
  try {
    const response = await fetch("/page/config");
    state.config = await response.json();
  } catch (e) {
    showError(`The server cannot be reached (${e.message}).`);
    return;
  }
  await loadModels();
}

document.addEventListener("DOMContentLoaded", start);
