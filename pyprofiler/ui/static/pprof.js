// Decoder for pprof's profile.proto (gzipped or raw), written by hand so that the page needs no
// library. The model keeps samples in flat typed arrays: a 100 000-node profile has hundreds of
// thousands of stack entries, and one object per sample would cost more than the decode itself.

export class ProfileFormatError extends Error {}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;
const TWO_POW_32 = 4294967296;

class ProtoReader {
  constructor(bytes, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.pos = start;
    this.end = end;
    this.spanStart = 0;
  }

  atEnd() {
    return this.pos >= this.end;
  }

  // A varint as a double: exact up to 2^53, which every count, byte size and nanosecond total
  // of a profile fits in. Negative int64 values (deltas) arrive as ten-byte two's complement,
  // so the high and low 32 bits are gathered separately and combined with their sign.
  varint() {
    const bytes = this.bytes;
    if (this.pos >= this.end) throw new ProfileFormatError("truncated varint");
    let byte = bytes[this.pos++];
    if (byte < 0x80) return byte;
    if (this.pos < this.end && bytes[this.pos] < 0x80) return (byte & 0x7f) | (bytes[this.pos++] << 7);
    let low = byte & 0x7f;
    let high = 0;
    let shift = 7;
    for (;;) {
      if (this.pos >= this.end) throw new ProfileFormatError("truncated varint");
      if (shift > 63) throw new ProfileFormatError("varint longer than 10 bytes");
      byte = bytes[this.pos++];
      if (shift < 28) {
        low |= (byte & 0x7f) << shift;
      } else if (shift === 28) {
        low |= (byte & 0x0f) << 28;
        high |= (byte & 0x7f) >>> 4;
      } else {
        high |= (byte & 0x7f) << (shift - 32);
      }
      if (byte < 0x80) break;
      shift += 7;
    }
    if (high & 0x80000000) {
      return -((~high >>> 0) * TWO_POW_32 + (~low >>> 0) + 1);
    }
    return (high >>> 0) * TWO_POW_32 + (low >>> 0);
  }

  // Reads a length prefix and moves past the bytes it covers: they start at `spanStart` and end
  // where this returns (no array per call: there is one call per sample, location and line).
  span() {
    const length = this.varint();
    const start = this.pos;
    const end = start + length;
    if (length < 0 || end > this.end) throw new ProfileFormatError("length past the end of the data");
    this.spanStart = start;
    this.pos = end;
    return end;
  }

  // Points the reader at bytes[start, end) of the same buffer.
  reset(start, end) {
    this.pos = start;
    this.end = end;
    return this;
  }

  skip(wireType) {
    switch (wireType) {
      case WIRE_VARINT: this.varint(); break;
      case WIRE_FIXED64: this.pos += 8; break;
      case WIRE_BYTES: this.span(); break;
      case WIRE_FIXED32: this.pos += 4; break;
      default: throw new ProfileFormatError(`unknown wire type ${wireType}`);
    }
    if (this.pos > this.end) throw new ProfileFormatError("field past the end of the data");
  }

  // A repeated integer field, packed (wire type 2) or one value per tag; pushes onto `out`.
  repeatedVarint(wireType, out) {
    if (wireType === WIRE_BYTES) {
      const end = this.span();
      const outerEnd = this.end;
      this.pos = this.spanStart;
      this.end = end;
      while (this.pos < end) out.push(this.varint());
      this.end = outerEnd;
    } else if (wireType === WIRE_VARINT) {
      out.push(this.varint());
    } else {
      throw new ProfileFormatError(`wire type ${wireType} for an integer field`);
    }
  }
}

// A list of numbers in a typed array that grows: the samples' location ids and values run into
// the millions, where a plain array is slower to fill and to read. Int32 while every value fits
// (location ids do: half the memory, and fewer collections), doubles from the first that does not.
class NumberList {
  constructor(capacity) {
    this.array = new Int32Array(Math.max(capacity, 1024));
    this.length = 0;
  }

  push(value) {
    if (this.length === this.array.length) this.resize(this.array.length * 2, this.array.constructor);
    if ((value | 0) !== value && this.array instanceof Int32Array) this.resize(this.array.length, Float64Array);
    this.array[this.length++] = value;
  }

