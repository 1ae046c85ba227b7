// Lifecycle benchmark, runnable alone:
//   node --import tsx bench/lifecycle.ts [--thaws 5] [--json]
// The measuring code lives in src/bench/lifecycle.ts (also behind `thaw bench lifecycle`).
import { parseArgs } from 'node:util';
import { runBenchLifecycle } from '../src/bench/lifecycle.ts';

const { values } = parseArgs({ options: { thaws: { type: 'string', default: '5' }, json: { type: 'boolean', default: false } } });
runBenchLifecycle({ thaws: Number(values.thaws), json: values.json }).catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
