// `thaw volumes`, `thaw volume rm|resize NAME`: an app's volume (see
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
