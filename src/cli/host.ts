// Long-running and host commands: `thaw up`, `thaw doctor`, `thaw bench`. Their
// modules belong to other parts of Thaw and are loaded lazily by URL.
import { Option, type Command } from 'commander';
import { ThawError } from '../errors.ts';
import type { Ctx } from './context.ts';
import { intArg } from './args.ts';
import { addProxyOptions, proxyOptions } from './proxy.ts';

/** `thaw up` options; the type only (the module itself is loaded lazily). */
export type UpOpts = import('../control/up.ts').UpOptions;


async function load<F>(ctx: Ctx, rel: string, fn: string): Promise<F> {
  const url = new URL(rel, import.meta.url).href;
  const mod = (await ctx.deps.importModule(url)) as Record<string, unknown>;
  if (typeof mod[fn] !== 'function') throw new ThawError('INTERNAL', `${rel} does not export ${fn}()`);
  return mod[fn] as F;
}

function wakeOpts(o: Record<string, unknown>): { maxConcurrentWakes?: number; wakeDeadlineMs?: number } {
  return {
    ...(typeof o.maxConcurrentWakes === 'number' ? { maxConcurrentWakes: o.maxConcurrentWakes } : {}),
    ...(typeof o.wakeDeadline === 'number' ? { wakeDeadlineMs: o.wakeDeadline } : {}),
  };
}

