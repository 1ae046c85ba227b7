// `thaw logs [--follow]`: the app's log text, read from its node again every
// second while following; only what is new is yielded (a log that shrank, a
// new VM's, starts over).

/** Yield the text `read()` gives, then (following) what was added, once a second until `signal` aborts. */
export function followLogs(read: () => Promise<string>, opts: { follow: boolean; signal?: AbortSignal }): AsyncIterable<string> {
  return (async function* () {
    let sent = 0;
    for (;;) {
      const text = await read();
      if (text.length > sent) {
        yield text.slice(sent);
        sent = text.length;
      } else if (text.length < sent) sent = text.length;
      if (!opts.follow || opts.signal?.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
      if (opts.signal?.aborted) return;
    }
  })();
}
