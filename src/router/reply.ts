// Router-generated responses: JSON errors on an http.ServerResponse, or as a
// raw HTTP/1.1 response on a socket that asked for an upgrade.
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ThawError } from '../errors.ts';

const HEALTH = Buffer.from('{"ok":true}');

export function sendHealth(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': HEALTH.length, 'cache-control': 'no-store' });
  res.end(HEALTH);
}

function errorBody(err: ThawError): string {
  return JSON.stringify({ error: err.toJSON() });
}

/** Answer with `{ error: err.toJSON() }`; a no-op when the client is gone or headers went out already. */
export function sendError(res: ServerResponse, status: number, err: ThawError, retryAfterS?: number): void {
  if (res.destroyed || res.headersSent) {
    if (!res.writableEnded) res.destroy();
    return;
  }
  const body = errorBody(err);
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  };
  if (retryAfterS !== undefined) headers['retry-after'] = retryAfterS;
  res.writeHead(status, headers);
  res.end(body);
}

/** `OPTIONS *` (RFC 9110 9.3.7): the methods apps may be asked for, no content. */
export function sendOptions(res: ServerResponse, allow: string): void {
  res.writeHead(200, { allow, 'content-length': 0 });
  res.end();
}

/** The same answer written raw to an upgrade (or CONNECT) socket, which is then closed. `allow`: an Allow header (405). */
export function sendSocketError(socket: Duplex, status: number, err: ThawError, retryAfterS?: number, allow?: string): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = errorBody(err);
  const retry = (retryAfterS === undefined ? '' : `retry-after: ${retryAfterS}\r\n`) + (allow === undefined ? '' : `allow: ${allow}\r\n`);
  const head =
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n${retry}connection: close\r\n\r\n`;
  socket.end(head + body, () => socket.destroy());
}
