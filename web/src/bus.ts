// One event stream per page, shared by every view through this bus.
import type { FeedEvent } from './api.ts';

type Fn = (e: FeedEvent) => void;
const subs = new Set<Fn>();

export const bus = {
  emit(e: FeedEvent): void {
    for (const f of subs) f(e);
  },
  on(f: Fn): () => void {
    subs.add(f);
    return () => subs.delete(f);
  },
};

/** Insert or replace `item` (matched by `key`) in a copy of `list`. */
export function upsert<T>(list: T[], item: T, key: (x: T) => string): T[] {
  const k = key(item);
  const i = list.findIndex((x) => key(x) === k);
  if (i === -1) return [...list, item];
  const out = list.slice();
  out[i] = { ...list[i], ...item };
  return out;
}
