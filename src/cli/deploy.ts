// `thaw deploy DIR --name NAME [--env K=V]... [--idle-timeout S]`.
import { Command, Option } from 'commander';
import { ThawError } from '../errors.ts';
import { packAppDir } from '../image/tarball.ts';
import { validateAppDir, validateAppName } from '../image/validate.ts';
import type { Ctx } from './context.ts';
import { bytes, ms } from './format.ts';
import { appUrl } from './instance.ts';
import { intArg } from './args.ts';

/** `K=V` -> [K, V]; the value may itself contain '='. */
export function parseKeyValue(s: string): [string, string] {
  const i = s.indexOf('=');
  if (i <= 0) throw new ThawError('INVALID_REQUEST', `expected KEY=VALUE, got ${JSON.stringify(s)}`, { details: { arg: s } });
  return [s.slice(0, i), s.slice(i + 1)];
}

export function parseEnvArgs(args: string[]): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const a of args) {
    const [k, v] = parseKeyValue(a);
    vars[k] = v;
  }
  return vars;
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerDeploy(program: Command, ctx: Ctx): void {
  program
    .command('deploy')
    .description('pack an app folder, upload it and build it (creates the app if needed)')
    .argument('<dir>', 'app folder with package.json and scripts.start')
    .requiredOption('--name <name>', 'app name (lowercase letters, digits, dashes)')
    .addOption(new Option('--env <K=V>', 'env var for the app; repeatable').argParser(collect).default([]))
    .addOption(new Option('--idle-timeout <seconds>', 'sleep after this many idle seconds').argParser(intArg))
    .action(async (dir: string, opts: { name: string; env: string[]; idleTimeout?: number }, cmd: Command) => {
      validateAppName(opts.name);
      const env = parseEnvArgs(opts.env);
      await validateAppDir(dir);
      const { json } = ctx.globals(cmd);
      await ctx.withApi(cmd, async (api, instance) => {
        const tarball = await packAppDir(dir);
        if (!json) ctx.info(`uploading ${bytes(tarball.length)} to ${opts.name}`);
        const result = await api.deploy(opts.name, tarball, {
          ...(Object.keys(env).length > 0 ? { env } : {}),
          ...(opts.idleTimeout !== undefined ? { idleTimeoutS: opts.idleTimeout } : {}),
          onProgress: (line) => {
            if (!json) ctx.info(`  ${line}`);
          },
        });
        const url = appUrl(instance.routerUrl, opts.name);
        ctx.print(cmd, { ...result, url }, () => {
          const purged = result.purged_seed ? ` (dropped old seed ${result.purged_seed})` : '';
          return `deployed ${opts.name} in ${ms(result.build_ms)}, image ${bytes(result.deploy.image_bytes)}${purged}\n${url}`;
        });
      });
    });
}
