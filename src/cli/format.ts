// Human output: tables (cli-table3, no colours), sizes, durations, errors.
import Table from 'cli-table3';
import { ThawError, asThawError } from '../errors.ts';

export function table(head: string[], rows: (string | number | null | undefined)[][]): string {
  const t = new Table({ head, style: { head: [], border: [], compact: true } });
  for (const r of rows) t.push(r.map((c) => (c === null || c === undefined ? '-' : String(c))));
  return `${t.toString()}\n`;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function ms(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  return n >= 10_000 ? `${(n / 1000).toFixed(1)}s` : `${Math.round(n)}ms`;
}

/** Exit codes: 0 ok, 1 user error, 2 system error, 3 not running, 64 usage. */
export const EXIT = { OK: 0, USER: 1, SYSTEM: 2, NOT_RUNNING: 3, USAGE: 64 } as const;

export function exitCodeFor(err: ThawError): number {
  if (err.code === 'NOT_RUNNING') return EXIT.NOT_RUNNING;
  return err.kind === 'user' ? EXIT.USER : EXIT.SYSTEM;
}

/** `error CODE: message` and `hint: ...` lines for stderr. */
export function formatError(err: unknown): { text: string; code: number } {
  const te: ThawError = asThawError(err);
  return { text: `error ${te.code}: ${te.message}\nhint: ${te.hint}\n`, code: exitCodeFor(te) };
}
