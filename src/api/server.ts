// Thaw's control HTTP API: a thin Fastify layer over ControlService. JSON in
// and out (snake_case on the wire, see schemas.ts), bearer-token auth on
// everything but /healthz and /metrics, and one error shape for every failure:
// `{ "error": { code, kind, message, hint, details? } }`. docs/API.md lists the routes.
import { Readable } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { ThawError } from '../errors.ts';
import type { ControlService } from '../control/types.ts';
import { bearerChecker } from '../http/auth.ts';
import { toApiError } from '../http/errors.ts';
import { parseOrThrow } from '../http/parse.ts';
import type { ServerTls } from '../http/tls.ts';
import { deleteVolumeFlag, registerVolumes } from './volumes.ts';
import { registerDeploy } from './deploy.ts';
import { registerUi, type UiOptions } from './ui.ts';
import { NodeStatus } from '../wire/node.ts';
import { z } from 'zod';
import {
  CreateAppBody,
  LogsQuery,
  NameParams,
  SetEnvBody,
  UnsetEnvBody,
  WakesQuery,
  toAppWire,
  toSeedWire,
  toSleepWire,
  toWakeWire,
} from './schemas.ts';

export interface ApiServerOptions {
  service: ControlService;
  /** Clients send `Authorization: Bearer <token>`. At least 16 characters. */
  token: string;
  logger?: Logger | false;
  /** Upload cap for deploy tarballs; default 256 MiB. */
  maxTarballBytes?: number;
  /** Serve the web dashboard under /ui/ (session auth, see ui.ts) with this event feed. */
  ui?: Omit<UiOptions, 'service'>;
  /** Serve HTTPS with this certificate (chain) and key. */
  tls?: ServerTls;
}

export const DEFAULT_MAX_TARBALL_BYTES = 4096 * 1024 * 1024;
const PUBLIC_ROUTES = new Set(['/healthz', '/metrics']);
/** The dashboard's paths: a browser session, not the bearer token, guards them (ui.ts). */
const isUiPath = (url: string) => {
  const p = url.split('?')[0]!;
  return p === '/ui' || p.startsWith('/ui/');
};


