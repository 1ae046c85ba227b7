// Undo stack for multi-step operations: every acquired resource pushes its
// undo; on failure they run in reverse order. `commit()` forgets them all.
export class UndoStack {
  private readonly steps: { label: string; fn: () => unknown | Promise<unknown> }[] = [];

  push(label: string, fn: () => unknown | Promise<unknown>): void {
    this.steps.push({ label, fn });
  }

  /** The operation succeeded: keep every resource. */
  commit(): void {
    this.steps.length = 0;
  }

  /** Run every undo in reverse; errors are collected, never thrown, so all undos run. */
  async unwind(): Promise<Error[]> {
    const errors: Error[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (err) {
        errors.push(new Error(`undo "${step.label}" failed: ${(err as Error).message}`, { cause: err }));
      }
    }
    return errors;
  }

  /** Run `body` with this stack; unwind on throw and rethrow the original error. */
  static async run<T>(body: (undo: UndoStack) => Promise<T>): Promise<T> {
    const undo = new UndoStack();
    try {
      const out = await body(undo);
      undo.commit();
      return out;
    } catch (err) {
      await undo.unwind();
      throw err;
    }
  }
}
