// HTTP/1.1 message rules the router applies before routing (RFC 9110, RFC 9112):
// the four request-target forms, and which upgrade offers are tunnelled.
import type http from 'node:http';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { ThawError } from '../errors.ts';

/** Methods an app may be asked for; the router's answer to `OPTIONS *` and to CONNECT. */
export const ALLOW = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';

const ABSOLUTE = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^#]*)/;

/**
 * Bring the request target to origin form, in place (RFC 9112 3.2):
 * - origin form (`/path?q`): unchanged (the fast path);
 * - absolute form (`http://host[:port]/path?q`, what clients configured for a proxy send):
 *   `req.url` becomes `/path?q` and the Host header the target's authority, which wins over
 *   any Host the client sent (3.2.2);
 * - asterisk form (`*`): 'asterisk', only with OPTIONS; the router answers it;
 * - authority form (`host:port`) belongs to CONNECT, which never reaches this function.
 * Returns 'asterisk', or a 400 INVALID_REQUEST error for any other target.
 */
export function normalizeTarget(req: IncomingMessage): 'origin' | 'asterisk' | ThawError {
  const url = req.url ?? '';
  if (url.charCodeAt(0) === 47 /* / */) return 'origin';
  if (url === '*') {
    if (req.method === 'OPTIONS') return 'asterisk';
    return new ThawError('INVALID_REQUEST', `the asterisk target "*" is only valid with OPTIONS, not ${req.method}`);
  }
  const m = ABSOLUTE.exec(url);
  if (m === null) return new ThawError('INVALID_REQUEST', `request target "${url.slice(0, 200)}" is not in origin form (/path) or absolute form (http://host/path)`);
  const scheme = m[1]!.toLowerCase();
  const authority = m[2]!;
  if ((scheme !== 'http' && scheme !== 'https') || authority === '' || authority.includes('@')) {
    return new ThawError('INVALID_REQUEST', `absolute request target "${url.slice(0, 200)}" must be http(s)://host[:port]/path without user info`);
  }
  const rest = m[3]!;
  req.url = rest === '' ? '/' : rest.charCodeAt(0) === 47 ? rest : `/${rest}`;
  req.headers.host = authority;
  return 'origin';
}

/** A WebSocket opening handshake (RFC 6455 4.1): GET with `websocket` among the Upgrade protocols. */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  if (req.method !== 'GET') return false;
  const up = req.headers.upgrade;
  return up !== undefined && up.split(',').some((p) => p.trim().toLowerCase() === 'websocket');
}

/** Connection-header tokens that only make sense with the upgrade being dropped. */
const UPGRADE_ONLY = new Set(['upgrade', 'http2-settings']);

/**
 * Serve a non-WebSocket upgrade offer (h2c from `curl --http2`, TLS/1.0, ...) as the ordinary
 * HTTP/1.1 request it also is (RFC 9110 7.8: a server that does not take the upgrade ignores
 * it). Node hands every request with Upgrade to the 'upgrade' event and frees its parser; the
 * request's head is rebuilt without Upgrade, HTTP2-Settings and their Connection tokens, put
 * back in front of the bytes already read, and the socket re-enters the HTTP server as a
 * connection. Its body, keep-alive and later requests are then parsed as usual.
 */
export function replayWithoutUpgrade(server: http.Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const raw = req.rawHeaders;
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (UPGRADE_ONLY.has(k)) continue;
    if (k === 'connection') {
      const kept = raw[i + 1]!.split(',').map((s) => s.trim()).filter((s) => s !== '' && !UPGRADE_ONLY.has(s.toLowerCase()));
      if (kept.length > 0) text += `Connection: ${kept.join(', ')}\r\n`;
      continue;
    }
    text += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  text += '\r\n';
  if (head.length > 0) socket.unshift(head);
  socket.unshift(Buffer.from(text, 'latin1'));
  server.emit('connection', socket);
}
