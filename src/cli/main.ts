// The `thaw` CLI. createProgram() builds the commander tree over injectable
// deps (tests run it in-process with a fake API); run() maps the outcome to an
// exit code: 0 ok, 1 user error, 2 system error, 3 not running, 64 usage.
import { Command, CommanderError } from 'commander';
import { ApiClient } from '../api/client.ts';
import { Ctx, type CliDeps } from './context.ts';
import { EXIT, formatError } from './format.ts';
import { readInstance } from './instance.ts';
import { registerApps } from './apps.ts';
import { registerDashboard } from './dashboard.ts';
import { registerDeploy } from './deploy.ts';
import { registerEnv } from './env.ts';
import { registerHost } from './host.ts';
import { registerLifecycle } from './lifecycle.ts';
import { registerVolumes } from './volumes.ts';

export const defaultDeps = (): CliDeps => ({
  stdout: (s) => void process.stdout.write(s),
  stderr: (s) => void process.stderr.write(s),
  connect: async (dataDir) => {
    const instance = await readInstance(dataDir);
    const trust = instance.apiFingerprint ? { trust: { fingerprint: instance.apiFingerprint } } : {};
    return { api: new ApiClient({ url: instance.apiUrl, token: instance.token, ...trust }), instance };
  },
  importModule: (url) => import(url),
  env: process.env,
});

export function createProgram(ctx: Ctx): Command {
  const program = new Command('thaw')
    .description('Self-hosted app host: idle apps are deleted and thawed from a memory+disk seed on the next request.')
    .option('--data <dir>', 'data folder of the instance (default $THAW_DATA or ~/.thaw)')
    .option('--json', 'print raw JSON instead of tables')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => ctx.deps.stdout(s),
      writeErr: (s) => ctx.deps.stderr(s),
    })
    .showSuggestionAfterError()
    .helpCommand(true);
  registerHost(program, ctx);
  registerDeploy(program, ctx);
  registerApps(program, ctx);
  registerEnv(program, ctx);
  registerLifecycle(program, ctx);
  registerDashboard(program, ctx);
  registerVolumes(program, ctx);
  return program;
}

/** Runs one CLI invocation (`argv` as in process.argv) and returns its exit code. */
export async function run(argv: string[], deps: Partial<CliDeps> = {}): Promise<number> {
  const ctx = new Ctx({ ...defaultDeps(), ...deps });
  const program = createProgram(ctx);
  try {
    await program.parseAsync(argv);
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      const ok = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0;
      return ok ? EXIT.OK : EXIT.USAGE;
    }
    const { text, code } = formatError(err);
    ctx.deps.stderr(text);
    return code;
  }
}

export async function main(argv: string[] = process.argv): Promise<void> {
  process.exitCode = await run(argv);
}
