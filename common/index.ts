/** The shared leaf beneath every DMTP module: typed errors and their gRPC mapping, logging, clocks, backoff, options. */
export * from './errors';
export * from './log';
export * from './clock';
export * from './backoff';
export * from './xid';
export * from './async-context';
export * from './durable-file';
export * from './branch-ref';
export * from './options';
export * from './counter-totals';
export * from './pid-lock';
export * from './labels';
export * from './ports';
export * from './tracing';
