// `thaw env set NAME K=V...`, `thaw env unset NAME K...`, `thaw env list NAME`.
import type { Command } from 'commander';
import { validateAppName } from '../image/validate.ts';
import type { Ctx } from './context.ts';
import { parseEnvArgs } from './deploy.ts';
import { table } from './format.ts';

export function registerEnv(program: Command, ctx: Ctx): void {
  const env = program.command('env').description('app environment variables (values are write-only)');

  env
    .command('set')
    .description('set env vars; the app sees them from its next wake')
    .argument('<name>', 'app name')
    .argument('<pairs...>', 'KEY=VALUE pairs (the value may contain "=")')
    .action(async (name: string, pairs: string[], _opts, cmd: Command) => {
      validateAppName(name);
      const vars = parseEnvArgs(pairs);
      await ctx.withApi(cmd, (api) => api.setEnv(name, vars));
      ctx.print(cmd, { ok: true, app: name, keys: Object.keys(vars) }, () => `set ${Object.keys(vars).join(', ')} on ${name}`);
    });

  env
    .command('unset')
    .description('remove env vars')
    .argument('<name>', 'app name')
    .argument('<keys...>', 'keys to remove')
    .action(async (name: string, keys: string[], _opts, cmd: Command) => {
      validateAppName(name);
      await ctx.withApi(cmd, (api) => api.unsetEnv(name, keys));
      ctx.print(cmd, { ok: true, app: name, keys }, () => `unset ${keys.join(', ')} on ${name}`);
    });

  env
    .command('list')
    .description('list env keys (never values)')
    .argument('<name>', 'app name')
    .action(async (name: string, _opts, cmd: Command) => {
      validateAppName(name);
      const vars = await ctx.withApi(cmd, (api) => api.listEnv(name));
      ctx.print(cmd, vars, () => (vars.length === 0 ? `no env vars on ${name}` : table(['KEY', 'UPDATED'], vars.map((v) => [v.key, v.updated_at]))));
    });
}
