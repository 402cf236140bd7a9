// The merged call tree and its canvas flame graph.
//
// The tree is built once per (profile, sample type, label filter) into typed arrays; zooming,
// searching and resizing only lay out and draw the part that is visible, which is what keeps a
// 100 000-node tree responsive.

const ROOT = 0;

// Frames are merged by function name along the call path, as pprof's flame graph does.
class GrowableTree {
  constructor(capacity) {
    this.count = 0;
    this.allocate(capacity);
  }

  allocate(capacity) {
    const grow = (Type, old) => {
      const array = new Type(capacity);
      if (old) array.set(old.subarray(0, this.count));
      return array;
    };
    this.parent = grow(Int32Array, this.parent);
    this.frame = grow(Int32Array, this.frame);
    this.depth = grow(Int32Array, this.depth);
    this.total = grow(Float64Array, this.total);
    this.self = grow(Float64Array, this.self);
    this.baseTotal = grow(Float64Array, this.baseTotal);
    this.baseSelf = grow(Float64Array, this.baseSelf);
    this.capacity = capacity;
  }

  add(parent, frame) {
    if (this.count === this.capacity) this.allocate(this.capacity * 2);
    const node = this.count++;
    this.parent[node] = parent;
    this.frame[node] = frame;
    this.depth[node] = parent < 0 ? 0 : this.depth[parent] + 1;
    return node;
  }
}

// The children of the tree being built, by (parent node, frame): an open-addressing hash table
// over typed arrays, several times faster than a Map for the millions of lookups of a large
// profile.
class ChildTable {
  constructor(capacity) {
    this.allocate(capacity);
  }

  allocate(capacity) {
    this.mask = capacity - 1;
    this.parents = new Int32Array(capacity).fill(-1);
    this.frames = new Int32Array(capacity);
    this.nodes = new Int32Array(capacity);
    this.count = 0;
  }

  slotOf(parent, frame) {
    let hash = Math.imul(parent ^ Math.imul(frame, 0x85ebca77), 0x9e3779b1);
    hash ^= hash >>> 15;
    let slot = hash & this.mask;
    while (this.parents[slot] !== -1 && (this.parents[slot] !== parent || this.frames[slot] !== frame)) {
      slot = (slot + 1) & this.mask;
    }
    return slot;
  }

  // The child of `parent` for `frame`, created in `tree` if it is not there yet.
  childOf(parent, frame, tree) {
    const slot = this.slotOf(parent, frame);
    if (this.parents[slot] !== -1) return this.nodes[slot];
    const node = tree.add(parent, frame);
    this.parents[slot] = parent;
    this.frames[slot] = frame;
    this.nodes[slot] = node;
    if (++this.count * 2 > this.mask) this.grow();
    return node;
  }

  grow() {
    const { parents, frames, nodes } = this;
    this.allocate((this.mask + 1) * 2);
    for (let old = 0; old < parents.length; old++) {
      if (parents[old] === -1) continue;
      const slot = this.slotOf(parents[old], frames[old]);
      this.parents[slot] = parents[old];
      this.frames[slot] = frames[old];
      this.nodes[slot] = nodes[old];
      this.count++;
    }
  }
}

