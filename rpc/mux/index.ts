/**
 * The multiplexed call path (proto/dmtp/v1/mux.proto): many unary calls over one long-lived gRPC bidi stream
 * per client/instance pair, frames coalesced per event-loop turn.
 *
 * Server: `server.addService(muxServiceDefinition, createMuxService(lookup, middleware))`.
 * Client: `new MuxTransport({ address, fallback: unaryTransport })` for instances advertising `mux: '1'`.
 */
export { createMuxService, muxServiceDefinition, type MuxServiceImpl } from './service';
export { MuxTransport } from './transport';
export { DEFAULTS, type MuxServiceOptions, type MuxTransportOptions } from './options';
export { decodeBatch, encodeBatch, FrameKind, MuxDecodeError, type DecodedFrame, type Frame } from './codec';
export { metadataToMap, mapToMetadata } from './metadata-map';

/** Registry metadata key and value an instance advertises when it serves the multiplexed path. */
export const MUX_METADATA_KEY = 'mux';
export const MUX_METADATA_VALUE = '1';
