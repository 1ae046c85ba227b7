// `thaw node --control URL --name NAME --data DIR`: a node agent in its own
// process. It serves the node API (src/node/server.ts) and heartbeats to the
// control plane with what it runs and holds; the answer names VMs it must stop.
// A node that cannot reach the control plane for the down interval stops its
// VMs itself: by then the control plane has marked it down and may wake its
// apps elsewhere, and an app must never run twice.
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { Agent, request } from 'undici';
import { errorFromBody } from '../http/errors.ts';
import { connectOptions, tlsError } from '../http/tls.ts';
import { ThawError, asThawError, isThawError } from '../errors.ts';
import { s3FromFlags } from '../seed/s3.ts';
import { untilSignal } from '../signals.ts';
import { HeartbeatResponse, NodeName, type NodeStatus } from '../wire/node.ts';
import type { NodeAgent } from './agent.ts';
import { createNodeAgent, nodeDir, wakeLimits } from './bootstrap.ts';
import { ImageFetcher } from './images.ts';
import { createNodeServer } from './server.ts';
import { nodeTls } from './tls.ts';

export interface NodeOptions {
  control: string;
  name: string;
  data: string;
  /** Cluster token (the control plane's DATA/token). */
  token: string;
  /** Node API bind address (default 127.0.0.1) and port (default 0: any free port). */
  host?: string;
  port?: number;
  /** URL the control plane reaches this node's API at (default http://HOST:PORT). */
  advertise?: string;
  /** Address VM port forwards bind to; the router connects there (default: --host). */
  vmHost?: string;
  /** Check an https:// control plane against this CA file, or this pinned SHA-256 fingerprint (default: system CAs). */
  controlCa?: string;
  controlFingerprint?: string;
  /** The node API's certificate and key (PEM files); default with an https:// control plane: a self-signed one, pinned at join. */
  tlsCert?: string;
  tlsKey?: string;
  s3Endpoint?: string;
  s3Bucket?: string;
  s3Region?: string;
  seedCacheBytes?: number;
  capacity?: number;
  /** Most wakes at once (default: one per CPU). */
  maxConcurrentWakes?: number;
  /** Overall deadline of one wake (ms). */
  wakeDeadlineMs?: number;
  heartbeatMs?: number;
  /** The control plane's node timeout (default 5000; match `thaw up --node-timeout`). The node stops its VMs after 60% of it without the control plane, before it can be marked down. */
  nodeTimeoutMs?: number;
  /** Hypervisor driver (default qemu). */
  driver?: import('../hypervisor/types.ts').DriverName;
}

/** Refusals at the first heartbeat that no retry fixes. */
const FATAL_AT_JOIN = ['TLS_FINGERPRINT_MISMATCH', 'TLS_UNTRUSTED', 'NODE_ADVERTISE_UNREACHABLE'] as const;

export interface RunningNode {
  agent: NodeAgent;
  url: string;
  stop(): Promise<void>;
}

export async function readToken(o: { token?: string; tokenFile?: string }): Promise<string> {
  if (o.token) return o.token;
  if (o.tokenFile) return (await readFile(o.tokenFile, 'utf8')).trim();
  throw new ThawError('INVALID_REQUEST', 'pass the control plane token: --token-file DATA/token of `thaw up`, or $THAW_TOKEN');
}

