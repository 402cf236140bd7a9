// The page: profile picking and fetching, the four views, label filters and the URL state.
import { decodeProfile, ProfileFormatError } from "./pprof.js";
import {
  buildCallTree, FlameGraph, formatPercent, formatValue, functionTotals, matchedTotal,
  matchFrames, nodeAtPath, pathOf,
} from "./flame.js";

const VIEWS = ["flame", "top", "source", "diff"];
const TOP_ROW_LIMIT = 500;
const SOURCE_CONTEXT_LINES = 5;
const DEFAULT_SECONDS = 5;
const DEFAULT_STATE = Object.freeze({
  profile: "", sample: "", view: "flame", seconds: DEFAULT_SECONDS, search: "", zoom: [],
  tagfocus: "", tagignore: "", fn: "", orient: "icicle", diff: null,
});
// At most this many fetched profiles are kept, so that switching views does not take a new
// CPU profile while memory stays bounded.
const CACHED_PROFILES = 4;

const element = (id) => document.getElementById(id);
const ui = {
  title: element("title"),
  controls: element("controls"),
  profileSelect: element("profile-select"),
  sampleSelect: element("sample-select"),
  secondsControl: element("seconds-control"),
  seconds: element("seconds"),
  search: element("search"),
  searchResult: element("search-result"),
  download: element("download"),
  speedscope: element("speedscope"),
  perfetto: element("perfetto"),
  tabs: [...document.querySelectorAll("#tabs button[data-view]")],
  orient: element("orient"),
  statusText: element("status-text"),
  error: element("error"),
  tagfocus: element("tagfocus"),
  tagignore: element("tagignore"),
  labels: element("labels"),
  flameView: element("flame-view"),
  legend: element("legend"),
  selection: element("selection"),
  flameBox: element("flame-box"),
  canvas: element("flame"),
  tooltip: element("tooltip"),
  topView: element("top-view"),
  topNote: element("top-note"),
  topTable: element("top-table"),
  sourcePane: element("source-pane"),
  sourceNote: element("source-note"),
  sourceTable: element("source-view"),
};

const token = new URLSearchParams(location.search).get("token");

let catalog = { mode: "live", title: "", profiles: [] };
let state = { ...DEFAULT_STATE };
let loadGeneration = 0;
let loadAbort = null;
const profileCache = new Map();
const treeCache = new Map();
let shown = null; // what the current view shows: {tree, profile, bytes, url, key}
let topSort = { key: "flat", descending: true };
let renderedTopRows = [];
let downloadUrl = null;
let firstPaintMs = null;

class HttpError extends Error {}

