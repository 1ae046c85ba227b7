// An Express app with a real module graph (json-server 0.17: express, lowdb,
// body-parser and ~110 packages, CommonJS) for bench/thaw-breakdown.ts. Like
// examples/hello, GET / reports how this process started (start_ms, ms after
// its time origin) and its compile cache folder. No SIGTERM handler, as many
// apps have none.
const jsonServer = require('json-server');
const nodeModule = require('node:module');

const loaded = performance.now();
let listened = null;
const port = Number(process.env.PORT ?? 8080);

const server = jsonServer.create();
server.get('/', (req, res) => {
  const start_ms = { bootstrap: performance.nodeTiming.bootstrapComplete, loaded, listened };
  res.json({ pid: process.pid, who: process.env.WHO ?? null, marker: null, start_ms, compile_cache: nodeModule.getCompileCacheDir?.() ?? null });
});
server.use(jsonServer.defaults({ logger: false, static: '/nonexistent' }));
server.use(jsonServer.router({ notes: [] }));
server.listen(port, '0.0.0.0', () => {
  listened = performance.now();
});
