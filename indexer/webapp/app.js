// lookalike web app: plain modern JavaScript, no build step, nothing loaded from the internet.
// Talks to the JSON API of `lookalike serve` (/api/v1). The token (from ?token=) is kept in sessionStorage and
// sent as an Authorization header; pictures are fetched with that header and shown through blob: URLs.

const API = "/api/v1";
const TOKEN_KEY = "lookalike.token";
const THUMB_SIZE = 256;
const PAGE_GROUPS = 30; // duplicate groups rendered at a time
const PAGE_PEOPLE = 40; // people rendered at a time
const FACES_SHOWN = 12; // faces of one person before "show all"

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ small DOM helper

/** Element `tag` with attributes (`class`, `text`, `on*` handlers, the rest as attributes) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

const fmtScore = (s) => Number(s).toFixed(3);
const fmtInt = (n) => Number(n).toLocaleString("en");
const plural = (n, one, many = one + "s") => `${fmtInt(n)} ${n === 1 ? one : many}`;
const folderOf = (path) => (path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "");

// ------------------------------------------------------------------ token and API

/** Moves ?token= from the address bar into sessionStorage (so it is not left in history or bookmarks). */
function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  if (!url.searchParams.has("token")) return;
  const token = url.searchParams.get("token");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The message of an error answer: the API's {"error": {"message"}}, else what can be said. */
async function errorOf(response) {
  let message = null;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
    else if (body && typeof body.detail === "string") message = body.detail;
    else if (body && Array.isArray(body.detail)) message = body.detail.map((d) => d.msg).join("; ");
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, message || `The server answered ${response.status} ${response.statusText}.`);
}

/** fetch() with the token; throws ApiError with the server's message when the answer is not 2xx. */
async function request(path, { method = "GET", body, json, signal } = {}) {
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, body, headers, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "Cannot reach the lookalike server. Is `lookalike serve` still running?");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

const getJSON = async (path, options) => (await request(path, options)).json();

// ------------------------------------------------------------------ pictures through blob: URLs

/**
 * Loads <img> sources with the token: each image is fetched when it scrolls near the viewport (a few at a
 * time, in document order) and shown through a blob: URL. dispose() cancels what is pending and frees the URLs.
 */
class ImageScope {
  constructor(parallel = 6) {
    this.parallel = parallel;
    this.active = 0;
    this.queue = [];
    this.urls = new Set();
    this.abort = new AbortController();
    this.observer = new IntersectionObserver((entries) => this.onVisible(entries), { rootMargin: "400px" });
  }

  /** Show `url` (an API path) in `img` once it is near the viewport. */
  load(img, url) {
    img.dataset.src = url;
    img.classList.add("loading");
    this.observer.observe(img);
  }

  /** Fetch `url` now; resolves to a blob: URL owned by this scope. */
  async blobUrl(url) {
    const response = await request(url, { signal: this.abort.signal });
    const blobUrl = URL.createObjectURL(await response.blob());
    if (this.abort.signal.aborted) {
      URL.revokeObjectURL(blobUrl);
      throw new DOMException("disposed", "AbortError");
    }
    this.urls.add(blobUrl);
    return blobUrl;
  }

  onVisible(entries) {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      this.observer.unobserve(entry.target);
      this.queue.push(entry.target);
    }
    this.queue.sort((a, b) => (a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1));
    this.pump();
  }

  pump() {
    while (this.active < this.parallel && this.queue.length) {
      const img = this.queue.shift();
      this.active += 1;
      this.blobUrl(img.dataset.src)
        .then((blobUrl) => {
          img.src = blobUrl;
          img.classList.remove("loading");
        })
        .catch((err) => {
          if (err.name === "AbortError") return;
          img.classList.remove("loading");
          img.classList.add("broken");
          img.after(h("span", { class: "thumb-error", text: `no preview: ${err.message}` }));
          if (err.status === 401) showError(err);
        })
        .finally(() => {
          this.active -= 1;
          if (!this.abort.signal.aborted) this.pump();
        });
    }
  }

  dispose() {
    this.abort.abort();
    this.observer.disconnect();
    this.queue = [];
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls.clear();
  }
}

// ------------------------------------------------------------------ messages

