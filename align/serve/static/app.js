// The align search page: vanilla JS over the service's /v1 API, no build step, no external URLs.
// Everything that comes from the server is put on the page with textContent or as an attribute
// value, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "align.token";

// file extension -> the modality its file is a query of (the "File type" select overrides it)
const EXT_MODALITY = {
  image: "png jpg jpeg gif bmp webp tif tiff",
  audio: "wav mp3 flac ogg oga opus m4a aac",
  video: "mp4 webm mov avi mkv m4v",
  pointcloud: "ply off obj stl glb gltf xyz pts pcd npy npz",
  graph: "smi smiles mol sdf mol2 graphml gml gexf",
  text: "txt",
};
const BY_EXT = {};
for (const [modality, exts] of Object.entries(EXT_MODALITY)) {
  for (const ext of exts.split(" ")) BY_EXT[ext] = modality;
}

let health = null; // the last GET /v1/health answer

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : response.statusText;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail);
    throw new Error(`HTTP ${response.status}: ${text}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadHealth() {
  try {
    health = await api("v1/health");
  } catch (err) {
    $("server").textContent = "Server not reachable or refused the token.";
    showError(String(err.message || err));
    return;
  }
  showError("");
  const names = Object.keys(health.indexes || {});
  const checkpoint = String(health.checkpoint || "model");
  const parts = checkpoint.split("/");
  const short = parts.length > 3 ? `…/${parts.slice(-3).join("/")}` : checkpoint; // the full path: hover
  $("server").textContent =
    `${health.status || "ok"}: ${short}; ` +
    `modalities ${(health.modalities || []).join(", ")}; ${names.length} index(es)`;
  $("server").title = checkpoint;
  const select = $("index");
  const previous = select.value;
  select.replaceChildren();
  for (const name of names) {
    const info = health.indexes[name];
    const option = new Option(`${name} (${info.modality || "?"}, ${info.size} items)`, name);
    select.append(option);
  }
  if (names.includes(previous)) select.value = previous;
  updateFields();
}

function updateFields() {
  const info = health && health.indexes[$("index").value];
  const select = $("filter-field");
  const previous = select.value;
  select.replaceChildren(new Option("none", ""));
  for (const field of (info && info.fields) || []) select.append(new Option(field, field));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function filters() {
  const field = $("filter-field").value;
  const raw = $("filter-value").value.trim();
  if (!field || !raw) return null;
  const values = raw.split(",").map((v) => v.trim()).filter(Boolean);
  // numbers stay numbers (row, numeric labels); a field's values are matched as the index recorded them
  const typed = values.map((v) => (/^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v));
  return { [field]: typed.length === 1 ? typed[0] : typed };
}

function modalityOf(file) {
  if ($("modality").value) return $("modality").value;
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  if (BY_EXT[ext]) return BY_EXT[ext];
  const major = (file.type || "").split("/")[0];
  return ["image", "audio", "video"].includes(major) ? major : null;
}

function kValue() {
  const k = parseInt($("k").value, 10);
  return Number.isFinite(k) && k > 0 ? k : 10;
}

async function run(what, request) {
  showError("");
  $("status").textContent = `Searching ${what}…`;
  const started = performance.now();
  try {
    const answer = await request();
    const roundTrip = performance.now() - started;
    const hits = (answer.results && answer.results[0]) || [];
    const took = typeof answer.took_ms === "number" ? `${answer.took_ms.toFixed(1)} ms on the server, ` : "";
    $("status").textContent = `${hits.length} result(s) for ${what}: ${took}${roundTrip.toFixed(0)} ms round trip.`;
    showResults(hits);
  } catch (err) {
    $("status").textContent = "";
    showError(String(err.message || err));
  }
}

function searchText(query) {
  const body = { index: $("index").value, modality: "text", queries: [query], k: kValue() };
  const f = filters();
  if (f) body.filters = f;
  return run(`“${query}”`, () =>
    api("v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }),
  );
}

let preview = null; // the blob: URL of the query image shown next to its name

function showQueryFile(file, modality) {
  if (preview) URL.revokeObjectURL(preview);
  preview = null;
  const box = $("query-file");
  box.replaceChildren();
  if (modality === "image") {
    preview = URL.createObjectURL(file);
    box.append(el("img", { src: preview, alt: `Query image ${file.name}` }));
  }
  box.append(el("span", {}, `Query: ${file.name}${modality ? ` (${modality})` : ""}`));
}

function searchFile(file) {
  const modality = modalityOf(file);
  showQueryFile(file, modality);
  if (!modality) {
    showError(`Cannot tell what kind of file ${file.name} is: choose its type in "File type".`);
    return Promise.resolve();
  }
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("modality", modality);
  form.append("index", $("index").value);
  form.append("k", String(kValue()));
  const f = filters();
  if (f) form.append("filters", JSON.stringify(f));
  return run(file.name, () => api("v1/search/upload", { method: "POST", body: form }));
}

// ---- results ----------------------------------------------------------------------------------

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function itemUrl(hit, what) {
  return `v1/items/${encodeURIComponent(hit.index)}/${encodeURIComponent(hit.id)}/${what}`;
}

// Media URLs: without a token the browser fetches them itself (lazily: loading=lazy, preload);
// with one, an <img src> cannot send the header, so the file is fetched with it when the card
// scrolls into view and shown from a blob: URL.
const lazy = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        lazy.unobserve(entry.target);
        fetchInto(entry.target);
      }
    }, { rootMargin: "200px" })
  : null;

async function fetchInto(node) {
  try {
    const response = await fetch(node.dataset.src, { headers: headers() });
    if (!response.ok) throw new Error(String(response.status));
    node.src = URL.createObjectURL(await response.blob());
  } catch (_) {
    node.dispatchEvent(new Event("error"));
  }
}

function setSource(node, url) {
  if (!$("token").value.trim()) {
    node.src = url;
  } else if (lazy) {
    node.dataset.src = url;
    lazy.observe(node);
  } else {
    node.dataset.src = url;
    fetchInto(node);
  }
}

function fallback(node, text) {
  node.addEventListener("error", () => node.replaceWith(el("p", { class: "nomedia muted" }, text)), { once: true });
}

function media(hit, modality) {
  const meta = hit.metadata || {};
  const name = meta.caption || meta.label || `item ${hit.id}`;
  if (modality === "image" && meta.path) {
    const img = el("img", { loading: "lazy", decoding: "async", alt: `Result ${hit.rank}: ${name}` });
    fallback(img, "image not available");
    setSource(img, itemUrl(hit, "file"));
    return img;
  }
  if (modality === "audio" && meta.path) {
    const audio = el("audio", { controls: "", preload: "none", "aria-label": `Result ${hit.rank}: ${name}` });
    fallback(audio, "audio not available");
    setSource(audio, itemUrl(hit, "file"));
    return audio;
  }
  if (modality === "video" && meta.path) {
    // preload=metadata and a #t fragment: the browser shows the first frame as the poster
    const video = el("video", { controls: "", preload: "metadata", muted: "", "aria-label": `Result ${hit.rank}: ${name}` });
    fallback(video, "video not available");
    if ($("token").value.trim()) setSource(video, itemUrl(hit, "file"));
    else video.src = `${itemUrl(hit, "file")}#t=0.1`;
    return video;
  }
  if (modality === "graph" || modality === "pointcloud") {
    // drawn by the server where it has the render endpoint; else the SMILES / file name as text
    const box = el("figure", { class: "drawing" });
    const img = el("img", { loading: "lazy", alt: `Drawing of result ${hit.rank}` });
    img.addEventListener("error", () => img.remove(), { once: true });
    setSource(img, itemUrl(hit, "render"));
    box.append(img);
    if (meta.smiles || meta.path) {
      const value = String(meta.smiles || meta.path);
      box.append(el("figcaption", { class: "mono" }, modality === "graph" ? value : value.split("/").pop()));
    }
    return box;
  }
  return null;
}

