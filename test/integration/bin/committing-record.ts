/**
 * A decided commit put straight into a coordinator's etcd log, as a coordinator that crashed in phase 2 leaves it:
 * the coordinator started on that log recovers it and answers COMMIT for it, still sending phase 2 to an address
 * nobody serves (127.0.0.1:1).
 */
import { Etcd3 } from 'etcd3';
import { parseXid } from '../../../common';
import { encodeRecord } from '../../../coordinator/log/record-codec';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { ETCD_ENDPOINTS } from '../../support/env';
import { record } from '../../support/tx-log-contract';

/** `xid`'s COMMITTING record under `prefix`, with one branch `<resource>@<instance>` of service shop. */
export async function putCommitting(prefix: string, xid: string, branchId = 'db@shop-1'): Promise<void> {
  const [resource, instanceId] = branchId.split('@');
  const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  try {
    await etcd.put(`${prefix}/tx/${parseXid(xid).owner}/${xid}`).value(
      encodeRecord(
        record(xid, TxState.TX_STATE_COMMITTING, {
          branches: [{ branchId, service: 'shop', instanceId, address: '127.0.0.1:1', resource }],
          events: [],
        }),
      ),
    );
  } finally {
    etcd.close();
  }
}