export async function startNode(o: NodeOptions, log: Logger = pino({ level: process.env.THAW_LOG_LEVEL ?? 'info' })): Promise<RunningNode> {
  const name = NodeName.safeParse(o.name);
  if (!name.success) throw new ThawError('INVALID_REQUEST', `invalid node name ${JSON.stringify(o.name)}: ${name.error.issues[0]?.message}`);
  const control = o.control.replace(/\/+$/, '');
  const data = path.resolve(o.data);
  await mkdir(data, { recursive: true, mode: 0o700 });
  const host = o.host ?? '127.0.0.1';
  const wildcard = host === '0.0.0.0' || host === '::';
  const advertised = o.advertise ? new URL(o.advertise) : null;
  const tls = await nodeTls(o, path.join(nodeDir(data), 'tls'), [host, ...(advertised ? [advertised.hostname.replace(/^\[|\]$/g, '')] : [])], log);
  if (advertised && (advertised.protocol === 'https:') !== !!tls.server) {
    throw new ThawError('TLS_CONFIG_INVALID', `--advertise ${o.advertise} says ${advertised.protocol.slice(0, -1)}, but the node API serves ${tls.server ? 'https' : 'http'}`);
  }
  const controlConnect = connectOptions(tls.controlTrust, 5000, `the control plane at ${control}`);
  const imagesAgent = new Agent({ connect: controlConnect });
  const fetcher = new ImageFetcher(path.join(nodeDir(data), 'images'), control, o.token, imagesAgent);
  await fetcher.recover();
  const s3 = s3FromFlags(o);
  const agent = await createNodeAgent({
    dir: nodeDir(data),
    name: o.name,
    s3,
    capBytes: o.seedCacheBytes ?? 20 * 1024 ** 3,
    ...(o.capacity !== undefined ? { capacity: o.capacity } : {}),
    images: () => fetcher,
    log: log.child({ node: o.name }),
    bindHost: o.vmHost ?? host,
    ...(o.driver ? { driver: o.driver } : {}),
    // A wildcard bind is reached at the advertised address.
    ...(wildcard && advertised ? { appHost: advertised.hostname.replace(/^\[|\]$/g, '') } : {}),
    ...wakeLimits(o),
  });
  const server = await createNodeServer(agent, o.token, tls.server ?? undefined);
  await server.listen({ host, port: o.port ?? 0 });
  const port = (server.server.address() as { port: number }).port;
  const url = o.advertise ?? `${tls.server ? 'https' : 'http'}://${wildcard ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host}:${port}`;
  if (wildcard && !o.advertise) log.warn({ url }, 'bound to all addresses without --advertise: the control plane is told this loopback URL, which only works on its own host');

  const every = o.heartbeatMs ?? 1000;
  const fenceAfter = Math.round((o.nodeTimeoutMs ?? 5000) * 0.6);
  // The fence runs on its own timer; a heartbeat slower than this no longer matters.
  const hbTimeout = Math.max(1000, fenceAfter);
  const dispatcher = new Agent({ connect: connectOptions(tls.controlTrust, hbTimeout, `the control plane at ${control}`), headersTimeout: hbTimeout, bodyTimeout: hbTimeout });
  const status = () => ({ ...agent.status(url), ...(tls.fingerprint ? { tlsFingerprint: tls.fingerprint } : {}) });
  let lastOk = Date.now();
  let fenced = false;
  let stopped = false;
  const send = (st: NodeStatus) =>
    request(`${control}/v1/nodes/heartbeat`, {
      method: 'POST',
      headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(st),
      dispatcher,
    });
  let first = true;
  const beat = async () => {
    const st = status();
    const wasFirst = first;
    first = false;
    try {
      const res = await send(st);
      const body = await res.body.json();
      if (res.statusCode !== 200) throw errorFromBody(res.statusCode, body);
      const answer = HeartbeatResponse.parse(body);
      if (fenced) log.info('control plane reachable again');
      lastOk = Date.now();
      fenced = false;
      for (const r of answer.stop) await agent.stop(r.app, r.vmId);
    } catch (e) {
      agent.requeue(st.events);
      const err = tlsError(e, `the control plane at ${control}`);
      // A wrong token, certificate or address will not fix itself: say so and stop instead of retrying forever.
      if (wasFirst && isThawError(err, 'UNAUTHORIZED')) throw new ThawError('UNAUTHORIZED', `the control plane at ${control} refused this node's token: pass --token-file with the DATA/token of \`thaw up\``, { cause: err });
      if (wasFirst && FATAL_AT_JOIN.some((c) => isThawError(err, c))) throw err;
      log.warn({ err: asThawError(err).message, silentMs: Date.now() - lastOk }, 'heartbeat failed');
    }
  };
  // Self-fencing on its own clock, so a slow heartbeat cannot delay it: while the control
  // plane is unreachable, no VM runs here (it may be waking the apps on other nodes).
  const fence = setInterval(() => {
    if (Date.now() - lastOk < fenceAfter || agent.node.running.size === 0) return;
    if (!fenced) log.warn({ apps: [...agent.node.running.keys()] }, 'lost the control plane: stopping VMs so no app runs twice');
    fenced = true;
    void agent.stopAll();
  }, Math.max(50, Math.floor(fenceAfter / 10)));
  fence.unref();
  let timer: NodeJS.Timeout | null = null;
  const loop = async () => {
    await beat();
    if (!stopped) timer = setTimeout(() => void loop(), every);
  };
  try {
    await loop();
  } catch (err) {
    clearInterval(fence);
    await dispatcher.close();
    await imagesAgent.close();
    await server.close();
    await agent.close();
    throw err;
  }
  log.info({ node: o.name, url, control }, 'node is up');
  return {
    agent,
    url,
    stop: async () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      clearInterval(fence);
      // While this node still serves its API, the control plane sleeps its apps gracefully
      // (router drain, SIGTERM, grace, sleep records); whatever is left is stopped below.
      await send({ ...status(), draining: true }).then((r) => r.body.dump(), () => {});
      await agent.abortWakes();
      await agent.stopAll();
      // Tell the control plane at once, so requests do not wait for the node timeout.
      await send({ ...status(), leaving: true }).then((r) => r.body.dump(), () => {});
      await dispatcher.close();
      await imagesAgent.close();
      await server.close();
      await agent.close();
    },
  };
}

/** The `thaw node` command: run until SIGINT/SIGTERM. */
export async function runNode(o: NodeOptions): Promise<void> {
  const log = pino({ level: process.env.THAW_LOG_LEVEL ?? 'info' });
  const n = await startNode(o, log);
  await untilSignal(log, 'node shutting down: its VMs are deleted', n.stop);
}
