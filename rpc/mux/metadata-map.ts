/**
 * grpc-js `Metadata` ⇄ the frame's `map<string, string>`, as HTTP/2 headers would carry it: several values of
 * one key are joined (text with ", ", binary `-bin` values as comma-separated base64) and split back for `-bin`.
 */
import { Metadata } from '@grpc/grpc-js';

type Values = Record<string, Array<string | Buffer>>;

/** The frame map for `md`, or undefined when it is empty (the common case: no map is built at all). */
export function metadataToMap(md: Metadata | undefined): Record<string, string> | undefined {
  if (md === undefined) return undefined;
  // toJSON() hands out grpc-js's own value lists without copying them.
  const all = md.toJSON() as Values;
  let out: Record<string, string> | undefined;
  for (const key in all) {
    const values = all[key];
    if (values.length === 0) continue;
    out ??= {};
    if (key.endsWith('-bin')) {
      out[key] =
        values.length === 1
          ? (values[0] as Buffer).toString('base64')
          : values.map((v) => (v as Buffer).toString('base64')).join(',');
    } else {
      out[key] = values.length === 1 ? (values[0] as string) : values.join(', ');
    }
  }
  return out;
}

/** Fills `md` (a fresh Metadata by default) from a frame map; `-bin` values are base64, maybe comma-joined. */
export function mapToMetadata(map: Record<string, string> | undefined, md = new Metadata()): Metadata {
  if (map === undefined) return md;
  for (const key in map) {
    try {
      if (key.endsWith('-bin')) {
        for (const part of map[key].split(',')) md.add(key, Buffer.from(part.trim(), 'base64'));
      } else {
        md.add(key, map[key]);
      }
    } catch {
      // grpc-js refuses keys and values that are not legal header text: such an entry is left out, as an
      // HTTP/2 peer could never have sent it.
    }
  }
  return md;
}
