// How a deploy's program is started inside the guest: decided on the host when
// the image is built (from package.json for a Node folder, from the image
// config for an OCI image), stored with the deploy, carried in every wake
// request and handed to the agent in `start_app`. The agent reads no file to
// decide how to start the app.
import { z } from 'zod';

/** Strings the guest agent can carry (C strings): no NUL byte. */
const CStr = z.string().regex(/^[^\0]*$/, 'must not contain NUL');

export const RunConfig = z.object({
  /** argv[0] is a path in the image, or a name looked up in env.PATH. */
  argv: z.array(CStr.min(1)).min(1).max(4096),
  /** Absolute working folder inside the image. */
  cwd: CStr.max(4096).startsWith('/'),
  uid: z.number().int().min(0).max(2 ** 31 - 1),
  gid: z.number().int().min(0).max(2 ** 31 - 1),
  /** TCP port the app listens on inside the guest (also $PORT). */
  port: z.number().int().min(1).max(65535).default(8080),
  /** The image's own env; the app's env (thaw env, --env) wins over it, and PORT over both. */
  env: z.record(z.string().regex(/^[^=\0]+$/, 'env names have no "=" or NUL'), CStr),
  /** What the VM may reach (src/network/egress.ts); absent: the internet, no private ranges. */
  egress: z
    .object({
      mode: z.enum(['internet', 'none']),
      allow: z.array(z.object({ cidr: z.string().regex(/^\d+\.\d+\.\d+\.\d+\/\d+$/), port: z.number().int().min(1).max(65535).optional() })).max(32),
    })
    .optional(),
});
export type RunConfig = z.infer<typeof RunConfig>;

/** The full environment the app starts with: image env < app env < PORT. */
export function appEnvironment(run: RunConfig, appEnv: Record<string, string>): Record<string, string> {
  return { ...run.env, ...appEnv, PORT: String(run.port) };
}
