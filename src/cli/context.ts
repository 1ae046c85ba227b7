// What every CLI command gets: output sinks, global flags, and a connected API
// client (closed after the command). Injectable so tests run the CLI in-process.
import type { Command } from 'commander';
import type { ThawApi } from '../api/client.ts';
import { dataDirFrom, type Instance } from './instance.ts';

export interface CliDeps {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  /** Connect to the instance of `dataDir` (default: readInstance + ApiClient). */
  connect: (dataDir: string) => Promise<{ api: ThawApi; instance: Instance }>;
  /** Load one of the host modules (up, node, doctor) by URL. */
  importModule: (url: string) => Promise<unknown>;
  env: NodeJS.ProcessEnv;
}

export interface GlobalOpts {
  dataDir: string;
  json: boolean;
}

export class Ctx {
  /** Set by a command that finished without throwing but wants a non-zero exit (e.g. doctor). */
  exitCode = 0;

  constructor(readonly deps: CliDeps) {}

  globals(cmd: Command): GlobalOpts {
    const o = cmd.optsWithGlobals<{ data?: string; json?: boolean }>();
    return { dataDir: dataDirFrom({ data: o.data }, this.deps.env), json: o.json === true };
  }

  out(s: string): void {
    this.deps.stdout(s.endsWith('\n') ? s : `${s}\n`);
  }

  info(s: string): void {
    this.deps.stderr(s.endsWith('\n') ? s : `${s}\n`);
  }

  /** `--json`: the raw JSON; else the human text. */
  print(cmd: Command, json: unknown, human: () => string): void {
    this.out(this.globals(cmd).json ? JSON.stringify(json, null, 2) : human());
  }

  async withApi<T>(cmd: Command, fn: (api: ThawApi, instance: Instance) => Promise<T>): Promise<T> {
    const { api, instance } = await this.deps.connect(this.globals(cmd).dataDir);
    try {
      return await fn(api, instance);
    } finally {
      await api.close();
    }
  }
}
