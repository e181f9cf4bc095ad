/**
 * A hand-written codec for `MuxBatch` (proto/dmtp/v1/mux.proto), wire-compatible with the generated one but
 * built for the hot path: one size pass and one write pass into a single buffer per batch, no writer forks, no
 * per-frame metadata object when there is no metadata, payloads decoded as zero-copy views of the batch buffer.
 * The generated `MuxBatch.encode/decode` stays the reference (the unit tests check both agree).
 */
import { MuxFrame_Kind } from '../../proto/gen/dmtp/v1/mux';

export { MuxFrame_Kind as FrameKind };

/** One frame as the mux code handles it; absent fields are the proto3 defaults. */
export interface Frame {
  callId: number;
  kind: MuxFrame_Kind;
  method?: string;
  payload?: Buffer;
  /** Undefined when empty. Keys ending in `-bin` carry base64. */
  metadata?: Record<string, string>;
  deadlineMs?: number;
  statusCode?: number;
  statusDetails?: string;
}

/** A frame read off the wire: `error` says why its body was malformed (its `callId` is 0 when unreadable). */
export interface DecodedFrame extends Frame {
  error?: string;
}

/** The batch itself could not be read: the stream is closed with INVALID_ARGUMENT. */
export class MuxDecodeError extends Error {
  override readonly name = 'MuxDecodeError';
}

const EMPTY = Buffer.alloc(0);
const TWO_32 = 4294967296;

// Method paths repeat on every call: their UTF-8 bytes are encoded once.
const methodBytes = new Map<string, Buffer>();
const METHOD_CACHE_MAX = 4096;

function methodBuffer(method: string): Buffer {
  let b = methodBytes.get(method);
  if (b === undefined) {
    b = Buffer.from(method, 'utf8');
    if (methodBytes.size < METHOD_CACHE_MAX) methodBytes.set(method, b);
  }
  return b;
}

export function varintSize(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  if (n < 0x800000000) return 5;
  if (n < 0x40000000000) return 6;
  if (n < 0x2000000000000) return 7;
  return 8; // ids stay below 2^53
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n % 0x80) | 0x80;
    n = n < TWO_32 ? n >>> 7 : Math.floor(n / 0x80);
  }
  buf[pos++] = n;
  return pos;
}

function lenField(len: number): number {
  return 1 + varintSize(len) + len;
}

function metadataSize(md: Record<string, string>): number {
  let size = 0;
  for (const k in md) {
    const kl = Buffer.byteLength(k);
    const vl = Buffer.byteLength(md[k]);
    size += lenField(lenField(kl) + lenField(vl));
  }
  return size;
}

function frameSize(f: Frame): number {
  let size = 0;
  if (f.callId) size += 1 + varintSize(f.callId);
  if (f.kind) size += 1 + varintSize(f.kind);
  if (f.method) size += lenField(methodBuffer(f.method).length);
  if (f.payload && f.payload.length) size += lenField(f.payload.length);
  if (f.metadata) size += metadataSize(f.metadata);
  if (f.deadlineMs) size += 1 + varintSize(f.deadlineMs);
  if (f.statusCode) size += 1 + varintSize(f.statusCode);
  if (f.statusDetails) size += lenField(Buffer.byteLength(f.statusDetails));
  return size;
}

function writeString(buf: Buffer, pos: number, tag: number, s: string): number {
  buf[pos++] = tag;
  const len = Buffer.byteLength(s);
  pos = writeVarint(buf, pos, len);
  return pos + buf.write(s, pos, len, 'utf8');
}

function writeFrame(buf: Buffer, pos: number, f: Frame): number {
  if (f.callId) {
    buf[pos++] = 0x08;
    pos = writeVarint(buf, pos, f.callId);
  }
  if (f.kind) {
    buf[pos++] = 0x10;
    pos = writeVarint(buf, pos, f.kind);
  }
  if (f.method) {
    const m = methodBuffer(f.method);
    buf[pos++] = 0x1a;
    pos = writeVarint(buf, pos, m.length);
    pos += m.copy(buf, pos);
  }
  if (f.payload && f.payload.length) {
    buf[pos++] = 0x22;
    pos = writeVarint(buf, pos, f.payload.length);
    pos += f.payload.copy(buf, pos);
  }
  if (f.metadata) {
    for (const k in f.metadata) {
      const v = f.metadata[k];
      buf[pos++] = 0x2a;
      pos = writeVarint(buf, pos, lenField(Buffer.byteLength(k)) + lenField(Buffer.byteLength(v)));
      pos = writeString(buf, pos, 0x0a, k);
      pos = writeString(buf, pos, 0x12, v);
    }
  }
  if (f.deadlineMs) {
    buf[pos++] = 0x30;
    pos = writeVarint(buf, pos, f.deadlineMs);
  }
  if (f.statusCode) {
    buf[pos++] = 0x38;
    pos = writeVarint(buf, pos, f.statusCode);
  }
  if (f.statusDetails) pos = writeString(buf, pos, 0x42, f.statusDetails);
  return pos;
}

