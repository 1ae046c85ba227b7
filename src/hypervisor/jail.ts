// How a VMM process is started: inside its VM's network namespace (nsenter),
// as the VM's unprivileged uid with no capabilities and no way to gain any
// (setpriv), dying with the node (parent-death signal). QEMU's own seccomp
// filter is switched on in its arguments (SANDBOX).
import { existsSync } from 'node:fs';
import type { VmSpec } from './types.ts';

/** QEMU's seccomp sandbox: no obsolete syscalls, no set*uid, no fork/exec, no scheduler/affinity changes. */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
const NSENTER = ['/usr/bin/nsenter', '/bin/nsenter'].find((p) => existsSync(p)) ?? 'nsenter';

/**
 * The argv that starts `vmm` (binary + args) for this VM. The parent-death
 * signal is set last, after the uid change (a credential change clears it),
 * so a SIGKILLed node leaves no VMM running.
 */
export function vmmCommand(spec: Pick<VmSpec, 'tap' | 'jail'>, vmm: string[]): string[] {
  let argv = vmm;
  if (SETPRIV) {
    const drop = spec.jail
      ? ['--reuid', String(spec.jail.uid), '--regid', String(spec.jail.gid), '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs']
      : [];
    argv = [SETPRIV, ...drop, '--pdeathsig', 'KILL', '--', ...argv];
  }
  if (spec.tap) argv = [NSENTER, `--net=/run/netns/${spec.tap.netns}`, '--', ...argv];
  return argv;
}
