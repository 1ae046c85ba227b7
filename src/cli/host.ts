// Long-running and host commands: `thaw up`, `thaw node`, `thaw doctor`. Their
// modules belong to other parts of Thaw and are loaded lazily by URL.
import os from 'node:os';
import { Option, type Command } from 'commander';
import { ThawError } from '../errors.ts';
import type { Ctx } from './context.ts';
import { intArg } from './args.ts';

export interface UpOpts {
  data: string;
  port: number;
  apiPort: number;
  domain: string;
  idleTimeout: number;
  database?: string;
  s3Endpoint?: string;
  s3Bucket?: string;
  s3Region?: string;
  noLocalNode?: boolean;
  seedCacheBytes?: number;
}
export interface NodeOpts {
  control: string;
  name: string;
  data: string;
  port: number;
}

async function load<F>(ctx: Ctx, rel: string, fn: string): Promise<F> {
  const url = new URL(rel, import.meta.url).href;
  const mod = (await ctx.deps.importModule(url)) as Record<string, unknown>;
  if (typeof mod[fn] !== 'function') throw new ThawError('INTERNAL', `${rel} does not export ${fn}()`);
  return mod[fn] as F;
}

export function registerHost(program: Command, ctx: Ctx): void {
  program
    .command('up')
    .description('run the control plane, API and router (and a local node) in the foreground')
    .addOption(new Option('--port <n>', 'router port for app traffic').env('THAW_PORT').argParser(intArg).default(8080))
    .addOption(new Option('--api-port <n>', 'control API port (127.0.0.1)').env('THAW_API_PORT').argParser(intArg).default(7070))
    .addOption(new Option('--domain <domain>', 'apps are served at NAME.<domain>').env('THAW_DOMAIN').default('localhost'))
    .addOption(new Option('--idle-timeout <seconds>', 'default idle timeout of new apps').env('THAW_IDLE_TIMEOUT').argParser(intArg).default(300))
    .addOption(new Option('--database <url>', 'postgres://... (default: SQLite in the data folder)').env('THAW_DATABASE'))
    .option('--s3-endpoint <url>', 'object storage for seed replication')
    .option('--s3-bucket <bucket>', 'bucket for seeds')
    .option('--s3-region <region>', 'bucket region')
    .option('--no-local-node', 'do not run a VM node inside this process')
    .addOption(new Option('--seed-cache-bytes <n>', 'local seed cache size limit').argParser(intArg))
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const runUp = await load<(opts: UpOpts) => Promise<void>>(ctx, '../control/up.ts', 'runUp');
      const str = (k: string) => (typeof o[k] === 'string' ? { [k]: o[k] as string } : {});
      const opts: UpOpts = {
        data: ctx.globals(cmd).dataDir,
        port: o.port as number,
        apiPort: o.apiPort as number,
        domain: o.domain as string,
        idleTimeout: o.idleTimeout as number,
        ...str('database'),
        ...str('s3Endpoint'),
        ...str('s3Bucket'),
        ...str('s3Region'),
        ...(o.localNode === false ? { noLocalNode: true } : {}),
        ...(typeof o.seedCacheBytes === 'number' ? { seedCacheBytes: o.seedCacheBytes } : {}),
      };
      await runUp(opts);
    });

  program
    .command('node')
    .description('run a VM node that joins a control plane (uses the global --data folder)')
    .addOption(new Option('--control <url>', 'control API URL').env('THAW_CONTROL').makeOptionMandatory())
    .addOption(new Option('--name <name>', 'node name').default(os.hostname()))
    .addOption(new Option('--port <n>', 'node agent port').env('THAW_NODE_PORT').argParser(intArg).default(7071))
    .action(async (o: { control: string; name: string; port: number }, cmd: Command) => {
      const runNode = await load<(opts: NodeOpts) => Promise<void>>(ctx, '../node/main.ts', 'runNode');
      await runNode({ control: o.control, name: o.name, data: ctx.globals(cmd).dataDir, port: o.port });
    });

  program
    .command('doctor')
    .description('check this host: QEMU, KVM, guest assets, disk, ports (--json for machine output)')
    .action(async (_o, cmd: Command) => {
      const runDoctor = await load<(opts: { json: boolean }) => Promise<unknown>>(ctx, '../doctor.ts', 'runDoctor');
      const r = await runDoctor({ json: ctx.globals(cmd).json });
      if (typeof r === 'number') ctx.exitCode = r;
    });
}
