/**
 * Kafka plumbing shared by the coordinator's outbox relay and the application API (txapi): the event envelope
 * (stable ids, xid, headers), the idempotent producer, consumer-group subscriptions with filters, retries,
 * dead-letter and dedupe, and topic helpers. Imports only common/ and proto/.
 */
export * from './errors';
export * from './validation';
export * from './envelope';
export * from './received-event';
export * from './client';
export * from './producer';
export * from './filter';
export * from './dedupe';
export * from './dead-letter';
export * from './subscribe-options';
export * from './consumer';
export * from './admin';
export * from './redrive';
export * from './lag';
export * from './metrics';
