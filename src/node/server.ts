// The node agent's HTTP API (for `thaw node`): NodeApi routes, bearer-token
// auth with the cluster token, bodies checked with the shared schemas in
// src/wire/node.ts, errors in the control API's shape.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { ThawError } from '../errors.ts';
import { bearerChecker } from '../http/auth.ts';
import { toApiError } from '../http/errors.ts';
import { parseOrThrow } from '../http/parse.ts';
import type { ServerTls } from '../http/tls.ts';
import { NodeSleepRequest, NodeWakeRequest, SeedRef, VolumeUploadRequest } from '../wire/node.ts';
import type { NodeApi } from './types.ts';

const AppParams = z.object({ app: z.string().regex(/^[a-z][a-z0-9-]{0,39}$/) });
const SeedParams = z.object({ id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/) });
const PackedParams = AppParams.extend({ id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/) });
const ShaHeader = z.object({ 'x-thaw-sha256': z.string().regex(/^[0-9a-f]{64}$/) });
const StopBody = z.object({ vmId: z.string().optional() }).default({});

/** `tls`: serve HTTPS with this certificate (chain) and key. */
export async function createNodeServer(agent: NodeApi & { renderMetrics(): Promise<string>; cancelQueuedWake?(app: string): void }, token: string, tls?: ServerTls): Promise<FastifyInstance> {
  const check = bearerChecker(token);
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024, forceCloseConnections: true, requestTimeout: 0, ...(tls ? { https: tls } : {}) }) as unknown as FastifyInstance;
  app.setErrorHandler((err: unknown, _req: FastifyRequest, reply: FastifyReply) => {
    const te = toApiError(err);
    void reply.code(te.status).send({ error: te.toJSON() });
  });
  app.addHook('onRequest', async (req) => {
    if (req.url !== '/healthz' && req.url !== '/metrics') check(req.headers.authorization);
  });
  app.get('/healthz', async () => ({ ok: true, name: agent.name }));
  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(await agent.renderMetrics()));
  app.post('/v1/wake', async (req, reply) => {
    // A control plane that went away (connection closed before the answer) waits for nothing: a queued wake is dropped.
    const ac = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) ac.abort();
    });
    return agent.wake(parseOrThrow(NodeWakeRequest, req.body, 'body'), { signal: ac.signal });
  });
  app.post('/v1/apps/:app/cancel-wake', async (req) => {
    agent.cancelQueuedWake?.(parseOrThrow(AppParams, req.params, 'path').app);
    return { ok: true };
  });
  app.post('/v1/sleep', async (req) => agent.sleep(parseOrThrow(NodeSleepRequest, req.body, 'body')));
  app.post('/v1/apps/:app/stop', async (req) => {
    const { app: name } = parseOrThrow(AppParams, req.params, 'path');
    await agent.stop(name, parseOrThrow(StopBody, req.body ?? {}, 'body').vmId);
    return { ok: true };
  });
  app.get('/v1/apps/:app/logs', async (req) => ({ text: await agent.logs(parseOrThrow(AppParams, req.params, 'path').app) }));
  app.delete('/v1/apps/:app', async (req) => {
    await agent.forgetApp(parseOrThrow(AppParams, req.params, 'path').app);
    return { ok: true };
  });
  app.delete('/v1/apps/:app/volume', async (req) => {
    await agent.deleteVolume(parseOrThrow(AppParams, req.params, 'path').app);
    return { ok: true };
  });
  // Volume transfers: pack, upload, stream to another node, import from one, restore from object storage.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  app.post('/v1/apps/:app/volume/packed/:id', async (req) => {
    const p = parseOrThrow(PackedParams, req.params, 'path');
    return agent.packVolume(p.app, p.id);
  });
  app.post('/v1/apps/:app/volume/packed/:id/upload', async (req) => {
    const p = parseOrThrow(PackedParams, req.params, 'path');
    const b = parseOrThrow(VolumeUploadRequest, req.body, 'body');
    return agent.uploadVolumeBackup(p.app, p.id, b.key, b.sha256);
  });
  app.get('/v1/apps/:app/volume/packed/:id', async (req, reply) => {
    const p = parseOrThrow(PackedParams, req.params, 'path');
    return reply.type('application/octet-stream').send(await agent.readPackedVolume(p.app, p.id));
  });
  app.delete('/v1/apps/:app/volume/packed/:id', async (req) => {
    const p = parseOrThrow(PackedParams, req.params, 'path');
    await agent.dropPackedVolume(p.app, p.id);
    return { ok: true };
  });
  app.put('/v1/apps/:app/volume/import', async (req) => {
    const { app: name } = parseOrThrow(AppParams, req.params, 'path');
    const { 'x-thaw-sha256': sha256 } = parseOrThrow(ShaHeader, req.headers, 'headers');
    if (!(req.body instanceof Readable)) throw new ThawError('INVALID_REQUEST', 'send the packed volume as application/octet-stream');
    return agent.importVolume(name, req.body, sha256);
  });
  app.post('/v1/apps/:app/volume/restore', async (req) => {
    const { app: name } = parseOrThrow(AppParams, req.params, 'path');
    const b = parseOrThrow(VolumeUploadRequest, req.body, 'body');
    return agent.restoreVolume(name, b.key, b.sha256);
  });
  app.post('/v1/seeds/:id/upload', async (req) => {
    const ref = parseOrThrow(SeedRef, req.body, 'body');
    parseOrThrow(SeedParams.refine((p) => p.id === ref.id, 'path and body name different seeds'), req.params, 'path');
    return agent.uploadSeed(ref);
  });
  app.delete('/v1/seeds/:id', async (req) => {
    await agent.deleteSeed(parseOrThrow(SeedParams, req.params, 'path').id);
    return { ok: true };
  });
  await app.ready();
  return app;
}
