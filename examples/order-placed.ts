/** The OrderPlaced event: what the order service publishes inside its transaction and shipping consumes. */
export interface OrderPlaced {
  type: 'OrderPlaced';
  orderId: string;
  customer: string;
  sku: string;
  quantity: number;
  amountCents: number;
}

/** Header the consumers filter on (without decoding the value). */
export const ORDER_PLACED_HEADERS = { type: 'OrderPlaced' };

/**
 * The event from a received value: DMTP hands JSON values over parsed; one published as raw bytes (an older
 * publisher) arrives as a Buffer of JSON.
 */
export function orderPlacedOf(value: unknown): OrderPlaced {
  const v = Buffer.isBuffer(value) ? (JSON.parse(value.toString('utf8')) as unknown) : value;
  const o = v as Partial<OrderPlaced>;
  if (!o || o.type !== 'OrderPlaced' || typeof o.orderId !== 'string')
    throw new Error(`not an OrderPlaced event: ${JSON.stringify(v).slice(0, 200)}`);
  return o as OrderPlaced;
}
