// mmsearch web page: text, image and "more like this" search over the server's JSON API.
// No framework and no external resources: everything comes from this server.
// The query (text, "more like this" item, type, count, min score) lives in the address
// (?q=...&item=...&type=...), so searches can be bookmarked and Back returns to earlier results.
// A server started with a token is unlocked once with /#token=...: the page trades it for a
// session cookie (HttpOnly), which thumbnails and links then carry too.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), qInput = $("q"), results = $("results"), statusLine = $("status");
const dropZone = $("drop-zone"), fileInput = $("image-input");
const state = { image: null, imageUrl: null, last: null, ticket: 0 };
const DEFAULT_TYPE = "image";

function options() {
  const params = new URLSearchParams();
  params.set("k", $("k").value);
  params.set("type", form.querySelector("input[name=type]:checked").value);
  const minScore = $("min-score").value.trim();
  if (minScore !== "") params.set("min_score", minScore);
  if ($("dedup").checked) params.set("dedup", "true");
  if ($("after").value) params.set("after", $("after").value);
  if ($("before").value) params.set("before", dayAfter($("before").value));  // the "to" day is included
  for (const name of ["camera", "near"]) {
    const value = $(name).value.trim();
    if (value) params.set(name, value);
  }
  if ($("sort").value !== "relevance") params.set("sort", $("sort").value);
  // Documents (an image with its caption) ranked by both vectors; words matched by BM25.
  if ($("fusion").value !== "none") params.set("fusion", $("fusion").value);
  if ($("mode").value !== "vector") params.set("mode", $("mode").value);
  return params;
}