export async function createApiServer(opts: ApiServerOptions): Promise<FastifyInstance> {
  const { service } = opts;
  const checkAuth = bearerChecker(opts.token);
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as never } : { logger: false }),
    bodyLimit: 1024 * 1024, // JSON bodies; tarballs have their own cap
    // close() ends every connection (log followers included) instead of waiting for them.
    forceCloseConnections: true,
    ...(opts.tls ? { https: opts.tls } : {}),
  }) as unknown as FastifyInstance;

  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const te = toApiError(err);
    if (te.kind === 'system') req.log.error({ err }, 'request failed');
    // An unread request body (e.g. an oversized upload refused early) must not be drained: close instead.
    if (!req.raw.complete) reply.header('connection', 'close');
    void reply.code(te.status).type('application/json; charset=utf-8').send({ error: te.toJSON() });
  });
  app.setNotFoundHandler((req, reply) => {
    const te = new ThawError('NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`);
    void reply.code(404).send({ error: te.toJSON() });
  });
  app.addHook('onRequest', async (req) => {
    if (PUBLIC_ROUTES.has(req.routeOptions.url ?? '') || (opts.ui && isUiPath(req.url))) return;
    checkAuth(req.headers.authorization);
  });

  const nameOf = (req: FastifyRequest) => parseOrThrow(NameParams, req.params, 'path').name;

  app.get('/healthz', async () => ({ ok: true }));
  app.get('/metrics', async (_req, reply) => {
    const m = await service.metrics();
    return reply.type(m.contentType).send(m.body);
  });

  // ---- apps -----------------------------------------------------------------------
  app.get('/v1/apps', async () => ({ apps: (await service.listApps()).map(toAppWire) }));
  app.post('/v1/apps', async (req, reply) => {
    const body = parseOrThrow(CreateAppBody, req.body, 'body');
    const view = await service.createApp(body.name, body.idle_timeout_s !== undefined ? { idleTimeoutS: body.idle_timeout_s } : {});
    return reply.code(201).send({ app: toAppWire(view) });
  });
  app.get('/v1/apps/:name', async (req) => ({ app: toAppWire(await service.getApp(nameOf(req))) }));
  app.delete('/v1/apps/:name', async (req) => {
    const name = nameOf(req);
    await service.deleteApp(name, deleteVolumeFlag(req.query) ? { deleteVolume: true } : {});
    return { ok: true };
  });
  registerDeploy(app, service, opts.maxTarballBytes ?? DEFAULT_MAX_TARBALL_BYTES);
  if (opts.ui) registerUi(app, { service, ...opts.ui });
  registerVolumes(app, service);

  // ---- env (values are write-only) -------------------------------------------------
  app.get('/v1/apps/:name/env', async (req) => {
    const keys = await service.listEnv(nameOf(req));
    return { vars: keys.map((k) => ({ key: k.key, updated_at: k.updatedAt })) };
  });
  app.put('/v1/apps/:name/env', async (req) => {
    const name = nameOf(req);
    await service.setEnv(name, parseOrThrow(SetEnvBody, req.body, 'body').vars);
    return { ok: true };
  });
  app.delete('/v1/apps/:name/env', async (req) => {
    const name = nameOf(req);
    await service.unsetEnv(name, parseOrThrow(UnsetEnvBody, req.body, 'body').keys);
    return { ok: true };
  });

  // ---- lifecycle -------------------------------------------------------------------
  app.post('/v1/apps/:name/sleep', async (req) => {
    const r = await service.sleep(nameOf(req));
    return { baked: r.baked, seed: r.seed ? toSeedWire(r.seed) : null, sleep: r.record ? toSleepWire(r.record) : null };
  });
  app.get('/v1/apps/:name/sleeps', async (req) => {
    const name = nameOf(req);
    const { limit } = parseOrThrow(WakesQuery, req.query, 'query');
    return { sleeps: (await service.sleeps(name, limit)).map(toSleepWire) };
  });
  app.post('/v1/apps/:name/wake', async (req) => ({ wake: toWakeWire(await service.wake(nameOf(req))) }));
  app.get('/v1/apps/:name/wakes', async (req) => {
    const name = nameOf(req);
    const { limit } = parseOrThrow(WakesQuery, req.query, 'query');
    return { wakes: (await service.wakes(name, limit)).map(toWakeWire) };
  });
  app.get('/v1/seeds', async () => ({ seeds: (await service.seeds()).map(toSeedWire) }));

  // ---- nodes -----------------------------------------------------------------------
  app.get('/v1/nodes', async () => ({ nodes: await service.nodes() }));
  app.post('/v1/nodes/heartbeat', async (req) => service.heartbeat(parseOrThrow(NodeStatus, req.body, 'body')));
  app.get('/v1/apps/:name/deploys/:id/image', async (req, reply) => {
    const name = nameOf(req);
    const { id } = parseOrThrow(z.object({ id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/) }), req.params, 'path');
    const img = await service.deployImage(name, id);
    return reply.type('application/zstd').header('x-image-bytes', String(img.bytes)).send(img.stream);
  });

  // ---- logs ------------------------------------------------------------------------
  app.get('/v1/apps/:name/logs', async (req, reply) => {
    const name = nameOf(req);
    const { follow } = parseOrThrow(LogsQuery, req.query, 'query');
    const ac = new AbortController();
    // 'close' fires on client disconnect (and after a normal finish, when aborting is harmless).
    reply.raw.once('close', () => ac.abort());
    const text = await service.logs(name, { follow, signal: ac.signal });
    const stream = Readable.from(text);
    stream.on('error', (err) => req.log.warn({ err }, 'log stream failed'));
    return reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store').header('x-content-type-options', 'nosniff').send(stream);
  });

  await app.ready();
  return app;
}
