// `thaw sleep|wake NAME`, `thaw wakes|sleeps NAME [--limit N]`, `thaw seeds`, `thaw logs NAME [-f]`.
import { Option, type Command } from 'commander';
import { validateAppName } from '../image/validate.ts';
import type { Ctx } from './context.ts';
import { bytes, ms, table } from './format.ts';
import { intArg } from './args.ts';

/** How the app ended on a sleep: `exited 3`, `killed by SIGKILL`, or `not running`. */
function exitText(s: { exit_code: number | null; exit_signal: string | null }): string {
  if (s.exit_signal) return `killed by ${s.exit_signal}`;
  return s.exit_code === null ? 'not running' : `exited ${s.exit_code}`;
}

export function registerLifecycle(program: Command, ctx: Ctx): void {
  program
    .command('sleep')
    .description('put an app to sleep now: requests in flight finish, the app gets SIGTERM, a seed is baked after a deploy, the VM is deleted')
    .argument('<name>', 'app name')
    .action(async (name: string, _opts, cmd: Command) => {
      validateAppName(name);
      const r = await ctx.withApi(cmd, (api) => api.sleep(name));
      const how = r.sleep ? ` (drained in ${ms(r.sleep.drain_ms)}, app ${exitText(r.sleep)})` : '';
      ctx.print(cmd, r, () => (r.seed ? `${name} is asleep${how}; baked seed ${r.seed.id} (${bytes(r.seed.bytes_allocated)} on disk)` : `${name} is asleep${how}`));
    });

  program
    .command('sleeps')
    .description('recent sleeps of an app, newest first: trigger, drain, how the app exited, bake')
    .argument('<name>', 'app name')
    .addOption(new Option('--limit <n>', 'how many').argParser(intArg).default(20))
    .action(async (name: string, opts: { limit: number }, cmd: Command) => {
      validateAppName(name);
      const ss = await ctx.withApi(cmd, (api) => api.sleeps(name, opts.limit));
      ctx.print(cmd, ss, () =>
        ss.length === 0
          ? `${name} has not slept yet`
          : table(
              ['AT', 'TRIGGER', 'DRAIN', 'CUT', 'APP EXIT', 'SHUTDOWN', 'BAKED', 'TOTAL', 'ERROR'],
              ss.map((s) => [s.at, s.trigger, ms(s.drain_ms), String(s.cut_requests), exitText(s), ms(s.shutdown_ms), s.baked ? 'yes' : 'no', ms(s.total_ms), s.error]),
            ),
      );
    });

  program
    .command('wake')
    .description('wake an app now (thaw its seed, or cold boot)')
    .argument('<name>', 'app name')
    .action(async (name: string, _opts, cmd: Command) => {
      validateAppName(name);
      const w = await ctx.withApi(cmd, (api) => api.wake(name));
      ctx.print(cmd, w, () => {
        const fb = w.fallback_reason ? ` (fell back: ${w.fallback_reason})` : '';
        return `${name} woke by ${w.boot_mode} in ${ms(w.wall_ms)} on ${w.node ?? '-'}${fb}`;
      });
    });

  program
    .command('wakes')
    .description('recent wakes of an app, newest first')
    .argument('<name>', 'app name')
    .addOption(new Option('--limit <n>', 'how many').argParser(intArg).default(20))
    .action(async (name: string, opts: { limit: number }, cmd: Command) => {
      validateAppName(name);
      const ws = await ctx.withApi(cmd, (api) => api.wakes(name, opts.limit));
      ctx.print(cmd, ws, () =>
        ws.length === 0
          ? `${name} has not woken yet`
          : table(
              ['AT', 'MODE', 'OUTCOME', 'WALL', 'QUEUED', 'BOOT', 'GATE', 'APP START', 'NODE', 'SEED', 'SEED OUTCOME', 'FALLBACK'],
              ws.map((w) => [w.at, w.boot_mode, w.outcome ?? 'ok', ms(w.wall_ms), ms(w.queued_ms ?? 0), ms(w.boot_ms), ms(w.gate_ms), ms(w.app_start_ms), w.node, w.seed_source, w.seed_outcome ?? null, w.fallback_reason]),
            ),
      );
    });

  program
    .command('seeds')
    .description('list seeds (snapshots) of all apps')
    .action(async (_opts, cmd: Command) => {
      const ss = await ctx.withApi(cmd, (api) => api.seeds());
      ctx.print(cmd, ss, () =>
        ss.length === 0
          ? 'no seeds yet; an app is baked the first time it sleeps after a deploy'
          : table(
              ['ID', 'APP', 'NODE', 'MEMORY+DISK', 'ON DISK', 'COMPRESSED', 'REPLICATED', 'LAST USED'],
              ss.map((s) => [s.id, s.app, s.node, bytes(s.bytes_apparent), bytes(s.bytes_allocated), bytes(s.bytes_compressed), s.replicated ? 'yes' : 'no', s.last_used_at]),
            ),
      );
    });

  program
    .command('logs')
    .description("an app's log; -f keeps following until Ctrl-C")
    .argument('<name>', 'app name')
    .option('-f, --follow', 'follow new output')
    .action(async (name: string, opts: { follow?: boolean }, cmd: Command) => {
      validateAppName(name);
      const ac = new AbortController();
      const stop = () => ac.abort();
      if (opts.follow) process.once('SIGINT', stop);
      try {
        await ctx.withApi(cmd, async (api) => {
          const text = await api.logs(name, { follow: opts.follow === true, signal: ac.signal });
          for await (const chunk of text) ctx.deps.stdout(chunk);
        });
      } finally {
        process.removeListener('SIGINT', stop);
      }
    });
}
