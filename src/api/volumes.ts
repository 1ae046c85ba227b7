// Volume routes of the control API: GET /v1/volumes, POST
// /v1/apps/:name/volume/resize {size}, POST /v1/apps/:name/volume/restore
// {node, backup?}, POST /v1/apps/:name/volume/move {to}, DELETE /v1/apps/:name/volume. A deploy
// declares an app's volume with the `x-thaw-volume: /PATH[:SIZE]` header, and
// DELETE /v1/apps/:name?delete_volume=1 deletes an app that has one.
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { ControlService } from '../control/types.ts';
import { parseOrThrow } from '../http/parse.ts';
import type { VolumeRow } from '../store/types.ts';
import { parseSize, parseVolumeArg, type VolumeSpec } from '../volume/spec.ts';
import { NameParams } from './schemas.ts';

export const VolumeWire = z.object({
  app: z.string(),
  path: z.string(),
  size_bytes: z.number(),
  node: z.string().nullable(),
  /** The wake whose VM holds the one-writer lease, or null. */
  holder: z.string().nullable(),
  created_at: z.string(),
});
export type VolumeWire = z.infer<typeof VolumeWire>;
export const VolumesResponse = z.object({ volumes: z.array(VolumeWire) });
export const VolumeResponse = z.object({ volume: VolumeWire });
/** A size like 2GiB, or a number of bytes. */
export const ResizeBody = z.object({ size: z.union([z.string().max(40), z.number()]) });
const DeleteQuery = z.object({ delete_volume: z.enum(['0', '1', 'true', 'false']).optional() });

export function toVolumeWire(v: VolumeRow): VolumeWire {
  return { app: v.app, path: v.path, size_bytes: v.sizeBytes, node: v.node, holder: v.holder, created_at: v.createdAt };
}

/** The deploy's `x-thaw-volume` header (VOLUME_INVALID when malformed). */
export function volumeHeader(h: string | string[] | undefined): VolumeSpec | undefined {
  if (h === undefined) return undefined;
  return parseVolumeArg(Array.isArray(h) ? h.join(',') : h);
}

export function deleteVolumeFlag(query: unknown): boolean {
  const q = parseOrThrow(DeleteQuery, query, 'query');
  return q.delete_volume === '1' || q.delete_volume === 'true';
}

const NodeName = z.string().min(1).max(63).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/);
export const RestoreBody = z.strictObject({ node: NodeName, backup: z.string().min(1).max(128).optional() });
export const MoveBody = z.strictObject({ to: NodeName });
export const VolumeRestoreResponse = z.object({
  app: z.string(), node: z.string(), previous_node: z.string().nullable(),
  backup: z.object({ id: z.string(), key: z.string(), sha256: z.string(), bytes: z.number() }),
  sleep: z.object({ id: z.string(), at: z.string(), trigger: z.string(), node: z.string().nullable() }),
  ms: z.number(),
});
export const VolumeMoveResponse = z.object({ app: z.string(), from: z.string().nullable(), to: z.string(), via: z.enum(['object-storage', 'direct', 'none']), bytes: z.number(), sha256: z.string().nullable(), ms: z.number() });

export function registerVolumes(app: FastifyInstance, service: ControlService): void {
  app.get('/v1/volumes', async () => ({ volumes: (await service.listVolumes()).map(toVolumeWire) }));
  app.post('/v1/apps/:name/volume/resize', async (req) => {
    const { name } = parseOrThrow(NameParams, req.params, 'path');
    const { size } = parseOrThrow(ResizeBody, req.body, 'body');
    return { volume: toVolumeWire(await service.resizeVolume(name, parseSize(String(size)))) };
  });
  app.post('/v1/apps/:name/volume/restore', async (req) => {
    const { name } = parseOrThrow(NameParams, req.params, 'path');
    const b = parseOrThrow(RestoreBody, req.body, 'body');
    const r = await service.restoreVolume(name, b.node, b.backup);
    return { app: r.app, node: r.node, previous_node: r.previousNode, backup: r.backup, sleep: r.sleep, ms: r.ms };
  });
  app.post('/v1/apps/:name/volume/move', async (req) => {
    const { name } = parseOrThrow(NameParams, req.params, 'path');
    return service.moveVolume(name, parseOrThrow(MoveBody, req.body, 'body').to);
  });
  app.delete('/v1/apps/:name/volume', async (req) => {
    await service.removeVolume(parseOrThrow(NameParams, req.params, 'path').name);
    return { ok: true };
  });
}