function withToken(url) {
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

function setStatus(status, text = "") {
  document.body.dataset.status = status;
  ui.statusText.textContent = text;
  if (status !== "error") ui.error.hidden = true;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = false;
  setStatus("error");
}

// ---- URL state ------------------------------------------------------------------------------

// The hash is parsed by hand rather than with URLSearchParams, which would turn a regex's "+"
// into a space.
function parseHash(hash) {
  const parsed = { ...DEFAULT_STATE, zoom: [] };
  for (const part of hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    const equals = part.indexOf("=");
    const key = equals < 0 ? part : part.slice(0, equals);
    const raw = equals < 0 ? "" : part.slice(equals + 1);
    const decode = (text) => { try { return decodeURIComponent(text); } catch { return text; } };
    if (key === "zoom") parsed.zoom = raw ? raw.split(";").map(decode) : [];
    else if (key === "seconds" || key === "diff") {
      // A value that is not a positive number is kept as it is, so that the server's answer
      // to it is what the page shows.
      const text = decode(raw);
      const number = Number(text);
      if (text) parsed[key] = Number.isFinite(number) ? number : text;
    } else if (key === "view") {
      if (VIEWS.includes(decode(raw))) parsed.view = decode(raw);
    } else if (key === "orient") {
      parsed.orient = decode(raw) === "flame" ? "flame" : "icicle";
    } else if (key in DEFAULT_STATE) parsed[key] = decode(raw);
  }
  return parsed;
}

function formatHash(current) {
  const parts = [];
  for (const key of Object.keys(DEFAULT_STATE)) {
    const value = current[key];
    if (key === "zoom") parts.push(`zoom=${value.map(encodeURIComponent).join(";")}`);
    else if (value !== null && value !== undefined) parts.push(`${key}=${encodeURIComponent(value)}`);
  }
  return `#${parts.join("&")}`;
}

function writeHash() {
  history.replaceState(null, "", formatHash(state));
}

// ---- fetching -------------------------------------------------------------------------------

function entryOf(name) {
  return catalog.profiles.find((entry) => entry.name === name);
}

function diffSeconds() {
  return state.diff ?? state.seconds;
}

function canDiff(entry) {
  return Boolean(entry && (entry.delta || entry.base_url));
}

// The profile URLs the current view needs: {current} or, in the diff view, the two sides.
function sourcesFor(entry) {
  if (state.view === "diff") {
    if (entry.base_url) {
      return [{ url: entry.url, current: true, base: false }, { url: entry.base_url, current: false, base: true }];
    }
    if (entry.delta) {
      return [{ url: entry.url, current: true, base: true },
        { url: `${entry.url}?seconds=${encodeURIComponent(diffSeconds())}`, current: true, base: false }];
    }
    throw new Error(`the diff view needs a profile that can be taken as a delta (such as heap) or a --base file; ${entry.name} is neither`);
  }
  const url = entry.timed ? `${entry.url}?seconds=${encodeURIComponent(state.seconds)}` : entry.url;
  return [{ url, current: true, base: false }];
}

async function fetchBytes(url, signal) {
  const response = await fetch(withToken(url), { signal });
  if (!response.ok) {
    const text = (await response.text()).trim();
    throw new HttpError(`${response.status} ${response.statusText}: ${text}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

function fetchProfile(url, signal, refetch) {
  if (!refetch && profileCache.has(url)) return profileCache.get(url);
  const pending = fetchBytes(url, signal).then(async (bytes) => {
    try {
      return { bytes, profile: await decodeProfile(bytes) };
    } catch (error) {
      throw new ProfileFormatError(`not a pprof profile: ${error.message}`);
    }
  });
  profileCache.set(url, pending);
  pending.catch(() => { if (profileCache.get(url) === pending) profileCache.delete(url); });
  while (profileCache.size > CACHED_PROFILES) profileCache.delete(profileCache.keys().next().value);
  return pending;
}

// ---- label filters --------------------------------------------------------------------------

// "key=regex, key2=regex" (a comma starts a new filter only when a "key=" follows it); a
// filter without "=" matches the value of any label.
function parseTagFilters(text) {
  return text.split(/,(?=\s*[\w.-]+=)/).map((part) => part.trim()).filter(Boolean).map((part) => {
    const equals = part.indexOf("=");
    const key = equals < 0 ? null : part.slice(0, equals).trim();
    const pattern = equals < 0 ? part : part.slice(equals + 1);
    try {
      return { key, regex: new RegExp(pattern, "i") };
    } catch (error) {
      throw new Error(`label filter "${part}": ${error.message}`);
    }
  });
}

function labelValue(label) {
  return label.str ?? `${label.num}${label.numUnit ? ` ${label.numUnit}` : ""}`;
}

function labelMatches(labels, filter) {
  return labels !== null && labels.some((label) =>
    (filter.key === null || label.key === filter.key) && filter.regex.test(labelValue(label)));
}

// Keeps a sample when some label matches a tagfocus filter (if any are given) and none matches
// a tagignore filter.
function sampleFilter() {
  const focus = parseTagFilters(state.tagfocus);
  const ignore = parseTagFilters(state.tagignore);
  if (focus.length === 0 && ignore.length === 0) return null;
  return (labels) => (focus.length === 0 || focus.some((filter) => labelMatches(labels, filter))) &&
    !ignore.some((filter) => labelMatches(labels, filter));
}

function escapeRegex(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// Each label value with what its samples hold of the current sample type, as pprof -tags.
function renderLabels(profile, typeIndex, unit) {
  const valuesByKey = new Map();
  const types = profile.sampleTypes.length;
  let whole = 0;
  profile.sampleLabels.forEach((labels, i) => {
    const amount = profile.sampleValues[i * types + typeIndex];
    whole += amount;
    if (!labels) return;
    for (const label of labels) {
      if (!valuesByKey.has(label.key)) valuesByKey.set(label.key, new Map());
      const totals = valuesByKey.get(label.key);
      const value = labelValue(label);
      totals.set(value, (totals.get(value) ?? 0) + amount);
    }
  });
  ui.labels.replaceChildren();
  if (valuesByKey.size === 0) {
    ui.labels.textContent = "this profile's samples have no labels";
    return;
  }
  for (const [key, totals] of [...valuesByKey].sort(([a], [b]) => a.localeCompare(b))) {
    const group = document.createElement("div");
    group.className = "label-key";
    const heading = document.createElement("strong");
    heading.textContent = key;
    group.append(heading);
    const list = document.createElement("ul");
    for (const [value, amount] of [...totals].sort((a, b) => b[1] - a[1])) {
      const item = document.createElement("li");
      const filter = `${key}=^${escapeRegex(value)}$`;
      const share = whole === 0 ? "" : `, ${formatPercent(amount, whole)}`;
      item.append(`${value} (${formatValue(amount, unit)}${share}) `,
        labelButton("focus", `show only samples with ${key}=${value}`, () => { ui.tagfocus.value = filter; }),
        labelButton("hide", `hide samples with ${key}=${value}`, () => {
          ui.tagignore.value = ui.tagignore.value ? `${ui.tagignore.value},${filter}` : filter;
        }));
      list.append(item);
    }
    group.append(list);
    ui.labels.append(group);
  }
}

function labelButton(text, title, apply) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = text;
  button.title = title;
  button.addEventListener("click", () => {
    apply();
    applyFilters();
  });
  return button;
}

function applyFilters() {
  state.tagfocus = ui.tagfocus.value.trim();
  state.tagignore = ui.tagignore.value.trim();
  state.zoom = [];
  refresh();
}

// ---- the pipeline: fetch, decode, build, show -----------------------------------------------

// Brings the current view up to date with `state`, fetching only what is not cached (all of it
// when `refetch`). Resolves when the status is ready or error.
async function refresh({ refetch = false } = {}) {
  const generation = ++loadGeneration;
  const isCurrent = () => generation === loadGeneration;
  writeHash();
  syncControls();
  const entry = entryOf(state.profile);
  if (!entry) {
    if (state.profile) showError(`no profile named "${state.profile}" here`);
    else setStatus("idle", "choose a profile and press load");
    return;
  }
  setStatus("loading", "loading…");
  try {
    const sources = sourcesFor(entry);
    const needsFetch = refetch || sources.some((source) => !profileCache.has(source.url));
    if (needsFetch) {
      loadAbort?.abort();
      loadAbort = new AbortController();
    }
    const signal = loadAbort?.signal;
    const timed = entry.timed || sources.some((source) => source.url.includes("seconds="));
    if (needsFetch && timed) {
      setStatus("loading", `profiling for ${state.view === "diff" ? diffSeconds() : state.seconds} s…`);
    }
    const fetched = await Promise.all(sources.map((source) => fetchProfile(source.url, signal, refetch)));
    if (!isCurrent()) return;
    const current = fetched[sources.findIndex((source) => source.current)];
    const typeIndex = current.profile.sampleTypeIndex(state.sample);
    const sampleType = current.profile.sampleTypes[typeIndex];
    state.sample = sampleType.type;
    const filter = sampleFilter();
    const treeKey = JSON.stringify([sources.map((source) => source.url), state.sample, state.tagfocus, state.tagignore]);
    let tree = treeCache.get(treeKey);
    if (!tree) {
      tree = buildCallTree(sources.map((source, i) => ({
        profile: fetched[i].profile,
        typeIndex: fetched[i].profile.sampleTypeIndex(state.sample),
        current: source.current,
        base: source.base,
      })), filter, sampleType.unit);
      treeCache.clear();
      treeCache.set(treeKey, tree);
    }
    const currentUrl = sources[sources.length - 1].url;
    const shownBefore = shown;
    shown = { tree, profile: current.profile, bytes: fetched[fetched.length - 1].bytes, url: currentUrl, key: treeKey, sample: state.sample };
    if (!shownBefore || shownBefore.profile !== current.profile) fillSampleSelect(current.profile);
    if (!shownBefore || shownBefore.profile !== current.profile || shownBefore.sample !== state.sample) {
      renderLabels(current.profile, typeIndex, sampleType.unit);
    }
    if (!shownBefore || shownBefore.bytes !== shown.bytes) updateLinks(entry);
    writeHash();
    await showView(isCurrent);
  } catch (error) {
    if (!isCurrent() || error.name === "AbortError") return;
    showError(error instanceof HttpError || error instanceof ProfileFormatError
      ? error.message : `${error.message}`);
  }
}

function fillSampleSelect(profile) {
  ui.sampleSelect.replaceChildren(...profile.sampleTypes.map((sampleType) =>
    new Option(`${sampleType.type} (${sampleType.unit})`, sampleType.type)));
  ui.sampleSelect.value = state.sample;
}

function updateLinks(entry) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([shown.bytes], { type: "application/octet-stream" }));
  const gzipped = shown.bytes[0] === 0x1f && shown.bytes[1] === 0x8b;
  ui.download.href = downloadUrl;
  ui.download.download = `${entry.name}${gzipped ? ".pb.gz" : ".pb"}`;
  const absolute = new URL(withToken(shown.url), location.href).href;
  ui.speedscope.href = `https://www.speedscope.app/#profileURL=${encodeURIComponent(absolute)}`;
  ui.perfetto.href = `https://ui.perfetto.dev/#!/?url=${encodeURIComponent(absolute)}`;
}

// ---- views ----------------------------------------------------------------------------------

const flame = new FlameGraph(ui.canvas, ui.tooltip, {
  onZoom: (node) => {
    state.zoom = pathOf(shown.tree, node);
    writeHash();
  },
  onSelect: (node) => showSelection(node),
});
let flameTree = null;

async function showView(isCurrent) {
  const view = state.view;
  ui.flameView.hidden = !(view === "flame" || view === "diff");
  ui.topView.hidden = view !== "top";
  ui.sourcePane.hidden = view !== "source";
  ui.legend.hidden = view !== "diff";
  if (view === "flame" || view === "diff") showFlame();
  else if (view === "top") showTop();
  else await showSource(isCurrent);
  if (isCurrent() && document.body.dataset.status !== "error") {
    setStatus("ready", describeProfile());
  }
}

function describeProfile() {
  const { tree, profile } = shown;
  const parts = [`${profile.sampleCount} stacks`, `total ${formatValue(tree.total[0], tree.unit)}`];
  if (profile.durationNanos) parts.push(`over ${(profile.durationNanos / 1e9).toFixed(1)} s`);
  return parts.join(", ");
}

function showFlame() {
  const tree = shown.tree;
  if (flameTree !== tree) {
    flame.setTree(tree);
    flameTree = tree;
  }
  flame.orientation = state.orient;
  flame.zoomNode = nodeAtPath(tree, state.zoom);
  state.zoom = pathOf(tree, flame.zoomNode);
  applySearch();
  flame.render();
  showSelection(flame.zoomNode);
  if (firstPaintMs === null) firstPaintMs = performance.now();
  writeHash();
}

function showSelection(node) {
  const tree = shown.tree;
  ui.selection.replaceChildren();
  if (node === 0) {
    ui.selection.textContent = "click a frame to zoom into it; click the root or press Escape to zoom out";
    return;
  }
  const name = tree.frameNames[tree.frame[node]];
  ui.selection.append(`zoomed: ${flame.describe(node).replaceAll("\n", " · ")} `);
  if (tree.frameFiles[tree.frame[node]]) ui.selection.append(sourceLink(name));
}

function sourceLink(name) {
  const link = document.createElement("a");
  link.href = "#";
  link.textContent = "source";
  link.className = "source-link";
  link.addEventListener("click", (event) => {
    event.preventDefault();
    state.view = "source";
    state.fn = name;
    refresh();
  });
  return link;
}

// The search's share of the total, or null when there is no valid search.
let currentSearchShare = null;

function applySearch() {
  const tree = shown.tree;
  ui.searchResult.textContent = "";
  delete ui.searchResult.dataset.share;
  currentSearchShare = null;
  flame.frameMatches = null;
  if (!state.search) return;
  let regex;
  try {
    regex = new RegExp(state.search, "i");
  } catch (error) {
    ui.searchResult.textContent = `invalid regex: ${error.message}`;
    return;
  }
  const matches = matchFrames(tree, regex);
  flame.frameMatches = matches;
  const matched = matchedTotal(tree, matches);
  const whole = tree.total[0];
  currentSearchShare = whole ? (100 * matched) / whole : 0;
  ui.searchResult.dataset.share = String(currentSearchShare);
  ui.searchResult.textContent = `matches ${formatValue(matched, tree.unit)} (${currentSearchShare.toFixed(2)} % of ${formatValue(whole, tree.unit)})`;
}

function topComparator(key, descending) {
  const direction = descending ? -1 : 1;
  if (key === "name") return (a, b) => direction * a.name.localeCompare(b.name);
  const field = key === "flat" || key === "flat-pct" ? "flat" : "cum";
  return (a, b) => direction * (a[field] - b[field]) || a.name.localeCompare(b.name);
}

function showTop() {
  const tree = shown.tree;
  const { flat, cum } = functionTotals(tree);
  const whole = tree.total[0];
  const rows = [];
  for (let frame = 1; frame < tree.frameNames.length; frame++) {
    if (flat[frame] === 0 && cum[frame] === 0) continue;
    rows.push({
      name: tree.frameNames[frame], flat: flat[frame], cum: cum[frame],
      flatPct: whole ? (100 * flat[frame]) / whole : 0, cumPct: whole ? (100 * cum[frame]) / whole : 0,
      hasFile: Boolean(tree.frameFiles[frame]),
    });
  }
  rows.sort(topComparator(topSort.key, topSort.descending));
  renderedTopRows = rows.slice(0, TOP_ROW_LIMIT);
  ui.topNote.textContent = rows.length > TOP_ROW_LIMIT
    ? `${rows.length} functions; showing the first ${TOP_ROW_LIMIT} in this order`
    : `${rows.length} functions`;
  for (const header of ui.topTable.querySelectorAll("th[data-sort]")) {
    header.setAttribute("aria-sort", header.dataset.sort === topSort.key
      ? (topSort.descending ? "descending" : "ascending") : "none");
  }
  const body = ui.topTable.tBodies[0];
  body.replaceChildren(...renderedTopRows.map((row) => {
    const tableRow = document.createElement("tr");
    tableRow.dataset.name = row.name;
    const cells = [formatValue(row.flat, tree.unit), `${row.flatPct.toFixed(2)} %`,
      formatValue(row.cum, tree.unit), `${row.cumPct.toFixed(2)} %`];
    for (const text of cells) {
      const cell = tableRow.insertCell();
      cell.textContent = text;
      cell.className = "number";
    }
    const nameCell = tableRow.insertCell();
    const nameButton = document.createElement("button");
    nameButton.type = "button";
    nameButton.className = "function-name";
    nameButton.textContent = row.name;
    nameButton.title = "show in the flame graph";
    nameCell.append(nameButton);
    if (row.hasFile) nameCell.append(" ", sourceLink(row.name));
    return tableRow;
  }));
}

ui.topTable.tHead.addEventListener("click", (event) => {
  const header = event.target.closest("th[data-sort]");
  if (!header || !shown) return;
  const key = header.dataset.sort;
  topSort = topSort.key === key ? { key, descending: !topSort.descending } : { key, descending: key !== "name" };
  showTop();
});

ui.topTable.tBodies[0].addEventListener("click", (event) => {
  const button = event.target.closest("button.function-name");
  if (!button) return;
  state.view = "flame";
  state.search = `^${escapeRegex(button.closest("tr").dataset.name)}$`;
  state.zoom = [];
  refresh();
});

const sourceCache = new Map();

// Flat and cum per line of function `name` in the shown profile: a sample counts once per line
// in cum however often the line is on its stack, and in flat on its leaf frame's line only.
function lineTotals(name) {
  const { profile } = shown;
  const typeIndex = profile.sampleTypeIndex(state.sample);
  const typeCount = profile.sampleTypes.length;
  const filter = sampleFilter();
  const isNamed = profile.functions.map((fn) => fn.name === name);
  const flat = new Map();
  const cum = new Map();
  const seenInSample = new Map();
  for (let sample = 0; sample < profile.sampleCount; sample++) {
    const value = profile.sampleValues[sample * typeCount + typeIndex];
    if (value === 0 || (filter && !filter(profile.sampleLabels[sample]))) continue;
    let leaf = true;
    for (let l = profile.sampleLocationStart[sample]; l < profile.sampleLocationStart[sample + 1]; l++) {
      for (const line of profile.locations[profile.sampleLocations[l]].lines) {
        if (isNamed[line.functionIndex]) {
          if (leaf) flat.set(line.line, (flat.get(line.line) ?? 0) + value);
          if (seenInSample.get(line.line) !== sample) {
            seenInSample.set(line.line, sample);
            cum.set(line.line, (cum.get(line.line) ?? 0) + value);
          }
        }
        leaf = false;
      }
    }
  }
  return { flat, cum };
}

async function showSource(isCurrent) {
  const body = ui.sourceTable.tBodies[0];
  body.replaceChildren();
  const name = state.fn;
  if (!name) {
    ui.sourceNote.textContent = "choose a function: the \"source\" link of a zoomed frame or of a row in the top table";
    return;
  }
  const fn = shown.profile.functions.find((candidate) => candidate.name === name && candidate.filename);
  if (!fn) {
    ui.sourceNote.textContent = `${name}: no function of that name with a file in this profile`;
    return;
  }
  const url = withToken(`source?file=${encodeURIComponent(fn.filename)}`);
  if (!sourceCache.has(url)) {
    sourceCache.set(url, fetch(url).then(async (response) => {
      const text = await response.text();
      if (!response.ok) throw new HttpError(`${response.status} ${response.statusText}: ${text.trim()}`);
      return text.split(/\r?\n/);
    }));
  }
  let sourceLines;
  try {
    sourceLines = await sourceCache.get(url);
  } catch (error) {
    sourceCache.delete(url);
    if (isCurrent()) showError(`source of ${fn.filename}: ${error.message}`);
    return;
  }
  if (!isCurrent()) return;
  const { flat, cum } = lineTotals(name);
  const sampledLines = [...cum.keys()].filter((line) => line > 0);
  const first = fn.startLine || (sampledLines.length ? Math.min(...sampledLines) : 1);
  const last = Math.min(sourceLines.length,
    (sampledLines.length ? Math.max(...sampledLines, first) : first) + SOURCE_CONTEXT_LINES);
  const unit = shown.tree.unit;
  ui.sourceNote.textContent = `${name} in ${fn.filename}, lines ${first}–${last}`;
  const rows = [];
  for (let line = Math.max(1, first); line <= last; line++) {
    const row = document.createElement("tr");
    row.dataset.line = String(line);
    if (cum.has(line)) row.className = "sampled";
    const cells = [String(line), flat.has(line) ? formatValue(flat.get(line), unit) : "",
      cum.has(line) ? formatValue(cum.get(line), unit) : ""];
    for (const text of cells) {
      const cell = row.insertCell();
      cell.textContent = text;
      cell.className = "number";
    }
    const code = row.insertCell();
    code.className = "code";
    code.textContent = sourceLines[line - 1] ?? "";
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

// ---- controls -------------------------------------------------------------------------------

function syncControls() {
  const entry = entryOf(state.profile);
  if (entry) ui.profileSelect.value = entry.name;
  ui.secondsControl.hidden = !(entry && (entry.timed || (entry.delta && state.view === "diff")));
  ui.seconds.value = String(state.view === "diff" ? diffSeconds() : state.seconds);
  if (document.activeElement !== ui.search) ui.search.value = state.search;
  ui.tagfocus.value = state.tagfocus;
  ui.tagignore.value = state.tagignore;
  ui.orient.checked = state.orient === "flame";
  for (const tab of ui.tabs) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
    tab.disabled = tab.dataset.view === "diff" && !canDiff(entry);
  }
}

ui.controls.addEventListener("submit", (event) => {
  event.preventDefault();
  state.profile = ui.profileSelect.value;
  readSeconds();
  refresh({ refetch: true });
});

function readSeconds() {
  const seconds = Number(ui.seconds.value);
  if (!Number.isFinite(seconds) || seconds <= 0) return;
  if (state.view === "diff") state.diff = seconds;
  else state.seconds = seconds;
}

ui.profileSelect.addEventListener("change", () => {
  state.profile = ui.profileSelect.value;
  state.sample = "";
  state.zoom = [];
  state.fn = "";
  const entry = entryOf(state.profile);
  if (state.view === "diff" && !canDiff(entry)) state.view = "flame";
  refresh();
});

ui.sampleSelect.addEventListener("change", () => {
  state.sample = ui.sampleSelect.value;
  state.zoom = [];
  refresh();
});

ui.seconds.addEventListener("change", readSeconds);

ui.search.addEventListener("input", () => {
  state.search = ui.search.value;
  writeHash();
  if (!shown) return;
  if (state.view === "flame" || state.view === "diff") {
    applySearch();
    flame.render();
  }
});

// Enter in the search box shows the flame graph rather than submitting the form, which would
// take a new profile.
ui.search.addEventListener("keydown", (event) => {
  if (event.key !== "Enter") return;
  event.preventDefault();
  if (state.view !== "flame" && state.view !== "diff") {
    state.view = "flame";
    refresh();
  }
});

for (const input of [ui.tagfocus, ui.tagignore]) {
  input.addEventListener("change", applyFilters);
}

for (const tab of ui.tabs) {
  tab.addEventListener("click", () => {
    state.view = tab.dataset.view;
    refresh();
  });
}

ui.orient.addEventListener("change", () => {
  state.orient = ui.orient.checked ? "flame" : "icicle";
  writeHash();
  if (shown && (state.view === "flame" || state.view === "diff")) {
    flame.orientation = state.orient;
    flame.render();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && shown && !ui.flameView.hidden && flame.zoomNode !== 0) {
    flame.zoomTo(0);
    showSelection(0);
  }
});

let lastFlameWidth = 0;
new ResizeObserver(() => {
  const width = ui.flameBox.clientWidth;
  if (width === lastFlameWidth) return;
  lastFlameWidth = width;
  if (shown && !ui.flameView.hidden && document.body.dataset.status === "ready") flame.render();
}).observe(ui.flameBox);

window.addEventListener("hashchange", () => {
  if (location.hash === formatHash(state)) return;
  state = parseHash(location.hash);
  refresh();
});

// ---- start ----------------------------------------------------------------------------------

function load(hash) {
  state = parseHash(hash);
  applyDefaults();
  return refresh({ refetch: true });
}

function applyDefaults() {
  if (!state.profile && catalog.mode === "files" && catalog.profiles.length) {
    state.profile = catalog.profiles[0].name;
  }
  const entry = entryOf(state.profile);
  const hashNamesView = /(^|[#&])view=/.test(location.hash);
  if (entry && entry.base_url && !hashNamesView) state.view = "diff";
}

window.pyprofilerUI = {
  state: () => ({ ...state, zoom: [...state.zoom] }),
  frames: () => (shown && !ui.flameView.hidden ? flame.frames() : []),
  total: () => (shown ? shown.tree.total[0] : 0),
  searchShare: () => currentSearchShare ?? 0,
  topRows: () => renderedTopRows.map(({ name, flat, flatPct, cum, cumPct }) => ({ name, flat, flatPct, cum, cumPct })),
  get timings() {
    return { firstPaintMs, ...flame.timings };
  },
  load: (hash) => {
    history.replaceState(null, "", hash.startsWith("#") ? hash : `#${hash}`);
    return load(location.hash);
  },
};

async function start() {
  setStatus("loading", "loading the list of profiles…");
  try {
    const response = await fetch(withToken("profiles"));
    const text = await response.text();
    if (!response.ok) throw new HttpError(`${response.status} ${response.statusText}: ${text.trim()}`);
    catalog = JSON.parse(text);
  } catch (error) {
    showError(`the list of profiles: ${error.message}`);
    return;
  }
  ui.title.textContent = catalog.title || "pyprofiler";
  document.title = `${catalog.title || "pyprofiler"}: profiles`;
  ui.profileSelect.replaceChildren(...catalog.profiles.map((entry) => {
    const option = new Option(entry.name, entry.name);
    option.title = entry.description ?? "";
    return option;
  }));
  await load(location.hash);
  if (!state.profile && entryOf("profile")) ui.profileSelect.value = "profile";
}

start();
