/**
 * serviceBinding types each handler by its method. The type half of this test is checked by `tsc` (run by
 * `npm test`): an `@ts-expect-error` line that compiled would itself be an error.
 */
import { strict as assert } from 'node:assert';
import { serviceBinding } from '../../../rpc';
import { InventoryService } from '../../../examples/gen/shop/v1/shop';

describe('rpc: serviceBinding', () => {
  it('is the binding literal, with handlers typed by their method', async () => {
    const reserve = async () => ({ unitPriceCents: 250, leftInStock: 3 });
    const b = serviceBinding('inventory', InventoryService, { reserve });
    assert.equal(b.name, 'inventory');
    assert.equal(b.definition, InventoryService);
    assert.equal(b.handlers.reserve, reserve);
    // A response its message does not have: refused by the compiler (the literal form took it, and the call
    // then failed INTERNAL when the response was encoded).
    serviceBinding('inventory', InventoryService, {
      // @ts-expect-error leftInStock is missing, sku is no field of ReserveResponse
      reserve: async () => ({ sku: 'apple', unitPriceCents: 250 }),
    });
    // @ts-expect-error a method the service does not have
    serviceBinding('inventory', InventoryService, { reserve, refund: async () => ({}) });
  });
});
