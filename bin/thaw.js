#!/usr/bin/env node
// Launcher: registers tsx so the TypeScript sources run directly, then hands
// argv to the CLI. Exit codes are documented in docs/CLI.md.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv);
