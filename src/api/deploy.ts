// POST /v1/apps/:name/deploys: an OCI image as a JSON body (ImageDeployBody),
// or a Node folder: the request body is the raw tarball, streamed
// straight into ControlService.deploy() (never buffered), capped at
// maxTarballBytes. Env goes in the `x-thaw-env` header (base64 of a JSON
// object), the idle timeout in `x-thaw-idle-timeout`, `x-thaw-build: 1` builds
// even when node_modules is shipped (`thaw deploy --build`), the app's volume in
// `x-thaw-volume` (/PATH[:SIZE]). With `?progress=1` the
// response is NDJSON: `{"progress":"..."}` lines, then `{"result":{...}}` or
// `{"error":{...}}`.
import { parseOrThrow } from '../http/parse.ts';
import { PassThrough, Transform, type Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ThawError, asThawError } from '../errors.ts';
import { parseEgressHeader } from '../network/egress.ts';
import type { ControlService, ImageSource } from '../control/types.ts';
import { volumeHeader } from './volumes.ts';
import { DeployQuery, EnvVars, IdleTimeoutHeader, ImageDeployBody, WakeTimeoutHeader, NameParams, toDeployResultWire } from './schemas.ts';

export const TARBALL_TYPES = ['application/gzip', 'application/x-gzip', 'application/x-tar', 'application/octet-stream'];

const tooLarge = (max: number, seen?: number) =>
  new ThawError('TARBALL_TOO_LARGE', `the upload exceeds the ${max} byte limit; raise it with thaw up --max-upload-mib, or leave files out with .thawignore`, {
    details: { maxBytes: max, option: '--max-upload-mib', ...(seen !== undefined ? { bytes: seen } : {}) },
  });

/** Decode the `x-thaw-env` header: base64 of a JSON object of string values. */
export function decodeEnvHeader(h: string | string[] | undefined): Record<string, string> | undefined {
  if (h === undefined) return undefined;
  if (Array.isArray(h)) throw new ThawError('INVALID_REQUEST', 'x-thaw-env given more than once', { details: { where: 'x-thaw-env header' } });
  let obj: unknown;
  try {
    obj = JSON.parse(Buffer.from(h, 'base64').toString('utf8'));
  } catch (err) {
    throw new ThawError('INVALID_REQUEST', 'x-thaw-env must be base64 of a JSON object', { cause: err, details: { where: 'x-thaw-env header' } });
  }
  return parseOrThrow(EnvVars, obj, 'x-thaw-env header');
}

/** Counts bytes through; errors with TARBALL_TOO_LARGE past `max` without destroying the request (so a 413 can still be sent). */
function capped(src: Readable, max: number): { stream: Readable; tripped: () => boolean } {
  let n = 0;
  let tripped = false;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > max) {
        tripped = true;
        src.unpipe(t);
        src.pause();
        cb(tooLarge(max, n));
      } else cb(null, chunk);
    },
  });
  t.on('error', () => {}); // the consumer sees the error through its own reads; never crash on an unheard one
  src.on('error', (err) => t.destroy(err));
  src.on('aborted', () => t.destroy(new ThawError('INVALID_REQUEST', 'the upload was aborted by the client')));
  src.pipe(t);
  return { stream: t, tripped: () => tripped };
}

export function registerDeploy(app: FastifyInstance, service: ControlService, maxTarballBytes: number): void {
  app.register(async (scope) => {
    scope.addContentTypeParser(TARBALL_TYPES, (req: FastifyRequest, payload, done) => {
      const len = Number(req.headers['content-length']);
      if (Number.isFinite(len) && len > maxTarballBytes) return done(tooLarge(maxTarballBytes, len), undefined);
      done(null, payload);
    });

    scope.post('/v1/apps/:name/deploys', async (req, reply) => {
      const { name } = parseOrThrow(NameParams, req.params, 'path');
      const { progress } = parseOrThrow(DeployQuery, req.query, 'query');
      const env = decodeEnvHeader(req.headers['x-thaw-env']);
      const idleHdr = req.headers['x-thaw-idle-timeout'];
      const idleTimeoutS = idleHdr === undefined ? undefined : parseOrThrow(IdleTimeoutHeader, idleHdr, 'x-thaw-idle-timeout header');
      const wakeHdr = req.headers['x-thaw-wake-timeout'];
      const wakeTimeoutS = wakeHdr === undefined ? undefined : parseOrThrow(WakeTimeoutHeader, wakeHdr, 'x-thaw-wake-timeout header');
      const egressHdr = req.headers['x-thaw-egress'];
      const egress = typeof egressHdr === 'string' ? parseEgressHeader(egressHdr) : undefined;
      const build = req.headers['x-thaw-build'] === '1';
      const volume = volumeHeader(req.headers['x-thaw-volume']);
      const deployOpts = (onProgress?: (line: string) => void) => ({
        ...(env ? { env } : {}),
        ...(idleTimeoutS !== undefined ? { idleTimeoutS } : {}),
        ...(wakeTimeoutS !== undefined ? { wakeTimeoutS } : {}),
        ...(egress ? { egress } : {}),
        ...(build ? { build } : {}),
        ...(volume ? { volume } : {}),
        ...(onProgress ? { onProgress } : {}),
      });
      let run: (onProgress?: (line: string) => void) => ReturnType<ControlService['deploy']>;
      if (String(req.headers['content-type'] ?? '').startsWith('application/json')) {
        // An OCI image: {"image": REF, "command"?: [...], "port"?: N, "registry_auth"?: {...}}.
        const b = parseOrThrow(ImageDeployBody, req.body, 'body');
        const source: ImageSource = {
          image: b.image,
          ...(b.command ? { command: b.command } : {}),
          ...(b.port !== undefined ? { port: b.port } : {}),
          ...(b.registry_auth ? { auth: b.registry_auth } : {}),
        };
        run = (onProgress) => service.deploy(name, source, deployOpts(onProgress));
      } else {
        const body = req.body as Readable | undefined;
        if (!body || typeof (body as Readable).pipe !== 'function') {
          throw new ThawError('INVALID_REQUEST', `the deploy body must be a tarball sent as ${TARBALL_TYPES.join(', ')}, or an image as application/json`, { details: { where: 'body' } });
        }
        const { stream, tripped } = capped(body, maxTarballBytes);
        run = async (onProgress) => {
          try {
            return await service.deploy(name, stream, deployOpts(onProgress));
          } catch (err) {
            throw tripped() ? tooLarge(maxTarballBytes) : err;
          } finally {
            if (!stream.destroyed) stream.destroy();
          }
        };
      }

      if (!progress) return toDeployResultWire(await run());

      const out = new PassThrough();
      const line = (o: unknown) => {
        if (!out.destroyed) out.write(`${JSON.stringify(o)}\n`);
      };
      reply.header('content-type', 'application/x-ndjson; charset=utf-8').header('cache-control', 'no-store');
      reply.send(out);
      try {
        line({ result: toDeployResultWire(await run((p) => line({ progress: p }))) });
      } catch (err) {
        const te = asThawError(err);
        if (te.kind === 'system') req.log.error({ err }, 'deploy failed');
        line({ error: te.toJSON() });
      }
      out.end();
      return reply;
    });
  });
}
