/**
 * Transports kept per instance address, for callers that reach instances by the address they were given rather
 * than through a registry-fed client: the coordinator's participant gateway (a branch's recorded address) and
 * the transaction API's coordinator clients (a coordinator's address). Per address: the multiplexed stream (with
 * plain unary for large payloads), or plain unary only once the instance refused the stream (it does not serve
 * dmtp.v1.Mux: found on the first call, remembered); and an address nobody used for `idleCloseMs` is closed and
 * forgotten, so addresses of instances that moved on (a pod's new IP) do not pile up in a long-lived process.
 */
import {
  InvalidArgumentError,
  MAX_TIMER_MS,
  systemClock,
  UnavailableError,
  withoutUndefined,
  type Clock,
  type Timer,
} from '../common';
import { MuxTransport } from './mux';
import type { TransportCall, TransportResult } from './transport';
import { UnaryTransport } from './transport-unary';
import { checkTls, type TlsOptions } from './tls';

export const ADDRESS_TRANSPORTS_DEFAULTS = {
  /** 'mux' (the fast path, unary for an instance that lacks it) or 'unary' only. */
  transport: 'mux' as 'mux' | 'unary',
  /** Transports of an address unused for this long are closed. */
  idleCloseMs: 60_000,
};

export interface AddressTransportsOptions extends Partial<typeof ADDRESS_TRANSPORTS_DEFAULTS> {
  clock?: Clock;
  /** TLS to every address (default plaintext). */
  tls?: TlsOptions;
  /** An address's transports were closed for being idle (a caller forgets what it knew of the address). */
  onIdleClose?(address: string): void;
}

/**
 * The instance refused the multiplexed stream itself: grpc-js' "does not implement the method /dmtp.v1.Mux/Call"
 * (UNIMPLEMENTED). Only that refusal counts: a handler's own error that merely says "unimplemented" must not send
 * the call again over unary (it ran) nor switch the address to unary for good.
 */
const NO_MUX = /(does not implement|UNIMPLEMENTED)[^]*\/dmtp\.v1\.Mux\/Call/i;

interface Entry {
  unary: UnaryTransport;
  mux?: MuxTransport;
  /** The instance refused the multiplexed path: unary only (the mux transport stays idle until closed). */
  muxRefused: boolean;
  lastUsedMs: number;
  inFlight: number;
}

export class AddressTransports {
  private readonly entries = new Map<string, Entry>();
  private readonly config: typeof ADDRESS_TRANSPORTS_DEFAULTS;
  private readonly clock: Clock;
  private readonly onIdleClose: ((address: string) => void) | undefined;
  private readonly tls: TlsOptions | undefined;
  private sweep: Timer | undefined;
  private closed = false;

  constructor(options: AddressTransportsOptions = {}) {
    const { clock, onIdleClose, tls, ...config } = options;
    if (tls) checkTls('transports', tls);
    this.tls = tls;
    this.config = { ...ADDRESS_TRANSPORTS_DEFAULTS, ...withoutUndefined(config) };
    const idle = this.config.idleCloseMs;
    if (!(idle > 0 && idle <= MAX_TIMER_MS)) {
      throw new InvalidArgumentError(`idleCloseMs ${idle} is out of range 1-${MAX_TIMER_MS}`);
    }
    this.clock = clock ?? systemClock;
    this.onIdleClose = onIdleClose;
  }

  /** Sends `call` to `address`: over the stream, or unary for an instance that refused it (tried once more). */
  async invoke(address: string, call: TransportCall): Promise<TransportResult> {
    if (this.closed) {
      // Nothing is opened once closed (it would never be swept or closed again).
      throw new UnavailableError(`transports are closed: no call to ${address}`, {
        details: { address, notSent: true },
      });
    }
    const e = this.entry(address);
    e.inFlight++;
    e.lastUsedMs = this.clock.now();
    try {
      if (!e.mux || e.muxRefused) return await e.unary.invoke(call);
      try {
        return await e.mux.invoke(call);
      } catch (err) {
        if (!NO_MUX.test((err as Error).message)) throw err;
        e.muxRefused = true; // refused before any call ran on it: unary from now on
        return await e.unary.invoke(call);
      }
    } finally {
      e.inFlight--;
      e.lastUsedMs = this.clock.now();
    }
  }

  /** The address is still of interest (e.g. asked whether it is down): what is kept for it stays. */
  touch(address: string): void {
    const e = this.entries.get(address);
    if (e) e.lastUsedMs = this.clock.now();
  }

  /** The address's multiplexed transport, unless there is none or the instance refused it. */
  muxOf(address: string): MuxTransport | undefined {
    const e = this.entries.get(address);
    return e && !e.muxRefused ? e.mux : undefined;
  }

  /** Addresses with open transports, and which path each uses now (tests, metrics). */
  paths(): Record<string, 'mux' | 'unary'> {
    return Object.fromEntries(
      [...this.entries].map(([a, e]) => [a, e.mux && !e.muxRefused ? 'mux' : 'unary']),
    );
  }

  get size(): number {
    return this.entries.size;
  }

  close(): void {
    this.closed = true;
    this.sweep?.cancel();
    this.sweep = undefined;
    for (const e of this.entries.values()) closeEntry(e);
    this.entries.clear();
  }

  private entry(address: string): Entry {
    let e = this.entries.get(address);
    if (!e) {
      const unary = new UnaryTransport(address, { tls: this.tls });
      const mux =
        this.config.transport === 'mux'
          ? new MuxTransport({ address, fallback: unary, tls: this.tls })
          : undefined;
      e = { unary, mux, muxRefused: false, lastUsedMs: this.clock.now(), inFlight: 0 };
      this.entries.set(address, e);
      this.scheduleSweep();
    }
    return e;
  }

  private scheduleSweep(): void {
    if (this.sweep || this.closed) return;
    this.sweep = this.clock.setTimeout(() => {
      this.sweep = undefined;
      const now = this.clock.now();
      for (const [address, e] of this.entries) {
        if (e.inFlight === 0 && now - e.lastUsedMs >= this.config.idleCloseMs) {
          closeEntry(e);
          this.entries.delete(address);
          this.onIdleClose?.(address);
        }
      }
      if (this.entries.size > 0) this.scheduleSweep();
    }, this.config.idleCloseMs);
    this.sweep.unref?.(); // a sweep never keeps a process alive
  }
}

function closeEntry(e: Entry): void {
  e.mux?.close();
  e.unary.close();
}
