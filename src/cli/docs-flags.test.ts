// The README and docs/CLI.md cannot name a command or flag the CLI lacks:
// every `thaw …` command line in their code blocks and inline code spans is
// resolved against the real commander tree, and every --flag on it must be an
// option of that command (or a global one).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import type { Command } from 'commander';
import { Ctx } from './context.ts';
import { createProgram, defaultDeps } from './main.ts';

interface CommandLine {
  file: string;
  line: number;
  text: string;
}

/** `thaw …` lines of sh code blocks (with their `\`-continued and indented usage lines) and inline `thaw …` spans. */
export function commandLines(file: string, md: string): CommandLine[] {
  const out: CommandLine[] = [];
  const lines = md.split('\n');
  let inCode = false;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (/^\s*```/.test(l)) {
      inCode = !inCode;
      continue;
    }
    if (inCode) {
      const m = /(?:^|\s|\$ )(?:npx |node bin\/)?thaw(?:\.js)? (.*)$/.exec(l);
      if (!m || l.trimStart().startsWith('#')) continue;
      let text = m[1]!;
      let j = i;
      // A line ending in `\`, or the indented usage lines under it, belong to the same command.
      while (j + 1 < lines.length && (/\\\s*$/.test(lines[j]!) || /^\s{8,}[[-]/.test(lines[j + 1]!))) text += ` ${lines[++j]!.trim()}`;
      out.push({ file, line: i + 1, text: text.replace(/\s#\s.*$/, '').replace(/\\/g, ' ') });
      i = j;
    } else {
      for (const s of l.matchAll(/`(?:npx )?thaw ([^`]+)`/g)) out.push({ file, line: i + 1, text: s[1]! });
    }
  }
  return out;
}

/** Resolves the (sub)command a line names; null when the first word names none. */
function resolve(program: Command, words: string[]): Command | null {
  let cmd: Command = program;
  for (const w of words) {
    const sub = cmd.commands.find((c) => c.name() === w || c.aliases().includes(w));
    if (!sub) break;
    cmd = sub;
  }
  return cmd === program ? null : cmd;
}

function knownFlags(cmd: Command): Set<string> {
  const flags = new Set<string>(['--help']);
  for (let c: Command | null = cmd; c; c = c.parent) for (const o of c.options) if (o.long) flags.add(o.long);
  return flags;
}

test('every thaw command and --flag named in README.md and docs/CLI.md exists in the CLI', async () => {
  const program = createProgram(new Ctx(defaultDeps()));
  const lines = (
    await Promise.all(['README.md', 'docs/CLI.md'].map(async (f) => commandLines(f, await readFile(new URL(`../../${f}`, import.meta.url), 'utf8'))))
  ).flat();
  assert.ok(lines.length >= 15, `found only ${lines.length} command lines`);
  const problems: string[] = [];
  let checked = 0;
  for (const l of lines) {
    // `apps | nodes | env set|unset|list NAME` lists several commands: check each.
    for (const part of l.text.split(/\s\|\s/)) {
      const words = part.trim().split(/\s+/).map((w) => w.replace(/^\[|\]$/g, ''));
      const names = words.filter((w) => /^[a-z][a-z-]*$/.test(w)).slice(0, 2);
      if (!names.length) continue; // `thaw ...`: prose, not a command
      const cmd = resolve(program, names);
      if (!cmd) {
        problems.push(`${l.file}:${l.line}: \`thaw ${part.trim()}\` names no command`);
        continue;
      }
      const flags = knownFlags(cmd);
      for (const w of words) {
        if (w === '--') break; // the rest is the app's command
        const flag = /^(--[a-z0-9][a-z0-9-]*)/.exec(w)?.[1];
        if (!flag) continue;
        checked++;
        if (!flags.has(flag)) problems.push(`${l.file}:${l.line}: \`thaw ${cmd.name()}\` has no ${flag}`);
      }
    }
  }
  assert.deepEqual(problems, []);
  assert.ok(checked >= 30, `checked only ${checked} flags`);
});

test('the checker catches a flag the CLI lacks', () => {
  const program = createProgram(new Ctx(defaultDeps()));
  const [l] = commandLines('x.md', '```sh\nnpx thaw up --host 0.0.0.0 \\\n   --no-such-flag\n```\n');
  assert.equal(l!.text.includes('--no-such-flag'), true);
  const up = resolve(program, ['up'])!;
  assert.equal(knownFlags(up).has('--host'), true);
  assert.equal(knownFlags(up).has('--no-such-flag'), false);
  assert.equal(knownFlags(resolve(program, ['node'])!).has('--control-fingerprint'), true);
});