function showError(err) {
  if (err && err.name === "AbortError") return;
  $("banner-text").textContent = err instanceof Error ? err.message : String(err);
  $("banner").hidden = false;
  if (err && err.status === 401) showTokenForm();
}

function clearError() {
  $("banner").hidden = true;
  $("banner-text").textContent = "";
}

function setInlineError(el, err) {
  if (!err) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  if (err.name === "AbortError") return;
  el.textContent = err.message;
  el.hidden = false;
  if (err.status === 401) showError(err);
}

// ------------------------------------------------------------------ pages and routing

const state = {
  stats: null,
  features: {},
  page: null,
};

const PAGES = ["search", "duplicates", "people"];

function showOnly(sectionId) {
  $("loading").hidden = true;
  for (const section of document.querySelectorAll("main > section.page")) section.hidden = section.id !== sectionId;
}

function showTokenForm() {
  showOnly("page-token");
  $("nav").hidden = true;
  $("token-input").focus();
}

function availablePages() {
  return PAGES.filter((p) => state.features[p]);
}

/** `#search`, `#search/similar/12`, `#duplicates`, `#people` -> {page, args}. */
function parseHash() {
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { page: parts[0] || null, args: parts.slice(1) };
}

/** Shows `page` (marks its link, sets the title); whether it was another page before. */
function activate(page) {
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  showOnly(`page-${page}`);
  // the Search link returns to the search last shown
  if (page === "search") document.querySelector('#nav a[data-page="search"]').href = window.location.hash || "#search";
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · lookalike`;
  const changed = state.page !== page;
  state.page = page;
  return changed;
}

function route() {
  if (!state.stats) return;
  const pages = availablePages();
  if (!pages.length) {
    showOnly("page-empty");
    return;
  }
  let { page, args } = parseHash();
  if (!pages.includes(page)) {
    page = pages[0];
    args = [];
  }
  const changed = activate(page);
  if (page === "search") search.route(args);
  else if (page === "duplicates" && changed) duplicates.load();
  else if (page === "people" && changed) people.load();
}

async function loadStats() {
  clearError();
  try {
    const stats = await getJSON(`${API}/stats`);
    state.stats = stats;
    state.features = stats.features || {};
  } catch (err) {
    $("loading").hidden = true;
    showError(err);
    return;
  }
  const s = state.stats;
  const parts = [`${plural(s.indexed ?? s.images, "image")} searchable`];
  if (s.model) parts.push(s.model);
  if (s.mask && s.mask !== "whole images") parts.push(`masked: ${s.mask}`);
  if (s.whitening) parts.push(`whitening: ${s.whitening}`);
  $("stats").textContent = parts.join(" · ");
  const pages = availablePages();
  for (const link of document.querySelectorAll("#nav a")) link.hidden = !pages.includes(link.dataset.page);
  $("nav").hidden = pages.length < 2;
  search.showBox();
  search.applyFilter();
  state.page = null;
  route();
}

// ------------------------------------------------------------------ the viewer (full image)

const viewer = {
  scope: null,
  image: null,

  /** Show `image` (an API IMAGE) full size; `extra` adds a line (score, rank). */
  async open(image, extra = "") {
    this.close();
    this.image = image;
    this.scope = new ImageScope(1);
    const dialog = $("viewer");
    $("viewer-title").textContent = image.name;
    const size = image.width && image.height ? `${image.width} × ${image.height} px` : "";
    $("viewer-meta").textContent = [image.path, size, extra].filter(Boolean).join(" · ");
    const img = $("viewer-img");
    img.removeAttribute("src");
    img.alt = image.name;
    img.classList.add("loading");
    img.hidden = false;
    setInlineError($("viewer-error"), null);
    $("viewer-open").removeAttribute("href");
    $("viewer-open").hidden = false;
    $("viewer-similar").hidden = !state.features.search;
    if (!dialog.open) dialog.showModal();
    try {
      const url = await this.scope.blobUrl(image.file);
      img.src = url;
      $("viewer-open").href = url;
    } catch (err) {
      if (err.name === "AbortError") return;
      img.hidden = true;
      $("viewer-open").hidden = true;
      setInlineError($("viewer-error"), err);
    } finally {
      img.classList.remove("loading");
    }
  },

  close() {
    if (this.scope) this.scope.dispose();
    this.scope = null;
    const dialog = $("viewer");
    if (dialog.open) dialog.close();
  },

  init() {
    $("viewer-close").addEventListener("click", () => this.close());
    $("viewer").addEventListener("close", () => {
      if (this.scope) this.scope.dispose();
      this.scope = null;
    });
    $("viewer").addEventListener("click", (event) => {
      if (event.target === $("viewer")) this.close(); // a click on the backdrop
    });
    $("viewer-similar").addEventListener("click", () => {
      const image = this.image;
      this.close();
      if (image) window.location.hash = `#search/similar/${image.id}`;
    });
  },
};