// Builds the call tree of one or more profiles.
// sources: [{profile, typeIndex, current: bool, base: bool}]: each source's values are added to
//   the current totals, the base totals, or both (a live diff's current = base + delta).
// keepSample(labels) decides whether a sample passes the label filters.
export function buildCallTree(sources, keepSample, unit) {
  const frameNames = [];
  const frameFiles = [];
  const frameLines = [];
  const frameIndexByName = new Map();
  const frameOf = (name, file, line) => {
    let frame = frameIndexByName.get(name);
    if (frame === undefined) {
      frame = frameNames.length;
      frameIndexByName.set(name, frame);
      frameNames.push(name);
      frameFiles.push(file);
      frameLines.push(line);
    } else if (!frameFiles[frame] && file) {
      frameFiles[frame] = file;
      frameLines[frame] = line;
    }
    return frame;
  };
  frameOf("root", "", 0);

  // Each location's frames, leaf first (its inlined functions before their caller), as
  // locationFrames[locationFrameStart[l] .. locationFrameStart[l + 1]).
  const framesPerSource = sources.map(({ profile }) => {
    const { locations, functions } = profile;
    const locationFrameStart = new Int32Array(locations.length + 1);
    const locationFrames = [];
    // A function's frame, looked up by name once per function rather than once per location.
    const functionFrame = new Int32Array(functions.length).fill(-1);
    for (let index = 0; index < locations.length; index++) {
      const location = locations[index];
      if (location.lines.length === 0) {
        locationFrames.push(frameOf(`0x${location.address.toString(16)}`, "", 0));
      }
      for (const line of location.lines) {
        const fi = line.functionIndex;
        if (fi < 0) {
          locationFrames.push(frameOf("?", "", 0));
          continue;
        }
        if (functionFrame[fi] < 0) {
          const fn = functions[fi];
          functionFrame[fi] = frameOf(fn.name || fn.systemName || "?", fn.filename, fn.startLine || line.line);
        }
        locationFrames.push(functionFrame[fi]);
      }
      locationFrameStart[index + 1] = locationFrames.length;
    }
    return { locationFrameStart, locationFrames: Int32Array.from(locationFrames) };
  });

  const tree = new GrowableTree(1024);
  tree.add(-1, 0);
  const childTable = new ChildTable(4096);
  // Only the leaf's self value is added per sample; totals are summed up the tree afterwards.
  sources.forEach((source, sourceIndex) => {
    const { profile, typeIndex } = source;
    const { locationFrameStart, locationFrames } = framesPerSource[sourceIndex];
    const typeCount = profile.sampleTypes.length;
    const { sampleLocationStart, sampleLocations, sampleValues, sampleLabels } = profile;
    for (let sample = 0; sample < profile.sampleCount; sample++) {
      const value = sampleValues[sample * typeCount + typeIndex];
      if (value === 0) continue;
      if (keepSample && !keepSample(sampleLabels[sample])) continue;
      let node = ROOT;
      for (let l = sampleLocationStart[sample + 1] - 1; l >= sampleLocationStart[sample]; l--) {
        const location = sampleLocations[l];
        for (let k = locationFrameStart[location + 1] - 1; k >= locationFrameStart[location]; k--) {
          node = childTable.childOf(node, locationFrames[k], tree);
        }
      }
      if (source.current) tree.self[node] += value;
      if (source.base) tree.baseSelf[node] += value;
    }
  });
  // A child always comes after its parent, so one backward pass sums every subtree.
  const { parent, self, baseSelf, total, baseTotal } = tree;
  for (let node = tree.count - 1; node >= 0; node--) {
    total[node] += self[node];
    baseTotal[node] += baseSelf[node];
    if (node > ROOT) {
      total[parent[node]] += total[node];
      baseTotal[parent[node]] += baseTotal[node];
    }
  }
  return finishTree(tree, frameNames, frameFiles, frameLines, unit, sources.some((s) => s.base));
}

// Children as one sorted array per node (CSR layout: children[childStart[n] .. childStart[n+1])),
// sorted by name so that the picture is stable between loads and between the two sides of a diff.
function finishTree(grown, frameNames, frameFiles, frameLines, unit, isDiff) {
  const count = grown.count;
  const frameRank = new Int32Array(frameNames.length);
  Array.from(frameNames.keys())
    .sort((a, b) => (frameNames[a] < frameNames[b] ? -1 : frameNames[a] > frameNames[b] ? 1 : 0))
    .forEach((frame, rank) => { frameRank[frame] = rank; });

  const childStart = new Int32Array(count + 1);
  for (let node = 1; node < count; node++) childStart[grown.parent[node] + 1]++;
  for (let node = 0; node < count; node++) childStart[node + 1] += childStart[node];
  const fill = childStart.slice(0, count);
  const children = new Int32Array(Math.max(count - 1, 0));
  let maxDepth = 0;
  for (let node = 1; node < count; node++) {
    children[fill[grown.parent[node]]++] = node;
    if (grown.depth[node] > maxDepth) maxDepth = grown.depth[node];
  }
  for (let node = 0; node < count; node++) {
    const start = childStart[node], end = childStart[node + 1];
    if (end - start > 1) {
      children.subarray(start, end).sort((a, b) => frameRank[grown.frame[a]] - frameRank[grown.frame[b]]);
    }
  }
  return {
    nodeCount: count,
    parent: grown.parent.subarray(0, count),
    frame: grown.frame.subarray(0, count),
    depth: grown.depth.subarray(0, count),
    total: grown.total.subarray(0, count),
    self: grown.self.subarray(0, count),
    baseTotal: grown.baseTotal.subarray(0, count),
    baseSelf: grown.baseSelf.subarray(0, count),
    childStart,
    children,
    maxDepth,
    frameNames,
    frameFiles,
    frameLines,
    unit,
    isDiff,
  };
}

