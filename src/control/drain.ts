// A node about to shut down (a draining heartbeat): nothing new is placed on
// it, and each app it runs sleeps the graceful way (router drain, SIGTERM and
// grace on the node, a `node-leaving` sleep record), all at once, while the
// node still serves its API. Answered when they are asleep.
import type { Logger } from 'pino';
import { asThawError } from '../errors.ts';
import type { HeartbeatResponse, NodeStatus } from '../wire/node.ts';
import type { Cluster } from './cluster.ts';
import type { Fleet } from './fleet.ts';
import type { Placements } from './placements.ts';
import type { Runs } from './runs.ts';

export interface DrainOptions {
  cluster: Cluster;
  placements: Placements;
  fleet: Fleet;
  runs: Runs;
  log: Logger;
  lock: <T>(app: string, fn: () => Promise<T>) => Promise<T>;
}

export async function drainNode(o: DrainOptions, st: NodeStatus): Promise<HeartbeatResponse> {
  const m = o.cluster.get(st.name);
  if (m) m.draining = true;
  const apps = o.placements.on(st.name).map(([app]) => app);
  if (apps.length) o.log.info({ node: st.name, apps }, 'node is leaving: its apps sleep now');
  await Promise.all(apps.map((a) => o.lock(a, () => o.runs.sleep(a, 'node-leaving')).catch((err: unknown) => o.log.warn({ app: a, err: asThawError(err).message }, 'sleep of a leaving node\'s app failed'))));
  return o.fleet.heartbeat(st);
}
