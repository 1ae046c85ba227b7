// App lifecycle: one State union and one exhaustive transition table.
// Every change of an app's state goes through Store.transition(), a single
// compare-and-set write: UPDATE ... SET state = to WHERE name = ? AND state = from.

export const STATES = ['created', 'building', 'asleep', 'waking', 'running', 'sleeping', 'failed', 'deleting'] as const;
export type State = (typeof STATES)[number];

/**
 * created   app exists, nothing deployed yet
 * building  a deploy is turning an app folder into a disk image
 * asleep    no VM anywhere; next request thaws the seed, or cold-boots when there is none
 * waking    a node is thawing or cold-booting the app
 * running   a VM serves the app
 * sleeping  the VM is being baked into a seed (first idle) and deleted
 * failed    the last build or wake failed; a new deploy or wake retries
 * deleting  the app, its VM, images and seeds are being removed
 */
export const TRANSITIONS: { readonly [S in State]: readonly State[] } = {
  created: ['building', 'deleting'],
  building: ['asleep', 'failed', 'deleting'],
  asleep: ['waking', 'building', 'deleting'],
  waking: ['running', 'failed', 'asleep', 'deleting'],
  running: ['sleeping', 'asleep', 'failed', 'deleting'],
  sleeping: ['asleep', 'failed', 'deleting'],
  failed: ['building', 'waking', 'asleep', 'deleting'],
  deleting: [],
};

export function canTransition(from: State, to: State): boolean {
  return TRANSITIONS[from].includes(to);
}

export function isState(s: string): s is State {
  return (STATES as readonly string[]).includes(s);
}