  resize(capacity, Type) {
    const larger = new Type(capacity);
    larger.set(this.array.subarray(0, this.length));
    this.array = larger;
  }
}

// Maps the ids of a message kind (locations, functions) to their indices: a table when the ids
// are small (Go and pyprofiler number them 1..n), a Map otherwise.
function indexById(items) {
  let largest = 0;
  for (const item of items) if (item.id > largest) largest = item.id;
  if (largest <= 4 * items.length + 1024) {
    const table = new Int32Array(largest + 1).fill(-1);
    items.forEach((item, index) => { table[item.id] = index; });
    return (id) => (id >= 0 && id <= largest ? table[id] : -1);
  }
  const map = new Map(items.map((item, index) => [item.id, index]));
  return (id) => map.get(id) ?? -1;
}

const utf8 = new TextDecoder("utf-8");

function decodeString(bytes, start, end) {
  // Most names are short ASCII; building those directly is several times faster than
  // TextDecoder on a profile with 100 000 strings.
  if (end - start < 64) {
    let ascii = true;
    for (let i = start; i < end; i++) {
      if (bytes[i] >= 0x80) { ascii = false; break; }
    }
    if (ascii) return String.fromCharCode.apply(null, bytes.subarray(start, end));
  }
  return utf8.decode(bytes.subarray(start, end));
}

function readValueType(reader, start, end) {
  const sub = new ProtoReader(reader.bytes, start, end);
  const valueType = { type: 0, unit: 0 };
  while (!sub.atEnd()) {
    const tag = sub.varint();
    const field = tag >>> 3;
    if (field === 1 && (tag & 7) === WIRE_VARINT) valueType.type = sub.varint();
    else if (field === 2 && (tag & 7) === WIRE_VARINT) valueType.unit = sub.varint();
    else sub.skip(tag & 7);
  }
  return valueType;
}

function readLabel(sub) {
  const label = { key: 0, str: 0, num: 0, numUnit: 0 };
  while (!sub.atEnd()) {
    const tag = sub.varint();
    const wireType = tag & 7;
    if (wireType !== WIRE_VARINT) { sub.skip(wireType); continue; }
    switch (tag >>> 3) {
      case 1: label.key = sub.varint(); break;
      case 2: label.str = sub.varint(); break;
      case 3: label.num = sub.varint(); break;
      case 4: label.numUnit = sub.varint(); break;
      default: sub.varint();
    }
  }
  return label;
}

function readLine(sub) {
  const line = { functionId: 0, line: 0, functionIndex: -1 };
  while (!sub.atEnd()) {
    const tag = sub.varint();
    const wireType = tag & 7;
    if (wireType !== WIRE_VARINT) { sub.skip(wireType); continue; }
    const field = tag >>> 3;
    const value = sub.varint();
    if (field === 1) line.functionId = value;
    else if (field === 2) line.line = value;
  }
  return line;
}

function readLocation(sub, lineReader) {
  const location = { id: 0, mappingId: 0, address: 0, lines: [] };
  while (!sub.atEnd()) {
    const tag = sub.varint();
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (field === 4 && wireType === WIRE_BYTES) {
      const lineEnd = sub.span();
      location.lines.push(readLine(lineReader.reset(sub.spanStart, lineEnd)));
    } else if (wireType === WIRE_VARINT && field >= 1 && field <= 3) {
      const value = sub.varint();
      if (field === 1) location.id = value;
      else if (field === 2) location.mappingId = value;
      else location.address = value;
    } else {
      sub.skip(wireType);
    }
  }
  return location;
}

function readFunction(sub) {
  const fn = { id: 0, name: 0, systemName: 0, filename: 0, startLine: 0 };
  while (!sub.atEnd()) {
    const tag = sub.varint();
    const wireType = tag & 7;
    if (wireType !== WIRE_VARINT) { sub.skip(wireType); continue; }
    const value = sub.varint();
    switch (tag >>> 3) {
      case 1: fn.id = value; break;
      case 2: fn.name = value; break;
      case 3: fn.systemName = value; break;
      case 4: fn.filename = value; break;
      case 5: fn.startLine = value; break;
    }
  }
  return fn;
}

