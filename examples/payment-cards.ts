/** The test card every payment provider has: always declined (examples/payment.ts refuses it). */
export const DECLINED_CARD = '4000-0000-0000-0002';
