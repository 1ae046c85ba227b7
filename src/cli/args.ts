// Commander argument parsers; a bad value is a usage error (exit 64).
import { InvalidArgumentError } from 'commander';

export function intArg(v: string): number {
  if (!/^\d+$/.test(v.trim())) throw new InvalidArgumentError('expected a non-negative integer');
  return Number(v);
}
