// `thaw apps`, `thaw nodes`, `thaw rm NAME`.
import type { Command } from 'commander';
import { validateAppName } from '../image/validate.ts';
import type { Ctx } from './context.ts';
import { table } from './format.ts';

export function registerApps(program: Command, ctx: Ctx): void {
  program
    .command('apps')
    .description('list apps')
    .action(async (_opts, cmd: Command) => {
      const apps = await ctx.withApi(cmd, (api) => api.listApps());
      ctx.print(cmd, apps, () =>
        apps.length === 0
          ? 'no apps yet; deploy one with `thaw deploy DIR --name NAME`'
          : table(
              ['NAME', 'STATE', 'URL', 'IDLE', 'LAST WAKE'],
              apps.map((a) => [a.name, a.error ? `${a.state} (${a.error})` : a.state, a.url, `${a.idle_timeout_s}s`, a.last_wake_at]),
            ),
      );
    });

  program
    .command('nodes')
    .description('node agents: state, capacity, running VMs, cached seeds')
    .action(async (_opts, cmd: Command) => {
      const nodes = await ctx.withApi(cmd, (api) => api.nodes());
      ctx.print(cmd, nodes, () =>
        table(
          ['NAME', 'STATE', 'URL', 'RUNNING', 'CAPACITY', 'SEEDS', 'LAST HEARTBEAT'],
          nodes.map((n) => [n.local ? `${n.name} (in-process)` : n.name, n.state, n.url, String(n.running), String(n.capacity), String(n.seeds), n.last_heartbeat_at]),
        ),
      );
    });

  program
    .command('rm')
    .description('delete an app: its VM, images, seeds, env and history (an app with a volume needs --delete-volume)')
    .argument('<name>', 'app name')
    .option('--delete-volume', "also delete the app's volume and its data")
    .action(async (name: string, opts: { deleteVolume?: boolean }, cmd: Command) => {
      validateAppName(name);
      await ctx.withApi(cmd, (api) => api.deleteApp(name, opts.deleteVolume ? { deleteVolume: true } : {}));
      ctx.print(cmd, { ok: true, deleted: name }, () => `deleted ${name}`);
    });
}
