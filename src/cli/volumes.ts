// `thaw volumes`, `thaw volume rm|resize|restore|move NAME`: an app's volume (see
// docs/ARCHITECTURE.md, "Volumes"). A volume is declared by `thaw deploy
// --volume /PATH[:SIZE]` and deleted with its app by `thaw rm NAME --delete-volume`.
import type { Command } from 'commander';
import { validateAppName } from '../image/validate.ts';
import { formatBytes } from '../volume/spec.ts';
import type { Ctx } from './context.ts';
import { table } from './format.ts';

export function registerVolumes(program: Command, ctx: Ctx): void {
  program
    .command('volumes')
    .description("list apps' volumes: path, size, home node, lease holder")
    .action(async (_opts, cmd: Command) => {
      const vols = await ctx.withApi(cmd, (api) => api.listVolumes());
      ctx.print(cmd, vols, () =>
        vols.length === 0
          ? 'no volumes; give an app one with `thaw deploy DIR --name NAME --volume /data[:SIZE]`'
          : table(['APP', 'PATH', 'SIZE', 'NODE', 'MOUNTED BY'], vols.map((v) => [v.app, v.path, formatBytes(v.size_bytes), v.node ?? '-', v.holder ?? '-'])),
      );
    });

  const vol = program.command('volume').description("manage an app's volume");
  vol
    .command('rm')
    .description("delete an app's volume and its data (the app must be asleep)")
    .argument('<name>', 'app name')
    .action(async (name: string, _opts, cmd: Command) => {
      validateAppName(name);
      await ctx.withApi(cmd, (api) => api.removeVolume(name));
      ctx.print(cmd, { ok: true, app: name }, () => `deleted the volume of ${name}`);
    });
  vol
    .command('restore')
    .description("bring the newest backup of an app's volume (or --backup ID) onto node B, its new home (the app must be asleep; needs object storage)")
    .argument('<name>', 'app name')
    .requiredOption('--node <node>', 'the node that becomes the volume\'s home')
    .option('--backup <id>', 'the backup to restore: the id of the sleep that made it (thaw sleeps NAME)')
    .action(async (name: string, opts: { node: string; backup?: string }, cmd: Command) => {
      validateAppName(name);
      const r = await ctx.withApi(cmd, (api) => api.restoreVolume(name, opts.node, opts.backup));
      ctx.print(cmd, r, () => `restored the volume of ${name} onto ${r.node} from backup ${r.backup.id} (${formatBytes(r.backup.bytes)}): the data of the ${r.sleep.trigger} sleep at ${r.sleep.at}, in ${r.ms} ms`);
    });
  vol
    .command('move')
    .description("move an app's volume to node B while the app is asleep (through object storage, or node to node without it)")
    .argument('<name>', 'app name')
    .requiredOption('--to <node>', 'the node that becomes the volume\'s home')
    .action(async (name: string, opts: { to: string }, cmd: Command) => {
      validateAppName(name);
      const r = await ctx.withApi(cmd, (api) => api.moveVolume(name, opts.to));
      ctx.print(cmd, r, () => (r.via === 'none' ? `the volume of ${name} now lives on ${r.to} (nothing to copy)` : `moved the volume of ${name} from ${r.from} to ${r.to} (${r.via}, ${formatBytes(r.bytes)}) in ${r.ms} ms`));
    });
  vol
    .command('resize')
    .description("grow an app's volume (resize2fs runs on its node before the next attach; never shrinks)")
    .argument('<name>', 'app name')
    .argument('<size>', 'new size, e.g. 2GiB')
    .action(async (name: string, size: string, _opts, cmd: Command) => {
      validateAppName(name);
      const v = await ctx.withApi(cmd, (api) => api.resizeVolume(name, size));
      ctx.print(cmd, v, () => `volume of ${name} is ${formatBytes(v.size_bytes)} from its next wake`);
    });
}
