/**
 * Coalesces every frame queued in one event-loop turn into one MuxBatch write, and respects the stream's
 * backpressure: after a `write()` that returns false nothing more is written until `drained()`.
 */
import { encodeBatch, encodedFrameBytes, type Frame } from './codec';

export interface FrameBatcherOptions<F extends Frame> {
  /** Hands one encoded MuxBatch to the stream; false = its buffer is full, wait for 'drain'. */
  write(batch: Buffer): boolean;
  /** Called for each frame just before it is encoded; false drops it (e.g. a call settled meanwhile). */
  prepare?(frame: F): boolean;
  /** Called for each frame once the stream took the batch holding it (it may now reach the peer). */
  written?(frame: F): void;
  /** A batch above this is split (one frame above it travels alone). */
  maxBatchBytes: number;
  /** Runs the flush later in this turn; `setImmediate` by default (after the I/O that produced the frames). */
  schedule?(fn: () => void): void;
}

// Frame overhead besides payload, method and details, for deciding cheaply whether a batch may need splitting.
const FRAME_OVERHEAD_BYTES = 48;

export class FrameBatcher<F extends Frame = Frame> {
  private frames: F[] = [];
  private approxBytes = 0;
  private scheduled = false;
  private blocked = false;
  private readonly schedule: (fn: () => void) => void;
  private readonly flushNow = () => this.flush();
  /** Batches written so far (for tests and stats). */
  batches = 0;

  constructor(private readonly o: FrameBatcherOptions<F>) {
    this.schedule = o.schedule ?? setImmediate;
  }

  /** Frames queued and not yet written. */
  get pending(): number {
    return this.frames.length;
  }

  /** True after a write the stream could not take in, until `drained()`. */
  get isBlocked(): boolean {
    return this.blocked;
  }

  push(frame: F): void {
    this.frames.push(frame);
    this.approxBytes +=
      FRAME_OVERHEAD_BYTES +
      (frame.payload?.length ?? 0) +
      (frame.method?.length ?? 0) +
      (frame.statusDetails?.length ?? 0) +
      (frame.metadata ? metadataBytes(frame.metadata) : 0);
    if (!this.scheduled && !this.blocked) {
      this.scheduled = true;
      this.schedule(this.flushNow);
    }
  }

  /** The stream emitted 'drain': write what waited. */
  drained(): void {
    if (!this.blocked) return;
    this.blocked = false;
    if (this.frames.length > 0 && !this.scheduled) {
      this.scheduled = true;
      this.schedule(this.flushNow);
    }
  }

  /** Removes and returns every frame not yet written (the stream is gone). */
  takePending(): F[] {
    const out = this.frames;
    this.frames = [];
    this.approxBytes = 0;
    return out;
  }

  flush(): void {
    this.scheduled = false;
    if (this.blocked || this.frames.length === 0) return;
    // Swapped out first: prepare() may push (a CANCEL, a queued call taking a freed slot) into the next batch.
    let frames = this.frames;
    const split = this.approxBytes > this.o.maxBatchBytes / 2;
    this.frames = [];
    this.approxBytes = 0;
    const prepare = this.o.prepare;
    if (prepare) {
      let kept = 0;
      for (let i = 0; i < frames.length; i++) if (prepare(frames[i])) frames[kept++] = frames[i];
      frames.length = kept;
    }
    let from = 0;
    while (from < frames.length) {
      let to = frames.length;
      if (split) {
        let bytes = encodedFrameBytes(frames[from]);
        to = from + 1;
        while (to < frames.length) {
          const b = encodedFrameBytes(frames[to]);
          if (bytes + b > this.o.maxBatchBytes) break;
          bytes += b;
          to++;
        }
      }
      this.batches++;
      const ok = this.o.write(encodeBatch(frames, from, to));
      const written = this.o.written;
      if (written) for (let i = from; i < to; i++) written(frames[i]);
      from = to;
      if (!ok) {
        this.blocked = true;
        if (from < frames.length) {
          // Frames prepared but not written go back to the head of the queue, ahead of anything pushed later.
          frames = frames.slice(from);
          for (const f of frames) this.approxBytes += FRAME_OVERHEAD_BYTES + (f.payload?.length ?? 0);
          this.frames = frames.concat(this.frames);
        }
        return;
      }
    }
  }
}

/** Metadata counts toward a batch's size like payloads do: a batch of large trailers must be split too. */
function metadataBytes(md: Record<string, string>): number {
  let n = 0;
  for (const k in md) n += k.length + md[k].length + 4;
  return n;
}