// Visits nodes depth first, parents before children. `enter(node)` returning false skips the
// node's subtree; `leave(node)` runs after the subtree.
function walk(tree, enter, leave) {
  const stack = [ROOT];
  while (stack.length) {
    const entry = stack.pop();
    if (entry < 0) { leave(~entry); continue; }
    if (enter(entry) === false) continue;
    if (leave) stack.push(~entry);
    for (let i = tree.childStart[entry + 1] - 1; i >= tree.childStart[entry]; i--) stack.push(tree.children[i]);
  }
}

// Flat and cumulative value per function name (a recursive function's cum counts each sample
// once, as pprof -top does): {flat, cum} Float64Arrays indexed by frame.
export function functionTotals(tree) {
  const frameTotal = tree.frameNames.length;
  const flat = new Float64Array(frameTotal);
  const cum = new Float64Array(frameTotal);
  const onPath = new Int32Array(frameTotal);
  walk(tree, (node) => {
    if (node === ROOT) return true;
    const frame = tree.frame[node];
    flat[frame] += tree.self[node];
    if (onPath[frame] === 0) cum[frame] += tree.total[node];
    onPath[frame]++;
    return true;
  }, (node) => {
    if (node !== ROOT) onPath[tree.frame[node]]--;
  });
  return { flat, cum };
}

// Which frames (function names) match the search regex: a Uint8Array indexed by frame.
export function matchFrames(tree, regex) {
  const matches = new Uint8Array(tree.frameNames.length);
  for (let frame = 1; frame < tree.frameNames.length; frame++) {
    if (regex.test(tree.frameNames[frame])) matches[frame] = 1;
  }
  return matches;
}

// The value of the samples that have a matching frame anywhere in their stack, each sample
// once: the sum over the topmost matching nodes.
export function matchedTotal(tree, frameMatches) {
  let sum = 0;
  walk(tree, (node) => {
    if (node !== ROOT && frameMatches[tree.frame[node]]) {
      sum += tree.total[node];
      return false;
    }
    return true;
  });
  return sum;
}

// The node reached from the root by following these function names, or the deepest node
// that could be reached.
export function nodeAtPath(tree, names) {
  let node = ROOT;
  for (const name of names) {
    let next = -1;
    for (let i = tree.childStart[node]; i < tree.childStart[node + 1]; i++) {
      if (tree.frameNames[tree.frame[tree.children[i]]] === name) { next = tree.children[i]; break; }
    }
    if (next < 0) break;
    node = next;
  }
  return node;
}

export function pathOf(tree, node) {
  const names = [];
  for (let n = node; n > ROOT; n = tree.parent[n]) names.push(tree.frameNames[tree.frame[n]]);
  return names.reverse();
}

const UNIT_STEPS = {
  nanoseconds: [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]],
  microseconds: [[1e6, "s"], [1e3, "ms"], [1, "µs"]],
  milliseconds: [[1e3, "s"], [1, "ms"]],
  seconds: [[1, "s"]],
  bytes: [[2 ** 30, "GB"], [2 ** 20, "MB"], [2 ** 10, "kB"], [1, "B"]],
};

export function formatValue(value, unit) {
  const steps = UNIT_STEPS[unit];
  if (!steps) return Number.isInteger(value) ? String(value) : value.toFixed(2);
  const magnitude = Math.abs(value);
  const [size, suffix] = steps.find(([stepSize]) => magnitude >= stepSize) ?? steps[steps.length - 1];
  const scaled = value / size;
  return `${Number.isInteger(scaled) ? scaled : scaled.toFixed(2)} ${suffix}`;
}