// "YYYY-MM-DD" of the day after ``day`` (the API's ``before`` is exclusive).
function dayAfter(day) {
  const next = new Date(`${day}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().slice(0, 10);
}

function dayBefore(day) {
  const previous = new Date(`${day}T00:00:00Z`);
  previous.setUTCDate(previous.getUTCDate() - 1);
  return previous.toISOString().slice(0, 10);
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

class AuthRequired extends Error {}

async function call(url, init) {
  const response = await fetch(url, init);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) {
    showAuth();
    throw new AuthRequired("this server needs its access token");
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return body;
}

// -- the query in the address -----------------------------------------------------------------
function addressOf(query) {
  const params = options();
  if (query.kind === "similar") params.set("item", query.id);
  else if (query.text && !query.image) params.set("q", query.text);
  // An uploaded image cannot live in an address: such a search leaves only the options there.
  return `${location.pathname}?${params}`;
}

function remember(query, how) {
  if (how === "none") return;
  const address = addressOf(query);
  if (address === location.pathname + location.search) return;
  if (how === "replace") history.replaceState(null, "", address);
  else history.pushState(null, "", address);
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  const type = params.get("type");
  // Images unless the address says otherwise: on cross-modal cosines texts outrank images, so a
  // description would list notes before the photos it describes (as `mmsearch query --type image`).
  const radio = form.querySelector(`input[name=type][value="${CSS.escape(type || DEFAULT_TYPE)}"]`);
  (radio || form.querySelector(`input[name=type][value=${DEFAULT_TYPE}]`)).checked = true;
  const k = params.get("k");
  if (k && [...$("k").options].some((o) => o.value === k)) $("k").value = k;
  $("min-score").value = params.get("min_score") || "";
  $("dedup").checked = params.get("dedup") === "true";
  $("after").value = params.get("after") || "";
  const before = params.get("before") || "";
  $("before").value = /^\d{4}-\d{2}-\d{2}$/.test(before) ? dayBefore(before) : "";
  $("camera").value = params.get("camera") || "";
  $("near").value = params.get("near") || "";
  const sort = params.get("sort");
  $("sort").value = ["date", "date-asc"].includes(sort) ? sort : "relevance";
  for (const [id, fallback] of [["fusion", "none"], ["mode", "vector"]]) {
    const value = params.get(id);
    $(id).value = value && [...$(id).options].some((o) => o.value === value) ? value : fallback;
  }
  const item = params.get("item"), text = params.get("q");
  clearImage();
  if (item && /^\d{1,18}$/.test(item)) {
    qInput.value = "";
    run({ kind: "similar", id: item }, "none");
  } else if (text && text.trim()) {
    qInput.value = text;
    run({ kind: "search", text: text.trim(), image: null }, "none");
  } else {
    qInput.value = "";
    state.last = null;
    results.replaceChildren();
    setStatus("");
  }
}

// One function runs every kind of query so the filters can re-run the last one. ``how`` says
// what the address does: "push" (a new search), "replace" (a filter changed) or "none" (it
// came from the address).
async function run(query, how = "push") {
  state.last = query;
  const ticket = ++state.ticket;  // only the latest search may draw (Back pressed quickly, say)
  remember(query, how);
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
    if (query.kind === "similar" && !query.name) {
      const item = await call(`api/items/${query.id}`);
      query.name = basename(item.path) + (item.locator ? `:${item.locator}` : "");
    }
    const answer = await call(url, init);
    if (ticket !== state.ticket) return;
    render(answer.hits);
    setStatus(`${answer.hits.length} result${answer.hits.length === 1 ? "" : "s"} for ${describe(query)} ` +
              `(${answer.took_ms.toFixed(0)} ms)`);
  } catch (error) {
    if (ticket !== state.ticket) return;
    results.replaceChildren();
    setStatus(error instanceof AuthRequired ? "Enter the access token to search." : `Search failed: ${error.message}`,
              error instanceof AuthRequired ? false : true);
  } finally {
    results.removeAttribute("aria-busy");
  }
}

function describe(query) {
  if (query.kind === "similar") return `items like ${query.name || "item"} (#${query.id})`;
  const parts = [];
  if (query.text) parts.push(`“${query.text}”`);
  if (query.image) parts.push(`image ${query.image.name || "(pasted)"}`);
  return parts.join(" + ");
}

// The last part of a path. Only a path without any "/" (a Windows one) splits on backslashes: a
// name that is not UTF-8 arrives with its odd bytes written as \xNN, and those stay in the name.
function basename(path) {
  return path.includes("/") ? path.split("/").pop() : path.split("\\").pop();
}

function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
}

// Replace a video hit's thumbnail by the video itself, playing from the hit's moment (the
// server answers range requests, so the browser seeks without loading the whole file).
function play(button, hit) {
  const video = document.createElement("video");
  video.className = "player";
  video.controls = true;
  video.muted = true;
  video.playsInline = true;
  video.preload = "auto";
  video.dataset.t = String(hit.t);
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = hit.t;
    video.play().catch(() => {});
  }, { once: true });
  video.src = hit.file_url;
  button.replaceWith(video);
  video.focus();
}

