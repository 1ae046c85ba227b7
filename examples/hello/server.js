// Thaw demo app. GET / -> JSON with pid, $WHO and the marker file's content.
// POST / with a body -> writes the body to the marker file (on the VM's disk).
// now_ms is the guest's clock when it answered; start_ms is how this process
// started (ms after its time origin: Node's bootstrap done, modules loaded,
// listening) and compile_cache the folder of Node's compile cache, if any.
import http from 'node:http';
import fs from 'node:fs';
import module from 'node:module';
import path from 'node:path';

const loaded = performance.now();
let listened = null;
const port = Number(process.env.PORT ?? 8080);
const marker = path.resolve('data', 'marker.txt');

function readMarker() {
  try {
    return fs.readFileSync(marker, 'utf8');
  } catch {
    return null;
  }
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      fs.mkdirSync(path.dirname(marker), { recursive: true });
      const fd = fs.openSync(marker, 'w');
      fs.writeSync(fd, Buffer.concat(chunks));
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, marker: readMarker() }));
    });
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  const start_ms = { bootstrap: performance.nodeTiming.bootstrapComplete, loaded, listened };
  const compile_cache = module.getCompileCacheDir?.() ?? null;
  res.end(JSON.stringify({ pid: process.pid, who: process.env.WHO ?? null, marker: readMarker(), uptime_s: process.uptime(), now_ms: Date.now(), start_ms, compile_cache }));
});

server.listen(port, '0.0.0.0', () => {
  listened = performance.now();
  console.log(`hello listening on ${port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
