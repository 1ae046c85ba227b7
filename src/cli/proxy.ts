// `thaw up` options of the router as a proxy (timeouts, wake hold) and of sleeps
// (drain, SIGTERM grace). All in seconds on the command line; docs/ROUTER.md
// explains each one and its default.
import { Option, type Command } from 'commander';
import { intArg } from './args.ts';

/** What these options give `thaw up` (src/control/up.ts UpOptions), in ms. */
export interface ProxyUpOptions {
  routerTimeouts: {
    keepAliveMs: number;
    headersMs: number;
    requestMs: number;
    upstreamHeadersMs: number;
    upstreamBodyMs: number;
  };
  wakeTimeoutMs: number;
  drainMs: number;
  stopGraceMs: number;
}

const OPTIONS: ReadonlyArray<readonly [flag: string, env: string, help: string, defaultS: number]> = [
  ['--keep-alive-timeout', 'THAW_KEEP_ALIVE_TIMEOUT', 'keep idle client connections this long (longer than a load balancer\'s 60 s idle)', 75],
  ['--headers-timeout', 'THAW_HEADERS_TIMEOUT', 'a client must send its request headers within this, else 408', 60],
  ['--request-timeout', 'THAW_REQUEST_TIMEOUT', 'a client must send its whole request (uploads included) within this, else 408; 0: no limit', 0],
  ['--upstream-headers-timeout', 'THAW_UPSTREAM_HEADERS_TIMEOUT', 'an app must start its response within this, else 504', 300],
  ['--upstream-body-timeout', 'THAW_UPSTREAM_BODY_TIMEOUT', 'longest pause inside an app\'s response body before it is cut; 0: no limit (SSE)', 0],
  ['--wake-timeout', 'THAW_WAKE_TIMEOUT', 'hold a request this long for a wake, then 503 + Retry-After (per app: thaw deploy --wake-timeout)', 60],
  ['--drain-timeout', 'THAW_DRAIN_TIMEOUT', 'every sleep waits this long for requests in flight', 30],
  ['--stop-grace', 'THAW_STOP_GRACE', 'every sleep gives the app this long after SIGTERM before SIGKILL', 10],
];

export function addProxyOptions(cmd: Command): Command {
  for (const [flag, env, help, def] of OPTIONS) cmd.addOption(new Option(`${flag} <seconds>`, help).env(env).argParser(intArg).default(def));
  return cmd;
}

export function proxyOptions(o: Record<string, unknown>): ProxyUpOptions {
  const ms = (k: string) => (o[k] as number) * 1000;
  return {
    routerTimeouts: {
      keepAliveMs: ms('keepAliveTimeout'),
      headersMs: ms('headersTimeout'),
      requestMs: ms('requestTimeout'),
      upstreamHeadersMs: ms('upstreamHeadersTimeout'),
      upstreamBodyMs: ms('upstreamBodyTimeout'),
    },
    wakeTimeoutMs: ms('wakeTimeout'),
    drainMs: ms('drainTimeout'),
    stopGraceMs: ms('stopGrace'),
  };
}
