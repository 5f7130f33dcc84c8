// Lookalike's search page: plain JavaScript on the public /v1 API, nothing else.
// The API key lives in sessionStorage (gone when the tab closes) and travels only in the
// Authorization header, never in a URL. Thumbnails use the signed links search returns.

const API = new URL("..", document.baseURI); // the page is served at <api>/ui
// The image cap, from the page (lookalike.rules.MAX_IMAGE_BYTES): JPEG or PNG, as XGen takes.
const MAX_BYTES = Number(document.querySelector('meta[name="max-image-bytes"]')?.content); // the server checks it too
const TYPES = ["image/jpeg", "image/png"];
const KEY = "lookalike.key";
const COLLECTION = "lookalike.collection";
const SHOWN_FIELDS = ["category", "brand", "color", "character", "model", "style"];

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY),
  collection: null,
  query: null, // {anchor_id} | {item_id} | {text, fields}
  file: null,
  region: null, // {x, y, width, height} as fractions of the query photo
  filter: {}, // field -> Set of values
  offset: 0,
  hits: [],
};

/** An element with attributes and children; text is always set as text, never as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}` };
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(new URL(path, API), { method, headers, body: payload });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) signOut("That API key was not accepted.");
    throw new ApiError(response.status, data.error || `HTTP ${response.status}`);
  }
  return data;
}

function say(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function status(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ key and collection

function signOut(why) {
  sessionStorage.removeItem(KEY);
  state.key = null;
  $("app").hidden = true;
  $("signed-in").hidden = true;
  $("key-form").hidden = false;
  say(why);
}

async function signIn(key) {
  state.key = key;
  let collections;
  try {
    collections = (await api("GET", "v1/collections")).collections;
  } catch (err) {
    if (err.status !== 401) say(err.message);
    return;
  }
  sessionStorage.setItem(KEY, key);
  say("");
  $("key-form").hidden = true;
  $("signed-in").hidden = false;
  $("app").hidden = false;
  const select = $("collection");
  select.replaceChildren(...collections.map((c) => el("option", { value: c.name, text: c.name })));
  const remembered = sessionStorage.getItem(COLLECTION);
  if (collections.some((c) => c.name === remembered)) select.value = remembered;
  if (!collections.length) say("This key has no collections yet: create one with POST /v1/collections.");
  else await chooseCollection(select.value);
}

async function chooseCollection(name) {
  state.collection = name;
  sessionStorage.setItem(COLLECTION, name);
  state.filter = {};
  state.hits = [];
  renderResults({ hits: [], total: 0, offset: 0, limit: pageSize(), next_offset: null });
  await loadOverview();
  if (state.query) await runSearch(0);
}

// ------------------------------------------------------------------ overview

async function loadOverview() {
  const base = `v1/collections/${encodeURIComponent(state.collection)}`;
  const [ingest, facets] = await Promise.all([api("GET", `${base}/ingest`), api("GET", `${base}/facets?size=20`)]);
  $("item-count").textContent = ingest.item_count.toLocaleString();
  $("ingest-status").textContent = ingest.status === "READY" ? "Ready" : "Indexing…";
  $("failures").replaceChildren(...(ingest.recent_failures.length
    ? ingest.recent_failures.slice(0, 10).map((f) => el("li", {},
      el("span", { text: f.id }), el("span", { class: "reason", text: f.reason })))
    : [el("li", { text: "None" })]));
  const sets = Object.entries(facets.facets).filter(([, values]) => values.length);
  $("facets").replaceChildren(...(sets.length ? sets.map(([field, values]) => el("fieldset", {},
    el("legend", { text: field }),
    ...values.map(({ value, count }) => el("label", {},
      el("input", { type: "checkbox", name: field, value, onchange: onFacet }),
      el("span", { text: value }), el("span", { class: "count", text: String(count) })))))
    : [el("p", { text: "No keyword fields yet." })]));
}

function onFacet(event) {
  const { name, value, checked } = event.target;
  const values = state.filter[name] || (state.filter[name] = new Set());
  if (checked) values.add(value); else values.delete(value);
  if (!values.size) delete state.filter[name];
  if (state.query) runSearch(0);
}

function filterJson() {
  const entries = Object.entries(state.filter).map(([field, values]) => [field, [...values]]);
  return entries.length ? Object.fromEntries(entries) : undefined;
}

// ------------------------------------------------------------------ query photo

function takeFile(file) {
  if (!file) return;
  if (!TYPES.includes(file.type)) {
    say(`"${file.name || "That file"}" is not a JPEG or PNG photo.`);
    return;
  }
  if (file.size > MAX_BYTES) {
    say(`"${file.name || "That photo"}" is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${(MAX_BYTES / 1048576).toFixed(0)} MB.`);
    return;
  }
  say("");
  state.file = file;
  const img = $("query-image");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("query").hidden = false;
  setRegion(null);
  searchByPhoto();
}

async function searchByPhoto(restaged = false) {
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "query.jpg");
  if (state.region) form.append("bounding_box", JSON.stringify(state.region));
  status("Uploading the photo…");
  try {
    const anchor = await api("POST", "v1/anchors", form);
    state.query = { anchor_id: anchor.anchor_id };
  } catch (err) {
    status("");
    say(err.message);
    return;
  }
  await runSearch(0, restaged);
}

function setRegion(region) {
  state.region = region;
  const box = $("region");
  box.hidden = !region;
  $("clear-region").disabled = !region;
  if (region) {
    Object.assign(box.style, { left: `${region.x * 100}%`, top: `${region.y * 100}%`,
      width: `${region.width * 100}%`, height: `${region.height * 100}%` });
  }
}

function regionSelection() {
  const frame = $("region-frame");
  let start = null;
  const point = (e) => {
    const r = frame.getBoundingClientRect();
    return { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
      y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
  };
  const boxOf = (a, b) => ({ x: Math.min(a.x, b.x), y: Math.min(a.y, b.y),
    width: Math.abs(a.x - b.x), height: Math.abs(a.y - b.y) });
  frame.addEventListener("pointerdown", (e) => {
    start = point(e);
    frame.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  frame.addEventListener("pointermove", (e) => { if (start) setRegion(boxOf(start, point(e))); });
  frame.addEventListener("pointerup", (e) => {
    if (!start) return;
    const box = boxOf(start, point(e));
    start = null;
    // A click (or a sliver) is not a region: keep searching the whole photo.
    setRegion(box.width > 0.03 && box.height > 0.03 ? box : null);
    if (state.region) searchByPhoto();
  });
}

// ------------------------------------------------------------------ search and results

function pageSize() { return Number($("page-size").value); }

async function runSearch(offset, restaged = false) {
  const base = `v1/collections/${encodeURIComponent(state.collection)}`;
  const paging = { limit: pageSize(), offset, filter: filterJson() };
  const group = $("group").value;
  status("Searching…");
  try {
    let page;
    if (state.query.text !== undefined) {
      page = await api("POST", `${base}/search/text`,
        { query: state.query.text, fields: state.query.fields, ...paging });
    } else {
      // A photo's search is re-ranked: a shopper's crop or turn of a catalog photo comes first.
      page = await api("POST", `${base}/search`,
        { ...state.query, ...paging, rerank: state.query.anchor_id !== undefined,
          threshold: group === "" ? undefined : Number(group) });
    }
    // A deployment without OpenCV (the Lambda stack) answers in cosine order: say so.
    say(page.reranked === false ? "Exact-match checks are not available on this deployment." : "");
    renderResults(page);
  } catch (err) {
    if (err.message === "Anchor not found" && state.file && !restaged) { // the staged photo expired (24 h)
      return searchByPhoto(true);
    }
    status("");
    say(err.message);
  }
}

function caption(hit) {
  const text = hit.metadata.caption || hit.metadata.prompt;
  return typeof text === "string" && text.trim() ? text.trim() : `Item ${hit.id}`;
}

function tags(hit) {
  return SHOWN_FIELDS.map((f) => hit.metadata[f]).filter((v) => typeof v === "string" && v).slice(0, 3).join(" · ");
}

function renderResults(page) {
  state.hits = page.hits;
  state.offset = page.offset;
  const leaders = page.hits.filter((h) => !h.cluster || h.cluster === h.id);
  $("results").replaceChildren(...leaders.map((hit, n) => {
    const members = page.hits.filter((h) => h.cluster && h.cluster === hit.id);
    const stacked = members.length > 1;
    return el("li", { class: stacked ? "card stack" : "card" },
      el("button", { class: "open", type: "button", "aria-label": `${caption(hit)}, rank ${page.offset + n + 1}`,
        onclick: () => openDetail(hit, members) },
      el("img", { src: hit.thumbnail_url, alt: caption(hit), loading: "lazy" }),
      el("div", { class: "info" },
        el("div", { class: "id", text: hit.id }),
        el("div", { class: "score", text: `score ${hit.score.toFixed(3)}` }),
        tags(hit) ? el("div", { class: "tags", text: tags(hit) }) : null)),
      stacked ? el("span", { class: "badge", text: `${members.length} similar` }) : null,
      hit.exact_match ? el("span", { class: "badge exact", text: "exact match" }) : null);
  }));
  const pages = Math.max(1, Math.ceil(page.total / page.limit));
  const current = Math.floor(page.offset / page.limit) + 1;
  $("page-info").textContent = page.total ? `Page ${current} of ${pages}` : "";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.next_offset === null || page.next_offset === undefined;
  if (state.query) {
    const shown = page.hits.length ? `${page.offset + 1}–${page.offset + page.hits.length}` : "0";
    status(page.total ? `${shown} of ${page.total} results` : "No results");
  }
}

function openDetail(hit, members) {
  $("detail-title").textContent = hit.id;
  const image = $("detail-image");
  image.src = hit.full_image_url;
  image.alt = caption(hit);
  $("detail-meta").replaceChildren(el("dt", { text: "score" }), el("dd", { text: hit.score.toFixed(4) }),
    ...Object.entries(hit.metadata).flatMap(([k, v]) => [el("dt", { text: k }),
      el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) })]));
  $("detail-members").replaceChildren(...(members.length > 1 ? members.map((m) =>
    el("img", { src: m.thumbnail_url, alt: caption(m), title: m.id })) : []));
  $("more-like-this").onclick = () => {
    $("detail").close();
    state.query = { item_id: hit.id };
    status(`More like ${hit.id}…`);
    runSearch(0);
  };
  $("detail").showModal();
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    input.value = "";
    if (key) signIn(key);
  });
  $("forget-key").addEventListener("click", () => signOut(""));
  $("collection").addEventListener("change", (e) => chooseCollection(e.target.value));
  for (const id of ["file-input", "camera-input"]) {
    $(id).addEventListener("change", (e) => { takeFile(e.target.files[0]); e.target.value = ""; });
  }
  const zone = $("drop-zone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file && state.key) { e.preventDefault(); takeFile(file); }
  });
  regionSelection();
  $("clear-region").addEventListener("click", () => { setRegion(null); searchByPhoto(); });
  $("image-search").addEventListener("click", () => searchByPhoto());
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text-query").value.trim();
    if (!text) return;
    state.query = { text, fields: $("search-in").value.split(",") };
    runSearch(0);
  });
  $("prev").addEventListener("click", () => runSearch(Math.max(0, state.offset - pageSize())));
  $("next").addEventListener("click", () => runSearch(state.offset + pageSize()));
  for (const id of ["group", "page-size"]) {
    $(id).addEventListener("change", () => { if (state.query) runSearch(0); });
  }
}

wire();
if (state.key) signIn(state.key);