// The decoded profile. Strings are resolved; samples are flat:
//   sample i's locations are sampleLocations[sampleLocationStart[i] .. sampleLocationStart[i+1]),
//   leaf first, as indices into `locations`;
//   its value for sample type t is sampleValues[i * sampleTypes.length + t];
//   its labels are sampleLabels[i] (null when it has none).
// A location's `lines` are leaf first too (inlined frames before the function they are inlined
// into), each with `functionIndex` into `functions` (-1 when the id names no function).
export class Profile {
  constructor() {
    this.sampleTypes = [];
    this.defaultSampleType = "";
    this.periodType = null;
    this.period = 0;
    this.timeNanos = 0;
    this.durationNanos = 0;
    this.functions = [];
    this.locations = [];
    this.sampleCount = 0;
    this.sampleLocationStart = new Int32Array(1);
    this.sampleLocations = new Int32Array(0);
    this.sampleValues = new Float64Array(0);
    this.sampleLabels = [];
  }

  // The index of the sample type named `name`, or the default sample type's (pprof's rule:
  // default_sample_type, else the last one) when `name` is empty or absent.
  sampleTypeIndex(name) {
    const types = this.sampleTypes.map((sampleType) => sampleType.type);
    if (name && types.includes(name)) return types.indexOf(name);
    if (this.defaultSampleType && types.includes(this.defaultSampleType)) {
      return types.indexOf(this.defaultSampleType);
    }
    return types.length - 1;
  }
}

function decodeMessage(bytes) {
  const reader = new ProtoReader(bytes);
  const strings = [];
  const sampleTypeRefs = [];
  const locations = [];
  const functions = [];
  // A first pass sizes the sample arrays: every location id takes at least a byte.
  let sampleCount = 0, sampleBytes = 0;
  while (!reader.atEnd()) {
    const tag = reader.varint();
    if (tag === ((2 << 3) | WIRE_BYTES)) {
      sampleBytes += reader.span() - reader.spanStart;
      sampleCount++;
    } else {
      reader.skip(tag & 7);
    }
  }
  reader.pos = 0;
  const locationIds = new NumberList(sampleBytes >> 1);
  const locationStart = new NumberList(sampleCount + 1);
  locationStart.push(0);
  const values = new NumberList(sampleCount * 2);
  const valueCounts = [];
  const labelRefs = [];
  let periodTypeRef = null;
  let period = 0, timeNanos = 0, durationNanos = 0, defaultSampleTypeRef = 0;

  // One reader for every sample, location, line, function and label: there can be hundreds of
  // thousands of each.
  const sample = new ProtoReader(bytes);
  const part = new ProtoReader(bytes);
  const partLine = new ProtoReader(bytes);
  while (!reader.atEnd()) {
    const tag = reader.varint();
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (wireType === WIRE_BYTES && (field === 1 || field === 2 || field === 4 || field === 5 ||
                                    field === 6 || field === 11)) {
      const end = reader.span();
      const start = reader.spanStart;
      if (field === 1) {
        sampleTypeRefs.push(readValueType(reader, start, end));
      } else if (field === 2) {
        sample.pos = start;
        sample.end = end;
        let sampleLabels = null;
        const valuesBefore = values.length;
        while (!sample.atEnd()) {
          const sampleTag = sample.varint();
          const sampleField = sampleTag >>> 3;
          const sampleWire = sampleTag & 7;
          if (sampleField === 1) sample.repeatedVarint(sampleWire, locationIds);
          else if (sampleField === 2) sample.repeatedVarint(sampleWire, values);
          else if (sampleField === 3 && sampleWire === WIRE_BYTES) {
            const labelEnd = sample.span();
            (sampleLabels ??= []).push(readLabel(part.reset(sample.spanStart, labelEnd)));
          } else sample.skip(sampleWire);
        }
        locationStart.push(locationIds.length);
        valueCounts.push(values.length - valuesBefore);
        labelRefs.push(sampleLabels);
      } else if (field === 4) {
        locations.push(readLocation(part.reset(start, end), partLine));
      } else if (field === 5) {
        functions.push(readFunction(part.reset(start, end)));
      } else if (field === 6) {
        strings.push(decodeString(bytes, start, end));
      } else {
        periodTypeRef = readValueType(reader, start, end);
      }
    } else if (wireType === WIRE_VARINT && (field === 9 || field === 10 || field === 12 ||
                                            field === 14)) {
      const value = reader.varint();
      if (field === 9) timeNanos = value;
      else if (field === 10) durationNanos = value;
      else if (field === 12) period = value;
      else defaultSampleTypeRef = value;
    } else {
      reader.skip(wireType);
    }
  }
  return {
    strings, sampleTypeRefs, locations, functions, locationIds, locationStart, values,
    valueCounts, labelRefs, periodTypeRef, period, timeNanos, durationNanos, defaultSampleTypeRef,
  };
}

