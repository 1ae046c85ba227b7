// `thaw deploy DIR --name NAME [--env K=V]... [--idle-timeout S]`, or
// `thaw deploy --image REF --name NAME [--port P] [--env K=V]... [-- CMD ARG...]`.
import { parseOrThrow } from '../http/parse.ts';
import type { Readable } from 'node:stream';
import { Command, Option } from 'commander';
import { ImageDeployBody } from '../api/schemas.ts';
import { ThawError } from '../errors.ts';
import { parseEgress } from '../network/egress.ts';
import { packAppStream } from '../image/pack.ts';
import { validateAppDir, validateAppName } from '../image/validate.ts';
import type { Ctx } from './context.ts';
import { bytes, ms } from './format.ts';
import { appUrl } from './instance.ts';
import { intArg } from './args.ts';
import { parseVolumeArg } from '../volume/spec.ts';

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

/** The app folder (a path), or the image to deploy. Errors: INVALID_REQUEST, and the folder checks of validateAppDir. */
async function deploySource(args: string[], opts: { image?: string; port?: number; registryAuth?: string }): Promise<string | ImageDeployBody> {
  if (opts.image === undefined) {
    if (args.length !== 1) throw new ThawError('INVALID_REQUEST', 'pass one app folder, or --image REF (a command for the image goes after --)');
    if (opts.port !== undefined || opts.registryAuth !== undefined) throw new ThawError('INVALID_REQUEST', '--port and --registry-auth go with --image');
    await validateAppDir(args[0]!);
    return args[0]!;
  }
  const auth = opts.registryAuth ?? process.env.THAW_REGISTRY_AUTH;
  let registry_auth: ImageDeployBody['registry_auth'];
  if (auth !== undefined) {
    const i = auth.indexOf(':');
    if (i <= 0) throw new ThawError('INVALID_REQUEST', 'registry credentials are USER:PASSWORD');
    registry_auth = { username: auth.slice(0, i), password: auth.slice(i + 1) };
  }
  return parseOrThrow(ImageDeployBody, { image: opts.image, ...(args.length ? { command: args } : {}), ...(opts.port !== undefined ? { port: opts.port } : {}), ...(registry_auth ? { registry_auth } : {}) }, 'deploy options');
}

export function registerDeploy(program: Command, ctx: Ctx): void {
  program
    .command('deploy')
    .description('deploy an app folder (packed and uploaded) or an OCI image (creates the app if needed)')
    .argument('[args...]', 'the app folder with package.json and scripts.start; with --image, the command after -- (replaces the image\'s Cmd)')
    .requiredOption('--name <name>', 'app name (lowercase letters, digits, dashes)')
    .option('--image <ref>', 'an OCI image: HOST[:PORT]/REPO[:TAG|@sha256:...], a Docker Hub name, oci-archive:PATH, docker-archive:PATH or oci:DIR[:TAG]')
    .addOption(new Option('--port <port>', "the app's port (default: the image's first exposed TCP port, else 8080)").argParser(intArg))
    .option('--registry-auth <user:password>', 'registry credentials (default: ~/.docker/config.json on the control plane; also THAW_REGISTRY_AUTH)')
    .addOption(new Option('--env <K=V>', 'env var for the app; repeatable').argParser(collect).default([]))
    .addOption(new Option('--idle-timeout <seconds>', 'sleep after this many idle seconds').argParser(intArg))
    .addOption(new Option('--wake-timeout <seconds>', "hold a request this long for the app's wake before 503 + Retry-After (default: thaw up's --wake-timeout)").argParser(intArg))
    .addOption(new Option('--egress <mode>', 'what the app may reach: internet (public addresses, the default) or none').choices(['internet', 'none']))
    .addOption(new Option('--egress-allow <cidr[:port]>', 'also open this IPv4 address or network (optionally one port), even a private one; repeatable').argParser(collect).default([]))
    .option('--build', 'run the build step (install, build, prune) even though the folder ships node_modules')
    .option('--volume <path[:size]>', 'a volume for the app mounted at PATH (e.g. /data:1GiB; default size 1GiB): kept across sleeps, thaws and deploys')
    .action(async (args: string[], opts: { name: string; env: string[]; idleTimeout?: number; wakeTimeout?: number; image?: string; port?: number; registryAuth?: string; egress?: string; egressAllow: string[]; build?: boolean; volume?: string }, cmd: Command) => {
      validateAppName(opts.name);
      const egress = opts.egress !== undefined || opts.egressAllow.length ? parseEgress(opts.egress, opts.egressAllow) : undefined;
      if (opts.volume !== undefined) parseVolumeArg(opts.volume); // refused before any upload
      const env = parseEnvArgs(opts.env);
      // Commander gives the operands before and after `--` alike: with --image only a command after `--` is allowed.
      const raw = (cmd.parent as (Command & { rawArgs?: string[] }) | null)?.rawArgs ?? [];
      if (opts.image !== undefined && args.length > 0 && !raw.includes('--')) {
        throw new ThawError('INVALID_REQUEST', 'with --image, pass no folder; a command for the image goes after --', { details: { args } });
      }
      const source = await deploySource(args, opts);
      const { json } = ctx.globals(cmd);
      await ctx.withApi(cmd, async (api, instance) => {
        let body: Readable | ImageDeployBody;
        if (typeof source === 'string') {
          body = await packAppStream(source);
          if (!json) ctx.info(`uploading ${source} to ${opts.name} (streamed)`);
        } else {
          body = source;
          if (!json) ctx.info(`deploying image ${source.image} to ${opts.name}`);
        }
        const result = await api.deploy(opts.name, body, {
          ...(Object.keys(env).length > 0 ? { env } : {}),
          ...(opts.idleTimeout !== undefined ? { idleTimeoutS: opts.idleTimeout } : {}),
          ...(opts.wakeTimeout !== undefined ? { wakeTimeoutS: opts.wakeTimeout } : {}),
          ...(egress ? { egress } : {}),
          ...(opts.build ? { build: true } : {}),
          ...(opts.volume !== undefined ? { volume: opts.volume } : {}),
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