export function registerHost(program: Command, ctx: Ctx): void {
  addProxyOptions(program
    .command('up'))
    .description('run the control plane, API and router (and a local node) in the foreground')
    .addOption(new Option('--port <n>', 'router port for app traffic').env('THAW_PORT').argParser(intArg).default(8080))
    .addOption(new Option('--api-port <n>', 'control API port').env('THAW_API_PORT').argParser(intArg).default(7070))
    .addOption(new Option('--host <addr>', 'bind address of the router (0.0.0.0: every interface)').env('THAW_HOST').default('127.0.0.1'))
    .addOption(new Option('--api-host <addr>', 'bind address of the control API (default: --host)').env('THAW_API_HOST'))
    .option('--tls', 'serve the control API over HTTPS with a cluster CA made in DATA/tls (prints the join command)')
    .option('--tls-cert <file>', 'serve the control API over HTTPS with this certificate (PEM; with --tls-key)')
    .option('--tls-key <file>', 'private key of --tls-cert (PEM)')
    .option('--node-ca <file>', "nodes' certificates must chain to this CA (default: pin each node's at join)")
    .addOption(new Option('--domain <domain>', 'apps are served at NAME.<domain>').env('THAW_DOMAIN').default('localhost'))
    .addOption(new Option('--idle-timeout <seconds>', 'default idle timeout of new apps').env('THAW_IDLE_TIMEOUT').argParser(intArg).default(300))
    .addOption(new Option('--database <url>', 'postgres://... (default: SQLite in the data folder)').env('THAW_DATABASE'))
    .option('--database-schema <name>', 'Postgres schema for Thaw\'s tables (default: public)')
    .option('--s3-endpoint <url>', 'S3-compatible endpoint for seed replication (path-style; AWS_* env credentials)')
    .option('--s3-bucket <bucket>', 'bucket for seeds (enables replication)')
    .option('--s3-region <region>', 'bucket region (default us-east-1)')
    .addOption(new Option('--seed-cache-bytes <n>', 'byte cap of the local seed cache (LRU)').argParser(intArg))
    .addOption(new Option('--seed-ttl <seconds>', 'delete seeds of apps not woken for this long').argParser(intArg))
    .option('--no-local-node', 'control plane and router only; VMs run on `thaw node` processes')
    .addOption(new Option('--driver <name>', 'hypervisor driver of this node: qemu, or firecracker (KVM only)').choices(['qemu', 'firecracker']).env('THAW_DRIVER').default('qemu'))
    .addOption(new Option('--node-timeout <ms>', 'mark a `thaw node` down after this long without a heartbeat').argParser(intArg).default(5000))
    .addOption(new Option('--max-upload-mib <n>', 'largest app upload, compressed and uncompressed each').env('THAW_MAX_UPLOAD_MIB').argParser(intArg).default(4096))
    .addOption(new Option('--max-disk-mib <n>', 'largest disk image (images are sized from their content plus headroom)').env('THAW_DISK_MIB').argParser(intArg).default(8192))
    .addOption(new Option('--max-concurrent-wakes <n>', 'most wakes (thaws, cold boots) this node runs at once; more wait in a FIFO queue (default: one per CPU)').argParser(intArg))
    .addOption(new Option('--wake-deadline <ms>', 'overall deadline of one wake from its start; past it the VM is deleted, the seed kept, requests get 503').argParser(intArg))
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const runUp = await load<(opts: UpOpts) => Promise<void>>(ctx, '../control/up.ts', 'runUp');
      const str = (k: string) => (typeof o[k] === 'string' ? { [k]: o[k] as string } : {});
      const opts: UpOpts = {
        data: ctx.globals(cmd).dataDir,
        port: o.port as number,
        apiPort: o.apiPort as number,
        host: o.host as string,
        ...str('apiHost'),
        ...(o.tls === true ? { tls: true } : {}),
        ...str('tlsCert'),
        ...str('tlsKey'),
        ...str('nodeCa'),
        domain: o.domain as string,
        idleTimeout: o.idleTimeout as number,
        ...str('database'),
        ...str('databaseSchema'),
        ...str('s3Endpoint'),
        ...str('s3Bucket'),
        ...str('s3Region'),
        ...(typeof o.seedCacheBytes === 'number' ? { seedCacheBytes: o.seedCacheBytes } : {}),
        ...(typeof o.seedTtl === 'number' ? { seedTtl: o.seedTtl } : {}),
        localNode: o.localNode !== false,
        nodeDownAfterMs: o.nodeTimeout as number,
        ...proxyOptions(o),
        driver: o.driver as 'qemu' | 'firecracker',
        maxUploadMiB: o.maxUploadMib as number,
        maxDiskMiB: o.maxDiskMib as number,
        ...wakeOpts(o),
      };
      await runUp(opts);
    });

  program
    .command('node')
    .description('run a node agent that joins a control plane (`thaw up`) and runs VMs for it')
    .requiredOption('--control <url>', 'control API URL of `thaw up`, e.g. http://10.0.0.1:7070')
    .requiredOption('--name <name>', 'unique node name (lowercase letters, digits, dashes)')
    .addOption(new Option('--token-file <file>', "the control plane's token file (DATA/token of `thaw up`)"))
    .addOption(new Option('--token <token>', 'the control plane token').env('THAW_TOKEN'))
    .addOption(new Option('--host <addr>', 'bind address of the node API and VM ports').default('127.0.0.1'))
    .addOption(new Option('--port <n>', 'node API port (0: any free port)').argParser(intArg).default(0))
    .option('--advertise <url>', 'URL the control plane reaches this node at (default http(s)://HOST:PORT)')
    .option('--control-ca <file>', 'check an https:// control plane against this CA (DATA/tls/ca.crt of `thaw up --tls`)')
    .option('--control-fingerprint <sha256>', "pin the control plane's certificate (or its CA) to this SHA-256 fingerprint")
    .option('--tls-cert <file>', 'serve the node API over HTTPS with this certificate (default with an https:// control plane: self-signed, pinned at join)')
    .option('--tls-key <file>', 'private key of --tls-cert (PEM)')
    .option('--s3-endpoint <url>', 'S3-compatible endpoint for seed replication (path-style; AWS_* env credentials)')
    .option('--s3-bucket <bucket>', 'bucket for seeds')
    .option('--s3-region <region>', 'bucket region (default us-east-1)')
    .addOption(new Option('--seed-cache-bytes <n>', 'byte cap of this node\'s seed cache (LRU)').argParser(intArg))
    .addOption(new Option('--capacity <n>', 'most VMs at once (default: what 80% of memory holds)').argParser(intArg))
    .addOption(new Option('--driver <name>', 'hypervisor driver of this node: qemu, or firecracker (KVM only)').choices(['qemu', 'firecracker']).env('THAW_DRIVER').default('qemu'))
    .addOption(new Option('--max-concurrent-wakes <n>', 'most wakes (thaws, cold boots) this node runs at once; more wait in a FIFO queue (default: one per CPU)').argParser(intArg))
    .addOption(new Option('--wake-deadline <ms>', 'overall deadline of one wake from its start; past it the VM is deleted, the seed kept, requests get 503').argParser(intArg))
    .addOption(new Option('--node-timeout <ms>', "the control plane's node timeout (match `thaw up`); VMs stop after 60% of it without the control plane").argParser(intArg).default(5000))
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const mod = (await ctx.deps.importModule(new URL('../node/run.ts', import.meta.url).href)) as typeof import('../node/run.ts');
      const str = (k: string) => (typeof o[k] === 'string' ? { [k]: o[k] as string } : {});
      const token = await mod.readToken({ ...str('token'), ...str('tokenFile') });
      await mod.runNode({
        control: o.control as string,
        name: o.name as string,
        data: ctx.globals(cmd).dataDir,
        token,
        host: o.host as string,
        port: o.port as number,
        ...str('advertise'),
        ...str('controlCa'),
        ...str('controlFingerprint'),
        ...str('tlsCert'),
        ...str('tlsKey'),
        ...str('s3Endpoint'),
        ...str('s3Bucket'),
        ...str('s3Region'),
        ...(typeof o.seedCacheBytes === 'number' ? { seedCacheBytes: o.seedCacheBytes } : {}),
        ...(typeof o.capacity === 'number' ? { capacity: o.capacity } : {}),
        nodeTimeoutMs: o.nodeTimeout as number,
        driver: o.driver as 'qemu' | 'firecracker',
        ...wakeOpts(o),
      });
    });

  program
    .command('doctor')
    .description('check this host: QEMU, KVM, guest assets, disk, ports (--json for machine output)')
    .action(async (_o, cmd: Command) => {
      const runDoctor = await load<(opts: { json: boolean; dataDir?: string }) => Promise<unknown>>(ctx, '../doctor.ts', 'runDoctor');
      const r = await runDoctor({ json: ctx.globals(cmd).json, dataDir: ctx.globals(cmd).dataDir });
      if (typeof r === 'number') ctx.exitCode = r;
      else if ((r as { ok?: boolean } | null)?.ok === false) ctx.exitCode = 2;
    });

  program
    .command('bench')
    .description('benchmarks; `thaw bench lifecycle` runs cold boot, bake and thaws of the demo app (--json)')
    .command('lifecycle')
    .description('cold boot -> bake -> N thaws of the demo app in a temporary data folder')
    .addOption(new Option('--thaws <n>', 'number of thaws').argParser(intArg).default(5))
    .addOption(new Option('--driver <name>', 'hypervisor driver').choices(['qemu', 'firecracker']).env('THAW_DRIVER').default('qemu'))
    .addOption(new Option('--netns', 'each VM in its own network namespace, its VMM jailed, as on a node (root)').default(false))
    .action(async (o: { thaws: number; driver: 'qemu' | 'firecracker'; netns: boolean }, cmd: Command) => {
      const run = await load<(opts: { thaws: number; json: boolean; driver: string; netns: boolean }) => Promise<unknown>>(ctx, '../bench/lifecycle.ts', 'runBenchLifecycle');
      await run({ thaws: o.thaws, json: ctx.globals(cmd).json, driver: o.driver, netns: o.netns });
    });
}