function field(list, term, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(el("dt", {}, term), el("dd", { class: term }, String(value)));
}

function showResults(hits) {
  const grid = $("results");
  grid.replaceChildren();
  const modality = health && health.indexes[$("index").value] ? health.indexes[$("index").value].modality : null;
  for (const hit of hits) {
    const meta = hit.metadata || {};
    const card = el("li", { class: "card", "data-id": String(hit.id) });
    const kind = (hit.index && health && health.indexes[hit.index] && health.indexes[hit.index].modality) || modality;
    const shown = media(hit, kind);
    if (shown) card.append(shown);
    const facts = el("dl");
    field(facts, "rank", hit.rank);
    field(facts, "score", typeof hit.score === "number" ? hit.score.toFixed(4) : hit.score);
    field(facts, "label", meta.label);
    field(facts, "caption", meta.caption);
    field(facts, "id", hit.id);
    if (typeof meta.path === "string" && kind !== "graph") field(facts, "file", meta.path.split("/").pop());
    for (const [key, value] of Object.entries(meta)) {
      if (!["label", "caption", "path", "row", "smiles"].includes(key) && typeof value !== "object") field(facts, key, value);
    }
    card.append(facts);
    grid.append(card);
  }
}

// ---- wiring -----------------------------------------------------------------------------------

function init() {
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => {
    const token = $("token").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    loadHealth();
  });
  $("index").addEventListener("change", updateFields);
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    if (query) searchText(query);
    else if ($("file").files.length) searchFile($("file").files[0]);
  });
  $("file").addEventListener("change", () => {
    if ($("file").files.length) searchFile($("file").files[0]);
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      $("file").value = ""; // the picker no longer names the query
      searchFile(files[0]);
    }
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  loadHealth();
}

document.addEventListener("DOMContentLoaded", init);
