// Runs inside the guest (bench/npm-start.ts): starts the same server in each
// mode, in turn, and times spawn -> first HTTP 200 on its own port.
// argv: JSON [{ name, argv, env }], rounds. Prints JSON { name: [ms...] }.
const { spawn } = require('child_process');
const http = require('http');

const modes = JSON.parse(process.argv[2]);
const rounds = Number(process.argv[3]);
let port = 9100;
const probe = (p) => new Promise((resolve) => {
  const q = http.get({ host: '127.0.0.1', port: p, path: '/', agent: false }, (res) => { res.resume(); resolve(res.statusCode === 200); });
  q.on('error', () => resolve(false));
  q.setTimeout(2000, () => { q.destroy(); resolve(false); });
});
async function once(m) {
  const p = port++;
  const t0 = performance.now();
  const child = spawn(m.argv[0], m.argv.slice(1), { cwd: '/app', env: { ...m.env, PORT: String(p) }, stdio: 'ignore', detached: true });
  const exited = new Promise((r) => child.on('exit', r));
  while (!(await probe(p))) await new Promise((r) => setTimeout(r, 20));
  const ms = performance.now() - t0;
  process.kill(-child.pid, 'SIGKILL');
  await exited;
  return Math.round(ms);
}
(async () => {
  const out = {};
  for (let i = 0; i < rounds; i++) for (const m of modes) (out[m.name] ??= []).push(await once(m));
  console.log(JSON.stringify(out));
})();