function resolve(raw) {
  const { strings } = raw;
  const string = (index) => {
    if (!Number.isInteger(index) || index < 0 || index >= strings.length) {
      throw new ProfileFormatError(`string index ${index} outside the string table`);
    }
    return strings[index];
  };
  if (strings.length === 0 && raw.sampleTypeRefs.length === 0) {
    throw new ProfileFormatError("no sample types and no string table");
  }
  if (strings.length > 0 && strings[0] !== "") {
    throw new ProfileFormatError("the string table does not start with the empty string");
  }
  const profile = new Profile();
  profile.sampleTypes = raw.sampleTypeRefs.map((ref) => ({ type: string(ref.type), unit: string(ref.unit) }));
  if (profile.sampleTypes.length === 0) throw new ProfileFormatError("no sample types");
  profile.defaultSampleType = raw.defaultSampleTypeRef ? string(raw.defaultSampleTypeRef) : "";
  profile.periodType = raw.periodTypeRef &&
    { type: string(raw.periodTypeRef.type), unit: string(raw.periodTypeRef.unit) };
  profile.period = raw.period;
  profile.timeNanos = raw.timeNanos;
  profile.durationNanos = raw.durationNanos;

  const functionIndexOf = indexById(raw.functions);
  profile.functions = raw.functions.map((fn) => ({
    id: fn.id, name: string(fn.name), systemName: string(fn.systemName),
    filename: string(fn.filename), startLine: fn.startLine,
  }));

  const locationIndexOf = indexById(raw.locations);
  for (const location of raw.locations) {
    for (const line of location.lines) line.functionIndex = functionIndexOf(line.functionId);
  }
  profile.locations = raw.locations;

  const typeCount = profile.sampleTypes.length;
  const sampleCount = raw.valueCounts.length;
  profile.sampleCount = sampleCount;
  profile.sampleLocationStart = Int32Array.from(raw.locationStart.array.subarray(0, raw.locationStart.length));
  const locationIds = raw.locationIds.array;
  profile.sampleLocations = new Int32Array(raw.locationIds.length);
  for (let i = 0; i < raw.locationIds.length; i++) {
    const index = locationIndexOf(locationIds[i]);
    if (index < 0) {
      throw new ProfileFormatError(`a sample names location ${locationIds[i]}, which is not in the profile`);
    }
    profile.sampleLocations[i] = index;
  }
  for (let i = 0; i < sampleCount; i++) {
    if (raw.valueCounts[i] !== typeCount) {
      throw new ProfileFormatError(`sample ${i} has ${raw.valueCounts[i]} values for ${typeCount} sample types`);
    }
  }
  profile.sampleValues = raw.values.array.slice(0, raw.values.length);
  profile.sampleLabels = raw.labelRefs.map((labels) => labels && labels.map((label) => ({
    key: string(label.key),
    str: label.str ? string(label.str) : null,
    num: label.str ? null : label.num,
    numUnit: label.numUnit ? string(label.numUnit) : "",
  })));
  return profile;
}

async function gunzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Decodes profile bytes (gzipped when they start with 1f 8b, raw otherwise). Every failure is
// a ProfileFormatError whose message says what is wrong with the data.
export async function decodeProfile(input) {
  let bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = await gunzip(bytes);
    } catch (error) {
      throw new ProfileFormatError(`corrupt or truncated gzip data (${error.message})`);
    }
  }
  if (bytes.length === 0) throw new ProfileFormatError("empty data");
  try {
    return resolve(decodeMessage(bytes));
  } catch (error) {
    if (error instanceof ProfileFormatError) throw error;
    throw new ProfileFormatError(error.message);
  }
}
