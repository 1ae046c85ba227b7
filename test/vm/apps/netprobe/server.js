// VM test app (test/vm/isolation.test.ts): GET /probe?t=HOST:PORT,HOST:PORT
// opens a TCP connection to each target from inside the guest, at once, and
// answers {"HOST:PORT": "ok" | "ERRCODE"}. "ok" means the peer accepted and
// sent bytes: the test's servers greet at once; a silent one (an HTTP server:
// the control API, the router, a node API) gets a request line after 200 ms,
// so it answers too. Anything else: GET / -> "netprobe".
import http from 'node:http';
import net from 'node:net';

function tryConnect(target) {
  const i = target.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = net.connect({ host: target.slice(0, i), port: Number(target.slice(i + 1)) });
    const done = (r) => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done('TIMEOUT'), 3000);
    let ask;
    s.once('connect', () => (ask = setTimeout(() => s.write('HEAD / HTTP/1.0\r\n\r\n'), 200)));
    s.once('close', () => clearTimeout(ask));
    s.once('data', () => done('ok'));
    s.once('error', (e) => done(e.code ?? 'ERROR'));
  });
}

http
  .createServer(async (req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === '/probe') {
      const targets = (u.searchParams.get('t') ?? '').split(',').filter(Boolean);
      const results = await Promise.all(targets.map(tryConnect));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(Object.fromEntries(targets.map((t, k) => [t, results[k]]))));
      return;
    }
    res.end('netprobe');
  })
  .listen(Number(process.env.PORT ?? 8080), '0.0.0.0');
