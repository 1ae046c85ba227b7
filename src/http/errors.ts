// Errors on the wire, for every HTTP server and client of Thaw (control API,
// node API): the error body schema, ThawError -> body (toApiError, for
// Fastify error handlers) and body -> ThawError (errorFromBody, for clients).
import type { FastifyError } from 'fastify';
import { z } from 'zod';
import { ERROR_CODES, ThawError, type ErrorCode } from '../errors.ts';

/** `{"error": {...}}`: what ThawError.toJSON() writes. */
export const ErrorBody = z.object({
  error: z.object({
    code: z.string(),
    kind: z.enum(['user', 'system']),
    message: z.string(),
    hint: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});

/** Map anything thrown in a handler, hook or body parser onto a ThawError. */
export function toApiError(err: unknown): ThawError {
  if (err instanceof ThawError) return err;
  const e = err as Partial<FastifyError> & { message?: string };
  const status = typeof e?.statusCode === 'number' ? e.statusCode : 500;
  if (status === 404) return new ThawError('NOT_FOUND', e.message ?? 'not found');
  if (status >= 400 && status < 500) {
    const reason = e.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError ? 'malformed JSON body' : (e.message ?? 'bad request');
    return new ThawError('INVALID_REQUEST', reason, { details: { where: 'request', ...(e.code ? { reason: e.code } : {}) } });
  }
  return new ThawError('INTERNAL', `internal error: ${e?.message ?? String(err)}`);
}

/** Rebuild a ThawError from an error body `{error:{code,...}}` (INTERNAL when the code is unknown here). */
export function errorFromBody(status: number, body: unknown): ThawError {
  const r = ErrorBody.safeParse(body);
  if (!r.success) return new ThawError('INTERNAL', `control API answered HTTP ${status} without an error body`, { details: { status } });
  const e = r.data.error;
  if (e.code in ERROR_CODES) return new ThawError(e.code as ErrorCode, e.message, e.details ? { details: e.details } : {});
  return new ThawError('INTERNAL', `${e.code}: ${e.message}`, { details: { status, remote: e } });
}
