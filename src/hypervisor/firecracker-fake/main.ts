// A fake `firecracker` process for unit tests (Firecracker cannot run on the
// development host): `node --import tsx main.ts --api-sock PATH`, started in
// the VM's folder like the real one. It serves Firecracker's HTTP API on the
// unix socket, validates every request against the spec (spec.ts), keeps the
// documented state machine and opens every file it is given (machine.ts), and
// runs a fake guest behind a fake vsock (guest.ts, vsock.ts).
// Environment: FAKE_LOG (JSONL file: argv, cwd, every request and vsock event),
// FAKE_BOOT_MS (guest boot time, default 300), FAKE_MODE (exit | hang | slow),
// FAKE_FAULT ("METHOD /path": answer it with a 400 fault), FAKE_CHROOT (its
// jail root, set by the fake jailer) and FAKE_VISIBLE (the one host folder a
// mount-jailed VMM sees besides /usr), see host.ts.
import { appendFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import { Fault, FakeMicroVm } from './machine.ts';
import { route, validate } from './spec.ts';
import { at } from './host.ts';

/** `--flag value` or `--flag=value` (Firecracker's argument parser takes both). */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  if (i >= 0) return process.argv[i + 1];
  return process.argv.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
}
const sockArg = arg('--api-sock');
const sock = sockArg === undefined ? undefined : at(sockArg);
const instanceId = arg('--id') ?? 'anonymous-instance';
const { FAKE_LOG, FAKE_LOG_FD, FAKE_MODE = '', FAKE_FAULT = '', FAKE_BOOT_MS = '300' } = process.env;
// FAKE_LOG_FD: the log as an inherited descriptor (spawn.ts), so a fake running as a VMM uid can write it.
const logTo = FAKE_LOG_FD ? Number(FAKE_LOG_FD) : FAKE_LOG;
const log = (o: object): void => {
  if (logTo !== undefined) appendFileSync(logTo, `${JSON.stringify(o)}\n`);
};
log({ argv: process.argv.slice(2), cwd: process.cwd(), uid: process.getuid?.(), gid: process.getgid?.(), groups: process.getgroups?.(), netns: readlinkSync('/proc/self/ns/net'), chroot: process.env.FAKE_CHROOT ?? null, visible: process.env.FAKE_VISIBLE ?? null });
console.log('fake firecracker: hello on the serial console');
if (FAKE_MODE === 'exit') {
  console.error('fake firecracker: boom');
  process.exit(3);
}
if (FAKE_MODE === 'hang') setInterval(() => {}, 1000);

const vm = new FakeMicroVm(log, Number(FAKE_BOOT_MS));

function reply(res: http.ServerResponse, status: number, body?: object): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

async function serve(method: string, url: string, text: string, res: http.ServerResponse): Promise<void> {
  const r = route(method, url); // S1
  if (!r) return reply(res, 400, { fault_message: 'Invalid request method and/or path.' });
  if (method === 'GET' && r.template === '/') return reply(res, 200, { app_name: 'Firecracker', id: instanceId, state: vm.state, vmm_version: '1.17.0-dev' });
  if (!r.body) return reply(res, 400, { fault_message: `the fake does not implement ${method} ${r.template}` });
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    return reply(res, 400, { fault_message: `An error occurred when deserializing the json body of a request: ${(err as Error).message}` });
  }
  const bad = validate(r.body, body); // S2
  if (bad) return reply(res, 400, { fault_message: `An error occurred when deserializing the json body of a request: ${bad}` });
  if (`${method} ${url}` === FAKE_FAULT) return reply(res, 400, { fault_message: `fake fault on ${method} ${url}` });
  try {
    await vm.handle(`${method} ${r.template}`, r.params, body as Record<string, unknown>);
    return reply(res, 204);
  } catch (err) {
    if (!(err instanceof Fault)) throw err;
    log({ fault: err.message, call: `${method} ${url}` });
    reply(res, 400, { fault_message: err.message });
    if (err.fatal) res.on('finish', () => setTimeout(() => process.exit(1), 20));
  }
}

function parseOrText(text: string): unknown {
  try {
    return text ? (JSON.parse(text) as unknown) : undefined;
  } catch {
    return text;
  }
}

const server = http.createServer((req, res) => {
  let text = '';
  req.setEncoding('utf8');
  req.on('data', (d: string) => (text += d));
  req.on('end', () => {
    log({ method: req.method, url: req.url, type: req.headers['content-type'], body: parseOrText(text) });
    serve(req.method ?? '', req.url ?? '', text, res).catch((err: Error) => reply(res, 500, { fault_message: err.message }));
  });
});
if (FAKE_MODE !== 'hang' && sock) setTimeout(() => server.listen(sock), FAKE_MODE === 'slow' ? 150 : 0);