// ------------------------------------------------------------------ search

const search = {
  query: null, // {kind: "upload", blob, name} | {kind: "image", image}
  box: null, // {x, y, w, h} as fractions of the picture
  hits: [],
  scope: null, // thumbnails of the results
  queryScope: null, // the preview of an indexed query
  seq: 0, // answers to older searches are dropped
  routedId: null,

  init() {
    const input = $("file");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) this.fromFile(input.files[0]);
      input.value = "";
    });
    const drop = $("drop");
    for (const type of ["dragenter", "dragover"]) {
      document.addEventListener(type, (event) => {
        if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
        event.preventDefault();
        drop.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "dragend"]) {
      document.addEventListener(type, (event) => {
        if (event.relatedTarget === null) drop.classList.remove("dragging");
      });
    }
    document.addEventListener("drop", (event) => {
      drop.classList.remove("dragging");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (!file) return;
      event.preventDefault(); // a file dropped anywhere never replaces the app
      if (state.features.search) this.fromFile(file);
    });
    document.addEventListener("paste", (event) => {
      if (!state.features.search || event.target.closest?.("input, textarea")) return;
      const item = Array.from(event.clipboardData?.items || []).find((i) => i.kind === "file");
      const file = item && item.getAsFile();
      if (!file) return;
      event.preventDefault();
      this.fromFile(file, "pasted image");
    });

    const slider = $("min-score");
    slider.addEventListener("input", () => this.applyFilter());
    $("k").addEventListener("change", () => {
      if (this.query) this.run();
    });
    $("query-view").addEventListener("click", () => {
      if (this.query && this.query.kind === "image") viewer.open(this.query.image);
    });
    this.initBox();
  },

  /** A new query from a file the person chose, dropped or pasted. */
  fromFile(file, fallbackName = "image") {
    if (state.page !== "search" || parseHash().args.length) {
      history.pushState(null, "", "#search");
      this.routedId = null;
      activate("search");
    }
    this.setQuery({ kind: "upload", blob: file, name: file.name || fallbackName });
    this.run();
  },

  /** Called by the router: `#search/similar/ID` searches from an indexed image. */
  route(args) {
    if (args[0] === "similar" && /^\d+$/.test(args[1] || "")) {
      const id = Number(args[1]);
      if (this.routedId === id && this.query && this.query.kind === "image") return;
      this.routedId = id;
      this.fromId(id);
    } else {
      this.routedId = null;
      if (this.query && this.query.kind === "image") {
        // back from "more like this" to the search by upload: show that again
        const last = this.lastUpload;
        if (last) {
          this.setQuery(last.query);
          this.box = this.lastUpload.box = last.box;
          this.showBox();
          this.run();
        } else this.reset();
      }
    }
  },

  async fromId(id) {
    const seq = ++this.seq;
    let image;
    try {
      image = await getJSON(`${API}/images/${id}`);
    } catch (err) {
      if (seq === this.seq) this.showResultsError(err);
      return;
    }
    if (seq !== this.seq) return;
    this.setQuery({ kind: "image", image });
    this.run();
  },

  reset() {
    this.query = null;
    this.box = null;
    if (this.queryScope) this.queryScope.dispose();
    this.queryScope = null;
    $("query").hidden = true;
    $("drop-hint").hidden = false;
    this.showBox();
    this.render([], "");
  },

  setQuery(query) {
    this.query = query;
    this.box = null;
    this.showBox();
    if (this.queryScope) this.queryScope.dispose();
    this.queryScope = new ImageScope(1);
    const img = $("query-img");
    img.removeAttribute("src");
    $("drop-hint").hidden = true;
    $("query").hidden = false;
    $("query-view").hidden = query.kind !== "image";
    if (query.kind === "upload") {
      const url = URL.createObjectURL(query.blob);
      this.queryScope.urls.add(url);
      this.lastUpload = { query, box: null };
      img.src = url;
      img.alt = `Query: ${query.name}`;
      $("query-name").textContent = query.name;
      $("query-note").textContent = "uploaded";
    } else {
      const image = query.image;
      img.alt = `Query: ${image.name}`;
      this.queryScope.blobUrl(`${image.thumbnail}?size=512`).then(
        (url) => (img.src = url),
        (err) => setInlineError($("results-error"), err),
      );
      $("query-name").textContent = image.name;
      $("query-note").textContent = image.path === image.name ? "in the collection" : image.path;
    }
  },

  k() {
    const k = Math.round(Number($("k").value));
    return Number.isFinite(k) ? Math.min(200, Math.max(1, k)) : 20;
  },

  async run() {
    const query = this.query;
    if (!query) return;
    const seq = ++this.seq;
    const k = this.k();
    setInlineError($("results-error"), null);
    $("results").setAttribute("aria-busy", "true");
    $("results-status").textContent = "Searching…";
    const started = performance.now();
    try {
      let hits;
      if (query.kind === "image" && !this.box) {
        const answer = await getJSON(`${API}/images/${query.image.id}/similar?k=${k}`);
        hits = answer.hits;
      } else {
        const { blob, name } = query.kind === "upload" ? query : await this.fileOf(query.image);
        const form = new FormData();
        form.append("file", blob, name);
        form.append("k", String(k));
        if (this.box) form.append("box", await this.pixelBox(blob));
        const answer = await getJSON(`${API}/search`, { method: "POST", body: form });
        const result = answer.results[0];
        if (result.error) throw new ApiError(422, result.error);
        hits = result.hits;
      }
      if (seq !== this.seq) return;
      this.render(hits, `${Math.round(performance.now() - started)} ms`);
    } catch (err) {
      if (seq !== this.seq) return;
      this.render([], "");
      this.showResultsError(err);
    } finally {
      if (seq === this.seq) $("results").removeAttribute("aria-busy");
    }
  },

  showResultsError(err) {
    $("results-status").textContent = "";
    setInlineError($("results-error"), err);
  },

  /** The original file of an indexed image (to search a region of it), fetched once. */
  async fileOf(image) {
    if (!this.query.file) {
      const response = await request(image.file);
      this.query.file = { blob: await response.blob(), name: image.name };
    }
    return this.query.file;
  },

  /** The box as "x,y,w,h" in pixels of the picture in `blob` (as shown, EXIF-rotated). */
  async pixelBox(blob) {
    const url = URL.createObjectURL(blob);
    try {
      const probe = new Image();
      probe.src = url;
      await probe.decode();
      const W = probe.naturalWidth;
      const H = probe.naturalHeight;
      const b = this.box;
      const x = Math.round(b.x * W);
      const y = Math.round(b.y * H);
      const w = Math.max(2, Math.min(W - x, Math.round(b.w * W)));
      const hh = Math.max(2, Math.min(H - y, Math.round(b.h * H)));
      return `${x},${y},${w},${hh}`;
    } catch {
      throw new ApiError(415, "This browser cannot show the picture, so a region of it cannot be chosen.");
    } finally {
      URL.revokeObjectURL(url);
    }
  },

  render(hits, timing) {
    if (this.scope) this.scope.dispose();
    this.scope = new ImageScope();
    this.hits = hits;
    const list = $("results");
    list.replaceChildren(...hits.map((hit) => this.card(hit)));
    const what = this.query ? (this.query.kind === "upload" ? this.query.name : this.query.image.name) : "";
    const region = this.box ? " (region)" : "";
    $("results-title").textContent = what ? `Like ${what}${region}` : "Results";
    this.timing = timing;
    this.applyFilter();
  },

  card(hit) {
    const label = `${hit.name}, rank ${hit.rank}, score ${fmtScore(hit.score)}`;
    const img = h("img", { alt: hit.name, width: 256, height: 256 });
    this.scope.load(img, `${hit.thumbnail}?size=${THUMB_SIZE}`);
    const li = h(
      "li",
      { class: "card", dataset: { id: hit.id, rank: hit.rank, score: hit.score } },
      h(
        "button",
        {
          type: "button",
          class: "thumb",
          title: `More like ${hit.name}`,
          "aria-label": `More like this: ${label}`,
          onclick: () => {
            window.location.hash = `#search/similar/${hit.id}`;
            $("results-title").focus();
          },
        },
        img,
      ),
      h(
        "div",
        { class: "meta" },
        h("span", { class: "score", title: "cosine similarity (1 = identical)", text: fmtScore(hit.score) }),
        h("span", { class: "rank", text: `#${hit.rank}` }),
        h("span", { class: "name", title: hit.path, text: hit.name }),
        h("span", { class: "folder", title: hit.path, text: folderOf(hit.path) || "\u00a0" }),
      ),
      h("button", {
        type: "button",
        class: "view small",
        text: "View",
        "aria-label": `View ${hit.name} full size`,
        onclick: () => viewer.open(hit, `score ${fmtScore(hit.score)}, rank ${hit.rank}`),
      }),
    );
    return li;
  },

  applyFilter() {
    const min = Number($("min-score").value);
    $("min-score-value").textContent = min.toFixed(2);
    let shown = 0;
    for (const card of $("results").children) {
      const visible = Number(card.dataset.score) >= min - 1e-9;
      card.hidden = !visible;
      if (visible) shown += 1;
    }
    const total = this.hits.length;
    if (!this.query) {
      $("results-status").textContent = "Choose a picture: the images of the collection most like it appear here.";
      return;
    }
    if (!$("results-error").hidden) return;
    let text;
    if (!total) text = "No results.";
    else if (shown === total) text = `${plural(total, "result")}, best first`;
    else if (!shown) text = `None of the ${plural(total, "result")} has a score of ${min.toFixed(2)} or more.`;
    else text = `${fmtInt(shown)} of ${plural(total, "result")} with a score of ${min.toFixed(2)} or more`;
    if (total && this.timing) text += ` · ${this.timing}`;
    $("results-status").textContent = text;
  },

  // --- region (box) on the query picture

  initBox() {
    const preview = $("preview");
    const img = $("query-img");
    let start = null;
    const at = (event) => {
      const r = img.getBoundingClientRect();
      return {
        x: Math.min(1, Math.max(0, (event.clientX - r.left) / r.width)),
        y: Math.min(1, Math.max(0, (event.clientY - r.top) / r.height)),
      };
    };
    const spanning = (a, b) => ({
      x: Math.min(a.x, b.x),
      y: Math.min(a.y, b.y),
      w: Math.abs(a.x - b.x),
      h: Math.abs(a.y - b.y),
    });
    // edges drawn within 2% of the picture's edge are taken to mean the edge
    const snapped = (b) => {
      const x = b.x < 0.02 ? 0 : b.x;
      const y = b.y < 0.02 ? 0 : b.y;
      const right = b.x + b.w > 0.98 ? 1 : b.x + b.w;
      const bottom = b.y + b.h > 0.98 ? 1 : b.y + b.h;
      return { x, y, w: right - x, h: bottom - y };
    };
    img.draggable = false; // the picture itself is not dragged away
    img.addEventListener("error", () => {
      if (img.getAttribute("src")) $("preview").classList.add("broken");
    });
    img.addEventListener("load", () => $("preview").classList.remove("broken"));
    preview.addEventListener("pointerdown", (event) => {
      if (!state.features.box || !this.query || event.button !== 0) return;
      event.preventDefault();
      preview.setPointerCapture(event.pointerId);
      start = at(event);
      this.drawing = spanning(start, start);
      this.showBox(this.drawing);
    });
    preview.addEventListener("pointermove", (event) => {
      if (!start) return;
      this.drawing = spanning(start, at(event));
      this.showBox(this.drawing);
    });
    const finish = (event) => {
      if (!start) return;
      const box = snapped(spanning(start, at(event)));
      start = null;
      if (box.w < 0.03 || box.h < 0.03) {
        this.showBox(this.box); // a click, not a box: keep what was there
        return;
      }
      this.setBox(box);
    };
    preview.addEventListener("pointerup", finish);
    preview.addEventListener("pointercancel", () => {
      start = null;
      this.showBox(this.box);
    });
    $("region-search").addEventListener("click", () => {
      const v = (id) => Number($(id).value) / 100;
      const x = Math.min(0.99, Math.max(0, v("region-x")));
      const y = Math.min(0.99, Math.max(0, v("region-y")));
      const w = Math.min(1 - x, Math.max(0.01, v("region-w")));
      const hh = Math.min(1 - y, Math.max(0.01, v("region-h")));
      this.setBox(w >= 0.999 && hh >= 0.999 ? null : { x, y, w, h: hh });
    });
    $("region-clear").addEventListener("click", () => this.setBox(null));
  },

  setBox(box) {
    this.box = box;
    if (this.query && this.query.kind === "upload" && this.lastUpload) this.lastUpload.box = box;
    this.showBox();
    if (this.query) this.run();
  },

  /** Draws `box` (default: the current one) on the preview and mirrors it in the region inputs. */
  showBox(box = this.box) {
    const el = $("box");
    el.hidden = !box;
    if (box) {
      el.style.left = `${box.x * 100}%`;
      el.style.top = `${box.y * 100}%`;
      el.style.width = `${box.w * 100}%`;
      el.style.height = `${box.h * 100}%`;
    }
    const b = box || { x: 0, y: 0, w: 1, h: 1 };
    $("region-x").value = Math.round(b.x * 100);
    $("region-y").value = Math.round(b.y * 100);
    $("region-w").value = Math.round(b.w * 100);
    $("region-h").value = Math.round(b.h * 100);
    $("region").hidden = !state.features.box || !this.query;
    $("region-clear").disabled = !this.box;
    $("preview").classList.toggle("boxable", Boolean(state.features.box));
  },
};

