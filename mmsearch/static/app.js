// mmsearch web page: text, image and "more like this" search over the server's JSON API.
// No framework and no external resources: everything comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), qInput = $("q"), results = $("results"), statusLine = $("status");
const dropZone = $("drop-zone"), fileInput = $("image-input");
const state = { image: null, imageUrl: null, last: null };

function options() {
  const params = new URLSearchParams();
  params.set("k", $("k").value);
  params.set("type", form.querySelector("input[name=type]:checked").value);
  const minScore = $("min-score").value.trim();
  if (minScore !== "") params.set("min_score", minScore);
  return params;
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function call(url, init) {
  const response = await fetch(url, init);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return body;
}

// One function runs every kind of query so the filters can re-run the last one.
async function run(query) {
  state.last = query;
  const params = options();
  let url, init;
  if (query.kind === "similar") {
    url = `api/items/${query.id}/similar?${params}`;
  } else if (query.image) {
    const data = new FormData();
    for (const [key, value] of params) data.append(key, value);
    if (query.text) data.append("q", query.text);
    data.append("images", query.image, query.image.name || "upload");
    url = "api/search"; init = { method: "POST", body: data };
  } else {
    params.set("q", query.text);
    url = `api/search?${params}`;
  }
  setStatus("Searching…");
  results.setAttribute("aria-busy", "true");
  try {
    const answer = await call(url, init);
    render(answer.hits);
    setStatus(`${answer.hits.length} result${answer.hits.length === 1 ? "" : "s"} for ${describe(query)} ` +
              `(${answer.took_ms.toFixed(0)} ms)`);
  } catch (error) {
    results.replaceChildren();
    setStatus(`Search failed: ${error.message}`, true);
  } finally {
    results.removeAttribute("aria-busy");
  }
}

function describe(query) {
  if (query.kind === "similar") return `items like ${query.name} (#${query.id})`;
  const parts = [];
  if (query.text) parts.push(`“${query.text}”`);
  if (query.image) parts.push(`image ${query.image.name || "(pasted)"}`);
  return parts.join(" + ");
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

function render(hits) {
  const cards = hits.map((hit) => {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = hit.id;
    li.dataset.modality = hit.modality;

    const similar = document.createElement("button");
    similar.type = "button";
    similar.className = "similar";
    similar.title = "More like this";
    similar.setAttribute("aria-label", `More like ${basename(hit.path)}${hit.locator ? " line " + hit.locator : ""}`);
    if (hit.thumbnail_url) {
      const img = document.createElement("img");
      img.src = hit.thumbnail_url;
      img.alt = basename(hit.path);
      img.loading = "lazy";
      similar.append(img);
    } else {
      const text = document.createElement("p");
      text.className = "snippet";
      text.textContent = hit.text || "";
      similar.append(text);
    }
    similar.addEventListener("click", () => {
      clearImage();
      run({ kind: "similar", id: hit.id, name: basename(hit.path) + (hit.locator ? `:${hit.locator}` : "") });
    });

    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "cosine similarity";
    const kind = document.createElement("span");
    kind.textContent = hit.modality;
    const open = document.createElement("a");
    open.className = "open";
    open.href = hit.file_url;
    open.target = "_blank";
    open.rel = "noopener";
    open.textContent = "Open";
    open.setAttribute("aria-label", `Open ${basename(hit.path)}`);
    meta.append(score, kind, open);

    const name = document.createElement("div");
    name.className = "name";
    name.textContent = basename(hit.path) + (hit.locator ? `:${hit.locator}` : "");
    name.title = hit.path + (hit.locator ? `:${hit.locator}` : "");

    li.append(similar, meta, name);
    return li;
  });
  results.replaceChildren(...cards);
}

// -- query image: pick, drop or paste -------------------------------------------------------
function setImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = file;
  state.imageUrl = URL.createObjectURL(file);
  $("query-image-preview").src = state.imageUrl;
  $("query-image-name").textContent = file.name || "pasted image";
  $("query-image").hidden = false;
  $("drop-help").hidden = true;
  run({ kind: "search", text: qInput.value.trim(), image: file });
}

function clearImage() {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = state.imageUrl = null;
  fileInput.value = "";
  $("query-image").hidden = true;
  $("drop-help").hidden = false;
}

fileInput.addEventListener("change", () => setImage(fileInput.files[0]));
dropZone.addEventListener("click", (event) => {
  if (event.target.closest("#clear-image")) return;
  fileInput.click();
});
dropZone.addEventListener("keydown", (event) => {
  if (event.target !== dropZone) return;
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  setImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); setImage(file); }
});
$("clear-image").addEventListener("click", (event) => {
  event.stopPropagation();
  clearImage();
  qInput.focus();
});

// -- text search and filters ----------------------------------------------------------------
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = qInput.value.trim();
  if (!text && !state.image) { setStatus("Type something or add an image."); return; }
  run({ kind: "search", text, image: state.image });
});
for (const control of form.querySelectorAll("input[name=type], #k, #min-score")) {
  control.addEventListener("change", () => { if (state.last) run(state.last); });
}

// -- keyboard: "/" focuses the search box, arrow keys move between results --------------------
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && document.activeElement !== qInput && !event.target.matches("input, select, textarea")) {
    event.preventDefault();
    qInput.focus();
    qInput.select();
  }
});
results.addEventListener("keydown", (event) => {
  const buttons = [...results.querySelectorAll("button.similar")];
  const at = buttons.indexOf(document.activeElement);
  if (at < 0) return;
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (step) { event.preventDefault(); buttons[Math.max(0, Math.min(buttons.length - 1, at + step))].focus(); }
});

// -- index stats in the header --------------------------------------------------------------
call("api/info").then((info) => {
  $("stats").textContent = `${info.items} items (${info.images} images, ${info.texts} texts) · model ${basename(info.model.name)}`;
}).catch(() => { $("stats").textContent = ""; });
