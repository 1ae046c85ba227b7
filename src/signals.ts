// Foreground commands (`thaw up`, `thaw node`): run until SIGINT or SIGTERM,
// then stop cleanly (VMs deleted) before resolving.
import type { Logger } from 'pino';

export function untilSignal(log: Logger, message: string, stop: () => Promise<void>): Promise<void> {
  return new Promise<void>((resolve) => {
    const onSig = (sig: string) => {
      log.info({ sig }, message);
      void stop().then(resolve, resolve);
    };
    process.once('SIGINT', onSig);
    process.once('SIGTERM', onSig);
  });
}