/** Bytes `frame` adds to a batch (for splitting batches below the message size limit). */
export function encodedFrameBytes(frame: Frame): number {
  return lenField(frameSize(frame));
}

const sizes: number[] = [];

/** Encodes `frames[from, to)` as one MuxBatch message. */
export function encodeBatch(frames: readonly Frame[], from = 0, to = frames.length): Buffer {
  let total = 0;
  for (let i = from; i < to; i++) {
    const s = frameSize(frames[i]);
    sizes[i - from] = s;
    total += 1 + varintSize(s) + s;
  }
  const buf = Buffer.allocUnsafe(total);
  let pos = 0;
  for (let i = from; i < to; i++) {
    buf[pos++] = 0x0a;
    pos = writeVarint(buf, pos, sizes[i - from]);
    const end = pos + sizes[i - from];
    pos = writeFrame(buf, pos, frames[i]);
    if (pos !== end) throw new Error(`mux codec: frame size mismatch (${pos} != ${end})`);
  }
  return buf;
}

// ---- decoding ---------------------------------------------------------------------------------------------

class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  varint(): number {
    const buf = this.buf;
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new MuxDecodeError('truncated varint');
      const b = buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 0x80;
    }
    throw new MuxDecodeError('varint too long');
  }

  /** Returns the end of a length-delimited field starting at `pos`, leaving `pos` at its start. */
  lengthDelimited(): number {
    const len = this.varint();
    const end = this.pos + len;
    if (end > this.end) throw new MuxDecodeError('length-delimited field runs past its end');
    return end;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.pos = this.lengthDelimited();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new MuxDecodeError(`unsupported wire type ${wireType}`);
    }
    if (this.pos > this.end) throw new MuxDecodeError('truncated field');
  }

  string(): string {
    const end = this.lengthDelimited();
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end;
    return s;
  }
}

function decodeMetadataEntry(r: Reader, end: number, md: Record<string, string>): void {
  let key = '';
  let value = '';
  while (r.pos < end) {
    const tag = r.varint();
    if (tag === 0x0a) key = r.string();
    else if (tag === 0x12) value = r.string();
    else r.skip(tag & 7);
  }
  if (r.pos !== end) throw new MuxDecodeError('metadata entry runs past its end');
  md[key] = value;
}

function decodeFrame(buf: Buffer, start: number, end: number): DecodedFrame {
  const f: DecodedFrame = { callId: 0, kind: MuxFrame_Kind.KIND_UNSPECIFIED };
  const r = new Reader(buf, start, end);
  try {
    while (r.pos < end) {
      const tag = r.varint();
      switch (tag) {
        case 0x08:
          f.callId = r.varint();
          break;
        case 0x10:
          f.kind = r.varint();
          break;
        case 0x1a:
          f.method = r.string();
          break;
        case 0x22: {
          const e = r.lengthDelimited();
          f.payload = buf.subarray(r.pos, e);
          r.pos = e;
          break;
        }
        case 0x2a: {
          const e = r.lengthDelimited();
          decodeMetadataEntry(r, e, (f.metadata ??= {}));
          break;
        }
        case 0x30:
          f.deadlineMs = r.varint();
          break;
        case 0x38:
          f.statusCode = r.varint();
          break;
        case 0x42:
          f.statusDetails = r.string();
          break;
        default:
          if (tag >>> 3 === 0) throw new MuxDecodeError('field number 0');
          r.skip(tag & 7);
      }
    }
    if (r.pos !== end) throw new MuxDecodeError('frame runs past its end');
  } catch (err) {
    f.error = (err as Error).message;
  }
  if (f.callId > Number.MAX_SAFE_INTEGER) {
    f.error = 'call id out of range';
    f.callId = 0;
  }
  return f;
}

/**
 * Decodes one MuxBatch. A frame whose own bytes are malformed comes back with `error` set; a batch whose
 * framing cannot be read throws `MuxDecodeError`.
 */
export function decodeBatch(buf: Buffer): DecodedFrame[] {
  const frames: DecodedFrame[] = [];
  const r = new Reader(buf, 0, buf.length);
  while (r.pos < buf.length) {
    const tag = r.varint();
    if (tag === 0x0a) {
      const end = r.lengthDelimited();
      frames.push(decodeFrame(buf, r.pos, end));
      r.pos = end;
    } else {
      if (tag >>> 3 === 0) throw new MuxDecodeError('field number 0');
      r.skip(tag & 7);
    }
  }
  return frames;
}

export function emptyPayload(): Buffer {
  return EMPTY;
}