// ------------------------------------------------------------------ duplicates

const duplicates = {
  groups: [],
  shown: 0,
  scope: null,

  init() {
    $("dup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    $("dup-more").addEventListener("click", () => this.more());
    $("dup-actions").addEventListener("submit", (event) => {
      event.preventDefault();
      this.act(true);
    });
    $("dup-action").addEventListener("change", () => {
      $("dup-apply").disabled = true;
    });
    $("dup-apply").addEventListener("click", () => {
      const what = $("dup-action").selectedOptions[0].textContent;
      if (window.confirm(`Apply to every copy besides the keepers: ${what}? (Undo puts them back.)`)) this.act(false);
    });
    $("dup-undo").addEventListener("click", () => this.undo());
  },

  /** Preview (dry run) or apply the chosen action to the groups shown; only with --allow-changes. */
  async act(dryRun) {
    const threshold = $("dup-threshold").value.trim();
    const body = { action: $("dup-action").value, dry_run: dryRun };
    if (threshold) body.threshold = Number(threshold);
    setInlineError($("dup-error"), null);
    $("dup-action-status").textContent = dryRun ? "Checking what would be done…" : "Working…";
    try {
      const report = await getJSON(`${API}/duplicates/actions`, { method: "POST", json: body });
      $("dup-action-status").textContent = this.summary(report);
      $("dup-apply").disabled = !dryRun || !report.results.some((r) => r.status === "would");
      if (!dryRun) this.load();
    } catch (err) {
      $("dup-action-status").textContent = "";
      setInlineError($("dup-error"), err);
    }
  },

  async undo() {
    setInlineError($("dup-error"), null);
    try {
      const report = await getJSON(`${API}/duplicates/undo`, { method: "POST", json: {} });
      $("dup-action-status").textContent = this.summary(report);
      $("dup-apply").disabled = true;
      this.load();
    } catch (err) {
      setInlineError($("dup-error"), err);
    }
  },

  summary(report) {
    const counts = {};
    for (const r of report.results) counts[r.status] = (counts[r.status] || 0) + 1;
    const words = { would: "to do", done: "done", restored: "put back", skipped: "skipped", failed: "failed" };
    const parts = Object.entries(counts).map(([status, n]) => `${n} ${words[status] || status}`);
    const head = report.dry_run ? "Preview" : report.action === "undo" ? "Undone" : "Done";
    return `${head}: ${parts.join(", ") || "nothing to do"}.` + (report.dry_run ? " Nothing was changed; Apply does it." : "");
  },

  async load() {
    const threshold = $("dup-threshold").value.trim();
    const url = threshold ? `${API}/duplicates?threshold=${encodeURIComponent(threshold)}` : `${API}/duplicates`;
    if (this.scope) this.scope.dispose();
    this.scope = new ImageScope();
    $("dup-actions").hidden = !state.features.changes; // a read-only server offers no actions
    $("dup-groups").replaceChildren();
    $("dup-more").hidden = true;
    setInlineError($("dup-error"), null);
    $("dup-status").textContent = "Looking for duplicates…";
    const asked = (this.asked = (this.asked || 0) + 1); // only the latest request's answer is shown
    let answer;
    try {
      answer = await getJSON(url);
    } catch (err) {
      if (asked !== this.asked) return;
      $("dup-status").textContent = "";
      setInlineError($("dup-error"), err);
      return;
    }
    if (asked !== this.asked) return;
    this.groups = answer.groups || [];
    this.shown = 0;
    const files = this.groups.reduce((n, g) => n + g.files.length, 0);
    const extra = this.groups.reduce((n, g) => n + g.files.filter((f) => !f.keep).length, 0);
    const at = answer.threshold !== null && answer.threshold !== undefined ? ` (threshold ${answer.threshold})` : "";
    $("dup-status").textContent = this.groups.length
      ? `${plural(this.groups.length, "group")} of copies, ${plural(files, "file")}; ${plural(extra, "copy", "copies")} besides the suggested keeper${this.groups.length === 1 ? "" : "s"}${at}.`
      : `No duplicates found${at}.`;
    this.more();
  },

  more() {
    const next = this.groups.slice(this.shown, this.shown + PAGE_GROUPS);
    $("dup-groups").append(...next.map((group, i) => this.group(group, this.shown + i + 1)));
    this.shown += next.length;
    $("dup-more").hidden = this.shown >= this.groups.length;
  },

  group(group, number) {
    const tier = group.tier === "exact" ? "identical files" : "copies";
    const id = `dup-group-${number}`;
    return h(
      "section",
      { class: "group", "aria-labelledby": id },
      h("h2", { id, text: `Group ${number} · ${plural(group.files.length, "file")} · ${tier}` }),
      h(
        "ul",
        { class: "strip" },
        group.files.map((file) => this.file(file)),
      ),
    );
  },

  file(file) {
    const image = file.image;
    const img = h("img", { alt: image.name, width: 256, height: 256 });
    this.scope.load(img, `${image.thumbnail}?size=${THUMB_SIZE}`);
    const size = image.width && image.height ? `${image.width}×${image.height}` : "";
    return h(
      "li",
      { class: file.keep ? "card keep" : "card", dataset: { id: image.id } },
      h(
        "button",
        {
          type: "button",
          class: "thumb",
          "aria-label": `View ${image.name}${file.keep ? " (suggested keeper)" : ""}`,
          onclick: () => viewer.open(image, file.keep ? "suggested keeper" : `score ${fmtScore(file.score)}`),
        },
        img,
      ),
      h(
        "div",
        { class: "meta" },
        file.keep
          ? h("span", { class: "badge", text: "Keep" })
          : h("span", { class: "score", title: "similarity with the keeper", text: fmtScore(file.score) }),
        h("span", { class: "rank", text: size }),
        h("span", { class: "name", title: image.path, text: image.name }),
        h("span", { class: "folder", title: image.path, text: folderOf(image.path) || "\u00a0" }),
      ),
    );
  },
};

// ------------------------------------------------------------------ people

const people = {
  list: [],
  shown: 0,
  scope: null,

  init() {
    $("people-more").addEventListener("click", () => this.more());
  },

  async load() {
    if (this.scope) this.scope.dispose();
    this.scope = new ImageScope();
    $("people-list").replaceChildren();
    $("people-more").hidden = true;
    setInlineError($("people-error"), null);
    $("people-status").textContent = "Loading people…";
    try {
      this.list = (await getJSON(`${API}/people`)).people || [];
    } catch (err) {
      $("people-status").textContent = "";
      setInlineError($("people-error"), err);
      return;
    }
    this.shown = 0;
    this.status();
    this.more();
  },

  status() {
    const faces = this.list.reduce((n, p) => n + p.faces.length, 0);
    const named = this.list.filter((p) => p.name).length;
    $("people-status").textContent = this.list.length
      ? `${plural(this.list.length, "person", "people")} (${fmtInt(named)} named), ${plural(faces, "face")}.` +
        (state.features.changes ? "" : " The server is read-only: names are changed with `lookalike faces name`.")
      : "No people yet: run `lookalike faces index DIR` and `lookalike faces cluster`.";
  },

  more() {
    const next = this.list.slice(this.shown, this.shown + PAGE_PEOPLE);
    $("people-list").append(...next.map((person) => this.person(person)));
    this.shown += next.length;
    $("people-more").hidden = this.shown >= this.list.length;
  },

  title(person) {
    return person.name || `Person ${person.cluster}`;
  },

  person(person) {
    const id = `person-${person.cluster}`;
    const heading = h("h2", { id, text: this.title(person) });
    const faces = h("ul", { class: "faces" });
    const addFaces = (list) => faces.append(...list.map((face, i) => this.face(person, face, i)));
    addFaces(person.faces.slice(0, FACES_SHOWN));
    const rest = person.faces.length - FACES_SHOWN;
    const showAll =
      rest > 0
        ? h("button", {
            type: "button",
            class: "small",
            text: `Show ${plural(rest, "more face")}`,
            onclick: (event) => {
              addFaces(person.faces.slice(FACES_SHOWN));
              event.target.remove();
            },
          })
        : null;
    return h(
      "section",
      { class: "person", "aria-labelledby": id },
      h("div", { class: "person-head" }, heading, h("span", { class: "muted", text: plural(person.faces.length, "face") })),
      state.features.changes ? this.nameForm(person, heading) : null,
      faces,
      showAll,
    );
  },

  face(person, face, i) {
    const who = this.title(person);
    const img = h("img", { alt: `Face ${i + 1} of ${who}`, width: 128, height: 128 });
    this.scope.load(img, face.thumbnail);
    const label = face.image ? `${who}: view ${face.image.name}` : `${who}: face ${i + 1}`;
    return h(
      "li",
      { class: "face" },
      h(
        "button",
        {
          type: "button",
          class: "thumb",
          "aria-label": label,
          title: face.image ? face.image.path : "",
          disabled: !face.image,
          onclick: () => face.image && viewer.open(face.image, who),
        },
        img,
      ),
    );
  },

  nameForm(person, heading) {
    const inputId = `name-${person.cluster}`;
    const input = h("input", { id: inputId, type: "text", value: person.name || "", placeholder: "who is this?", autocomplete: "off" });
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const saved = h("span", { class: "muted", "aria-live": "polite" });
    const form = h(
      "form",
      {
        class: "row name-form",
        onsubmit: async (event) => {
          event.preventDefault();
          const name = input.value.trim();
          setInlineError(error, null);
          saved.textContent = "";
          if (!name) {
            setInlineError(error, new Error("Type a name first."));
            return;
          }
          try {
            const answer = await getJSON(`${API}/people/${person.cluster}/name`, { method: "POST", json: { name } });
            person.name = answer.name;
            heading.textContent = this.title(person);
            saved.textContent = "Saved.";
            this.status();
          } catch (err) {
            setInlineError(error, err);
          }
        },
      },
      h("label", { for: inputId, text: "Name" }),
      input,
      h("button", { type: "submit", class: "small", text: "Save" }),
      saved,
    );
    return h("div", {}, form, error);
  },
};

// ------------------------------------------------------------------ start

function init() {
  takeTokenFromUrl();
  $("banner-close").addEventListener("click", clearError);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    $("page-token").hidden = true;
    $("loading").hidden = false;
    loadStats();
  });
  window.addEventListener("hashchange", route);
  viewer.init();
  search.init();
  duplicates.init();
  people.init();
  loadStats();
}

init();
