/**
 * A small service for rpc tests and benchmarks, defined by hand with raw Buffer payloads (no .proto, no codegen).
 * `echo` answers its request bytes; `whoami` answers the instance's label; `sleep` waits the number of ms its
 * request holds (as text) and then answers the label — to keep calls in flight across a stop or a crash.
 */
import type { MethodDefinition } from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Handlers } from '../../rpc/server';

/** A unary method of raw bytes at `path` (no codec): for services defined by hand in tests. */
export const rawMethod = (path: string): MethodDefinition<Buffer, Buffer> => ({
  path,
  requestStream: false,
  responseStream: false,
  requestSerialize: (b: Buffer) => b,
  requestDeserialize: (b: Buffer) => b,
  responseSerialize: (b: Buffer) => b,
  responseDeserialize: (b: Buffer) => b,
});

export const EchoService = {
  echo: rawMethod('/dmtp.test.Echo/Echo'),
  whoami: rawMethod('/dmtp.test.Echo/WhoAmI'),
  sleep: rawMethod('/dmtp.test.Echo/Sleep'),
};

export type EchoService = typeof EchoService;

/** Handlers answering as `label`; `onCall` sees each call's method (for counting). */
export function echoHandlers(label: string, onCall?: (method: string) => void): Handlers<EchoService> {
  const who = Buffer.from(label);
  return {
    echo: (call) => {
      onCall?.(call.method);
      return call.request;
    },
    whoami: (call) => {
      onCall?.(call.method);
      return who;
    },
    sleep: async (call) => {
      onCall?.(call.method);
      await sleep(Number(call.request.toString()) || 0);
      return who;
    },
  };
}
