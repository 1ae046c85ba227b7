// Thaw demo app. GET / -> JSON with pid, $WHO and the marker file's content.
// POST / with a body -> writes the body to the marker file (on the VM's disk);
// 507 with the error code (e.g. ENOSPC) when the write fails, the old marker kept.
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

/** Write the marker durably: a new file, fsync'd, renamed over the old one, the folder fsync'd. */
function writeMarker(body) {
  const dir = path.dirname(marker);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${marker}.tmp`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, body);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, marker);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  const d = fs.openSync(dir, 'r');
  fs.fsyncSync(d);
  fs.closeSync(d);
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        writeMarker(Buffer.concat(chunks));
      } catch (err) {
        // A full disk (ENOSPC) or any failed write: say so, keep the old marker and keep serving.
        res.writeHead(507, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ ok: false, error: err.code ?? String(err), marker: readMarker() }));
        return;
      }
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
