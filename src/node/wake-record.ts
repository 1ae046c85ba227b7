// The record of a wake that ended before it started (dropped from its node's
// admission queue, the node shutting down): the error carries it in
// details.record, so the control plane records every wake.
import { randomUUID } from 'node:crypto';
import { ThawError } from '../errors.ts';
import type { WakeRow } from '../store/types.ts';
import type { NodeWakeRequest } from '../wire/node.ts';

/** A wake that ended before it started (dropped from the queue): the error carries its record. */
export function withRecord(node: string, req: NodeWakeRequest, e: ThawError, r: { outcome: NonNullable<WakeRow['outcome']>; queuedMs: number }): ThawError {
  const record: WakeRow = {
    id: randomUUID(), app: req.app, at: new Date().toISOString(), wallMs: r.queuedMs, bootMode: req.seed ? 'snapshot' : 'cold', bootMs: 0, gateMs: null,
    appStartMs: 0, pid: null, fsErrors: 0, fallbackReason: `${e.code}: ${e.message}`.slice(0, 1000), node, seedSource: req.seed ? 'local' : 'none',
    placement: req.placement ?? null, queuedMs: r.queuedMs, seedOutcome: req.seed ? `kept:${e.code === 'SHUTTING_DOWN' ? 'shutdown' : 'cancelled'}` : 'none', outcome: r.outcome, stages: {},
  };
  return new ThawError(e.code, e.message, { cause: e, details: { ...e.details, record } });
}
