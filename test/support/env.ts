/**
 * Where the real services of the integration tests are: from the environment that `npm test` exports
 * (scripts/services.sh env), with the script's own defaults so a single test file can be run by hand.
 */
export const ETCD_ENDPOINTS = (process.env.ETCD_ENDPOINTS ?? 'http://127.0.0.1:23790').split(',');
export const KAFKA_BROKERS = (process.env.KAFKA_BROKERS ?? '127.0.0.1:19092').split(',');
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:25432/postgres';

/**
 * A name made from the running test's title (and a short random suffix so reruns never collide): used for
 * etcd prefixes, Kafka topics, databases and xids, so what a test left behind says which test it was.
 */
export function nameFor(ctx: Mocha.Context, maxLength = 48): string {
  const title = ctx.test?.fullTitle() ?? ctx.currentTest?.fullTitle() ?? 'test';
  const slug = title
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')
    .slice(0, maxLength - 7);
  return `${slug}-${Math.random().toString(36).slice(2, 8)}`;
}