export function formatPercent(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(2)} %` : "–";
}

// The module a frame is coloured by: the name up to its first dot (after the last slash, so
// that Go's "net/http.(*conn).serve" is "net/http"), or the file's directory for names without.
function moduleOf(name, file) {
  const lastSlash = name.lastIndexOf("/");
  const dot = name.indexOf(".", lastSlash + 1);
  if (dot > 0) return name.slice(0, dot);
  return file ? file.slice(0, file.lastIndexOf("/") + 1) : name;
}

function hashString(text) {
  let hash = 2166136261;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 16777619);
  return hash >>> 0;
}

const MODULE_COLOURS = Array.from({ length: 24 }, (_, i) => {
  const hue = (i * 137.5) % 360;
  return `hsl(${hue.toFixed(0)} 55% ${i % 2 ? 72 : 80}%)`;
});
const DIMMED_COLOUR = "#e4e4e4";
const ROOT_COLOUR = "#c8c8c8";
export const GROWTH_COLOUR = "#D55E00";
export const SHRINK_COLOUR = "#0072B2";
const DIFF_LEVELS = 5;
// Below this share of the largest change a frame counts as unchanged (grey).
const NO_CHANGE_THRESHOLD = 0.05;

function mixWithWhite(hex, share) {
  const channel = (offset) => {
    const value = parseInt(hex.slice(offset, offset + 2), 16);
    return Math.round(255 + (value - 255) * share);
  };
  return `rgb(${channel(1)} ${channel(3)} ${channel(5)})`;
}
// Diff colours: index 0 grey, then shrink levels 1..5 and growth levels 6..10, light to strong.
const DIFF_COLOURS = ["#d0d0d0",
  ...Array.from({ length: DIFF_LEVELS }, (_, i) => mixWithWhite(SHRINK_COLOUR, (i + 1) / DIFF_LEVELS)),
  ...Array.from({ length: DIFF_LEVELS }, (_, i) => mixWithWhite(GROWTH_COLOUR, (i + 1) / DIFF_LEVELS))];

const ROW_HEIGHT = 18;
const MIN_FRAME_WIDTH = 0.5;
const FONT = "12px system-ui, sans-serif";
const TEXT_PADDING = 3;

export class FlameGraph {
  constructor(canvas, tooltip, { onZoom, onSelect }) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onZoom = onZoom;
    this.onSelect = onSelect;
    this.tree = null;
    this.zoomNode = ROOT;
    this.frameMatches = null;
    this.orientation = "icicle";
    this.drawnCount = 0;
    this.rows = 0;
    this.timings = { lastLayoutMs: 0, lastDrawMs: 0 };
    canvas.addEventListener("mousemove", (event) => this.hover(event));
    canvas.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    canvas.addEventListener("click", (event) => this.click(event));
  }

  setTree(tree) {
    this.tree = tree;
    this.zoomNode = ROOT;
    this.frameMatches = null;
    this.frameModuleColour = Int32Array.from(tree.frameNames, (name, frame) =>
      hashString(moduleOf(name, tree.frameFiles[frame])) % MODULE_COLOURS.length);
    this.drawnNode = new Int32Array(tree.nodeCount);
    this.drawnX = new Float64Array(tree.nodeCount);
    this.drawnWidth = new Float64Array(tree.nodeCount);
    this.drawnColour = new Int32Array(tree.nodeCount);
    this.largestChange = 0;
    if (tree.isDiff) {
      for (let node = 1; node < tree.nodeCount; node++) {
        const change = Math.abs(tree.total[node] - tree.baseTotal[node]);
        if (change > this.largestChange) this.largestChange = change;
      }
    }
  }

  weight(node) {
    const tree = this.tree;
    return Math.max(0, tree.isDiff ? Math.max(tree.total[node], tree.baseTotal[node]) : tree.total[node]);
  }

  // Colour index of a frame in the diff palette, from its change against the largest change.
  diffLevel(node) {
    const change = this.tree.total[node] - this.tree.baseTotal[node];
    const share = this.largestChange ? change / this.largestChange : 0;
    if (Math.abs(share) < NO_CHANGE_THRESHOLD) return 0;
    const level = Math.min(DIFF_LEVELS, Math.ceil(Math.abs(share) * DIFF_LEVELS));
    return share > 0 ? DIFF_LEVELS + level : level;
  }

  changeOf(node) {
    const level = this.diffLevel(node);
    return level === 0 ? "none" : level > DIFF_LEVELS ? "growth" : "shrink";
  }

  // Lays out the zoomed node's subtree over the canvas width (its ancestors span the full
  // width above it); frames narrower than MIN_FRAME_WIDTH are left out with their subtrees.
  layout(width) {
    const tree = this.tree;
    const { drawnNode, drawnX, drawnWidth } = this;
    let count = 0;
    let deepest = 0;
    for (let node = tree.parent[this.zoomNode]; node >= 0; node = tree.parent[node]) {
      drawnNode[count] = node; drawnX[count] = 0; drawnWidth[count] = width; count++;
    }
    const stackNode = [this.zoomNode];
    const stackX = [0];
    const stackWidth = [width];
    while (stackNode.length) {
      const node = stackNode.pop();
      const x = stackX.pop();
      const frameWidth = stackWidth.pop();
      drawnNode[count] = node; drawnX[count] = x; drawnWidth[count] = frameWidth; count++;
      if (tree.depth[node] > deepest) deepest = tree.depth[node];
      const start = tree.childStart[node], end = tree.childStart[node + 1];
      if (start === end) continue;
      // Children's weights can add up to more than their parent's in a diff (each is the
      // larger of its two sides), so they are scaled to fit.
      let childWeights = 0;
      for (let i = start; i < end; i++) childWeights += this.weight(tree.children[i]);
      const unitsWide = Math.max(this.weight(node), childWeights);
      if (unitsWide <= 0) continue;
      const pixelsPerUnit = frameWidth / unitsWide;
      let childX = x;
      for (let i = start; i < end; i++) {
        const child = tree.children[i];
        const childWidth = this.weight(child) * pixelsPerUnit;
        if (childWidth >= MIN_FRAME_WIDTH) {
          stackNode.push(child); stackX.push(childX); stackWidth.push(childWidth);
        }
        childX += childWidth;
      }
    }
    this.drawnCount = count;
    this.rows = deepest + 1;
  }

  rowTop(depth) {
    return (this.orientation === "flame" ? this.rows - 1 - depth : depth) * ROW_HEIGHT;
  }

  render() {
    if (!this.tree) return;
    const layoutStart = performance.now();
    const width = Math.max(100, this.canvas.parentElement.clientWidth);
    this.layout(width);
    const drawStart = performance.now();
    this.draw(width);
    const drawEnd = performance.now();
    this.timings = { lastLayoutMs: drawStart - layoutStart, lastDrawMs: drawEnd - drawStart };
  }

  draw(width) {
    const tree = this.tree;
    const canvas = this.canvas;
    const height = this.rows * ROW_HEIGHT;
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);

    // Frames are grouped by colour so that fillStyle changes once per colour, not per frame.
    const palette = tree.isDiff ? DIFF_COLOURS : MODULE_COLOURS;
    const dimmedIndex = palette.length;
    const rootIndex = palette.length + 1;
    const colourCount = palette.length + 2;
    const { drawnNode, drawnX, drawnWidth, drawnColour } = this;
    const perColour = new Int32Array(colourCount + 1);
    for (let i = 0; i < this.drawnCount; i++) {
      const node = drawnNode[i];
      const frame = tree.frame[node];
      let colour;
      if (node === ROOT && !tree.isDiff) colour = rootIndex;
      else if (this.frameMatches && !this.frameMatches[frame]) colour = dimmedIndex;
      else colour = tree.isDiff ? this.diffLevel(node) : this.frameModuleColour[frame];
      drawnColour[i] = colour;
      perColour[colour + 1]++;
    }
    for (let c = 0; c < colourCount; c++) perColour[c + 1] += perColour[c];
    const order = new Int32Array(this.drawnCount);
    const fillAt = perColour.slice(0, colourCount);
    for (let i = 0; i < this.drawnCount; i++) order[fillAt[drawnColour[i]]++] = i;

    const colourStyles = [...palette, DIMMED_COLOUR, ROOT_COLOUR];
    for (let c = 0; c < colourCount; c++) {
      if (perColour[c] === perColour[c + 1]) continue;
      context.fillStyle = colourStyles[c];
      for (let k = perColour[c]; k < perColour[c + 1]; k++) {
        const i = order[k];
        const frameWidth = drawnWidth[i];
        // A one-pixel gap separates frames that are wide enough to spare it.
        context.fillRect(drawnX[i], this.rowTop(tree.depth[drawnNode[i]]),
          frameWidth > 3 ? frameWidth - 1 : frameWidth, ROW_HEIGHT - 1);
      }
    }

    context.font = FONT;
    context.textBaseline = "middle";
    const charWidth = context.measureText("abcdefghijklmnopqrstuvwxyz_.").width / 28;
    const minTextWidth = charWidth * 3 + 2 * TEXT_PADDING;
    const strongDiffStart = Math.ceil(DIFF_LEVELS * 0.6);
    for (const lightText of [false, true]) {
      context.fillStyle = lightText ? "#ffffff" : "#1a1a1a";
      for (let i = 0; i < this.drawnCount; i++) {
        if (drawnWidth[i] < minTextWidth) continue;
        const colour = drawnColour[i];
        const level = colour > DIFF_LEVELS ? colour - DIFF_LEVELS : colour;
        const wantsLight = tree.isDiff && colour > 0 && colour < palette.length && level >= strongDiffStart;
        if (wantsLight !== lightText) continue;
        const node = drawnNode[i];
        const name = tree.frameNames[tree.frame[node]];
        const fits = Math.floor((drawnWidth[i] - 2 * TEXT_PADDING) / charWidth);
        const label = name.length <= fits ? name : `${name.slice(0, Math.max(fits - 1, 1))}…`;
        context.fillText(label, drawnX[i] + TEXT_PADDING, this.rowTop(tree.depth[node]) + ROW_HEIGHT / 2,
          drawnWidth[i] - 2 * TEXT_PADDING);
      }
    }
  }

  frameIndexAt(x, y) {
    const row = Math.floor(y / ROW_HEIGHT);
    const depth = this.orientation === "flame" ? this.rows - 1 - row : row;
    for (let i = 0; i < this.drawnCount; i++) {
      if (this.tree.depth[this.drawnNode[i]] === depth && x >= this.drawnX[i] &&
          x < this.drawnX[i] + this.drawnWidth[i]) return i;
    }
    return -1;
  }

  eventPoint(event) {
    const box = this.canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  hover(event) {
    if (!this.tree) return;
    const index = this.frameIndexAt(...this.eventPoint(event));
    if (index < 0) { this.tooltip.hidden = true; return; }
    this.tooltip.textContent = this.describe(this.drawnNode[index]);
    this.tooltip.hidden = false;
    const margin = 14;
    const left = Math.min(event.clientX + margin, window.innerWidth - this.tooltip.offsetWidth - margin);
    const top = event.clientY + margin + this.tooltip.offsetHeight > window.innerHeight
      ? event.clientY - margin - this.tooltip.offsetHeight : event.clientY + margin;
    this.tooltip.style.left = `${Math.max(0, left)}px`;
    this.tooltip.style.top = `${Math.max(0, top)}px`;
  }

  click(event) {
    if (!this.tree) return;
    const index = this.frameIndexAt(...this.eventPoint(event));
    if (index < 0) return;
    const node = this.drawnNode[index];
    this.zoomTo(node);
    this.onSelect(node);
  }

  zoomTo(node) {
    this.zoomNode = node;
    this.render();
    this.onZoom(node);
  }

  // The tooltip's text, several lines.
  describe(node) {
    const tree = this.tree;
    const frame = tree.frame[node];
    const { unit } = tree;
    const whole = tree.total[ROOT];
    const file = tree.frameFiles[frame];
    const lines = [tree.frameNames[frame]];
    if (file) lines.push(`${file}:${tree.frameLines[frame]}`);
    if (tree.isDiff) {
      const change = tree.total[node] - tree.baseTotal[node];
      lines.push(`now ${formatValue(tree.total[node], unit)} (${formatPercent(tree.total[node], whole)})`);
      lines.push(`base ${formatValue(tree.baseTotal[node], unit)} (${formatPercent(tree.baseTotal[node], tree.baseTotal[ROOT])})`);
      lines.push(`change ${change > 0 ? "+" : ""}${formatValue(change, unit)}`);
    } else {
      lines.push(`self ${formatValue(tree.self[node], unit)} (${formatPercent(tree.self[node], whole)})`);
      lines.push(`total ${formatValue(tree.total[node], unit)} (${formatPercent(tree.total[node], whole)})`);
    }
    return lines.join("\n");
  }

  // The drawn frames, for the test API.
  frames() {
    const tree = this.tree;
    const frames = [];
    if (!tree) return frames;
    for (let i = 0; i < this.drawnCount; i++) {
      const node = this.drawnNode[i];
      const frame = tree.frame[node];
      frames.push({
        name: tree.frameNames[frame],
        file: tree.frameFiles[frame],
        line: tree.frameLines[frame],
        depth: tree.depth[node],
        x: this.drawnX[i],
        y: this.rowTop(tree.depth[node]),
        w: this.drawnWidth[i],
        h: ROW_HEIGHT,
        self: tree.self[node],
        total: tree.total[node],
        diff: tree.isDiff ? tree.total[node] - tree.baseTotal[node] : null,
        ...(tree.isDiff ? { change: this.changeOf(node) } : {}),
      });
    }
    return frames;
  }
}
