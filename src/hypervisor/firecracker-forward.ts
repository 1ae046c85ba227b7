// 127.0.0.1:hostPort → guestIp:guestPort for a Firecracker VM on a TAP, so that
// appAddress means what it means under QEMU (its user-mode `hostfwd`). A plain
// TCP relay in the node process; closed by destroy().
import net from 'node:net';

export interface Forward {
  close(): Promise<void>;
}

export function forwardPort(bindHost: string, hostPort: number, guestIp: string, guestPort: number): Promise<Forward> {
  const conns = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    const g = net.connect(guestPort, guestIp);
    for (const s of [c, g]) {
      conns.add(s);
      s.on('error', () => {});
      s.on('close', () => conns.delete(s));
    }
    c.pipe(g).pipe(c);
    c.on('close', () => g.destroy());
    g.on('close', () => c.destroy());
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(hostPort, bindHost, () =>
      resolve({
        close: () =>
          new Promise<void>((r) => {
            for (const s of conns) s.destroy();
            srv.close(() => r());
          }),
      }),
    );
  });
}