// What a fused or hybrid hit matched: its image, its text (caption, sidecar or record) and the
// query's words found in it.
function matchedLine(matched) {
  const line = document.createElement("div");
  line.className = "matched";
  const parts = [];
  if (matched.image) parts.push(`image ${matched.image.cosine.toFixed(2)}`);
  if (matched.text) parts.push(`${matched.text.source} ${matched.text.cosine.toFixed(2)}`);
  if (matched.words && matched.words.length) parts.push(`words: ${matched.words.join(", ")}`);
  line.textContent = parts.join(" · ");
  if (matched.text && matched.text.text) line.title = matched.text.text;
  return line;
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
    const moment = hit.t !== undefined && hit.t !== null;
    if (moment) {
      // A video: the thumbnail is the frame at the moment; a click plays the video from there.
      similar.className = "similar play";
      similar.title = `Play from ${clock(hit.t)}`;
      similar.setAttribute("aria-label", `Play ${basename(hit.path)} from ${clock(hit.t)}`);
      similar.addEventListener("click", () => play(similar, hit));
    } else {
      similar.addEventListener("click", () => {
        clearImage();
        run({ kind: "similar", id: hit.id, name: basename(hit.path) + (hit.locator ? `:${hit.locator}` : "") });
      });
    }

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
    if (hit.taken_at) {
      const taken = document.createElement("span");
      taken.className = "taken";
      taken.textContent = hit.taken_at.slice(0, 10);
      taken.title = `taken ${hit.taken_at.replace("T", " ")} (${hit.date_source})` + (hit.camera ? `, ${hit.camera}` : "")
        + (hit.lat !== undefined && hit.lat !== null ? `, at ${hit.lat.toFixed(4)},${hit.lon.toFixed(4)}` : "");
      meta.append(taken);
    }
    if (moment) {
      const more = document.createElement("button");
      more.type = "button";
      more.className = "more";
      more.textContent = "Similar";
      more.setAttribute("aria-label", `More like ${basename(hit.path)} at ${clock(hit.t)}`);
      more.addEventListener("click", () => {
        clearImage();
        run({ kind: "similar", id: hit.id, name: `${basename(hit.path)} @ ${clock(hit.t)}` });
      });
      meta.append(more);
    }
    if (hit.duplicates && hit.duplicates.length) {
      const dupes = document.createElement("span");
      dupes.className = "dupes";
      dupes.textContent = `+${hit.duplicates.length}`;
      dupes.title = `${hit.duplicates.length} near-duplicate(s) hidden`;
      meta.append(dupes);
    }

    const name = document.createElement("div");
    name.className = "name";
    const where = moment ? `@ ${clock(hit.t)}` + (hit.start !== undefined && hit.end !== undefined
      ? ` (${clock(hit.start)}-${clock(hit.end)})` : "") : "";
    name.textContent = basename(hit.path) + (!moment && hit.locator ? `:${hit.locator}` : "");
    name.title = hit.path + (where ? ` ${where}` : name.textContent.slice(basename(hit.path).length));
    li.append(similar, meta, name);
    if (where) {  // a video's moment on a line of its own: a long file name is cut, never the time
      const when = document.createElement("div");
      when.className = "moment";
      when.textContent = where;
      li.append(when);
    }
    if (hit.matched) li.append(matchedLine(hit.matched));
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
for (const control of form.querySelectorAll("input[name=type], #k, #min-score, #dedup, #after, #before, #camera, #near, #sort, #fusion, #mode")) {
  control.addEventListener("change", () => { if (state.last) run(state.last, "replace"); });
}
window.addEventListener("popstate", fromAddress);

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

// -- access token ------------------------------------------------------------------------------
function showAuth() {
  $("auth-form").hidden = false;
  $("token").focus();
}

async function unlock(token) {
  const response = await fetch("api/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(response.status === 401 ? "wrong token" : `${response.status}: ${response.statusText}`);
  $("auth-form").hidden = true;
}

// The token arrives once in the address (#token=..., or ?token=...) and leaves it at once.
function takeTokenFromAddress() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const params = new URLSearchParams(location.search);
  const token = hash.get("token") || params.get("token");
  if (!token) return null;
  hash.delete("token");
  params.delete("token");
  const rest = hash.toString();
  history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : "") + (rest ? `#${rest}` : ""));
  return token;
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await unlock($("token").value.trim());
    $("token").value = "";
    start();
  } catch (error) {
    setStatus(`Could not unlock: ${error.message}`, true);
  }
});

// -- start: index stats in the header, then the search in the address ---------------------------
async function start() {
  try {
    const info = await call("api/info");
    // As `mmsearch info`: every item counted once, a video's frames as items of their video.
    const parts = [`${info.images} images`, `${info.texts} texts`];
    if (info.videos) parts.push(`${info.video_frames} frames of ${info.videos} videos`);
    $("stats").textContent = `${info.items} items (${parts.join(", ")}) · model ${basename(info.model.name)}`;
  } catch (error) {
    $("stats").textContent = "";
    if (error instanceof AuthRequired) { setStatus("Enter the access token to search."); return; }
  }
  fromAddress();
}

(async () => {
  const token = takeTokenFromAddress();
  if (token) {
    try { await unlock(token); } catch (error) { setStatus(`Could not unlock: ${error.message}`, true); }
  }
  start();
})();
