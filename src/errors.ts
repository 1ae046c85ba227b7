// One error base class for all of Thaw. Every error carries a stable `code`
// (listed once, below, and documented in docs/ERRORS.md), a `kind` that says
// whether the caller (user) or Thaw/the host (system) is at fault, an HTTP
// status for the control API, and an optional `cause`.

export type ErrorKind = 'user' | 'system';

interface CodeInfo {
  kind: ErrorKind;
  status: number;
  hint: string;
}

/** Every error code Thaw can produce. Adding a code here is the only way to create one. */
export const ERROR_CODES = {
  // --- user input -----------------------------------------------------------
  INVALID_APP_NAME: { kind: 'user', status: 400, hint: 'Use 1-40 chars: lowercase letters, digits and dashes, starting with a letter.' },
  INVALID_REQUEST: { kind: 'user', status: 400, hint: 'Check the request body against the API schema in docs/API.md.' },
  INVALID_ENV_KEY: { kind: 'user', status: 400, hint: 'Env keys match [A-Za-z_][A-Za-z0-9_]* and are at most 128 chars.' },
  ENV_VALUE_TOO_LARGE: { kind: 'user', status: 400, hint: 'Env values are limited to 32 KiB each, 256 KiB in total.' },
  APP_DIR_MISSING: { kind: 'user', status: 400, hint: 'Pass a readable folder that contains package.json.' },
  APP_NO_PACKAGE_JSON: { kind: 'user', status: 400, hint: 'The app folder needs a package.json at its root.' },
  APP_NO_START_SCRIPT: { kind: 'user', status: 400, hint: 'Add "scripts": {"start": "node server.js"} to package.json.' },
  APP_SYMLINK_ESCAPES: { kind: 'user', status: 400, hint: 'Symlinks must point inside the app folder.' },
  APP_TOO_LARGE: { kind: 'user', status: 413, hint: 'Shrink the app (drop dev dependencies) or raise the disk image limit (`thaw up --max-disk-mib`).' },
  BUILD_FAILED: { kind: 'user', status: 400, hint: 'A build step (install, the app\'s install scripts, build, prune) failed; its log\'s tail is in the message and details.tail. The running deploy is untouched.' },
  BUILD_TIMEOUT: { kind: 'user', status: 400, hint: 'The build ran over its time limit; make the build faster or deploy with node_modules and the build output shipped.' },
  BUILD_OUT_OF_MEMORY: { kind: 'user', status: 400, hint: 'The build ran out of its memory limit; make the build leaner or deploy with the build output shipped.' },
  BUILD_PNP_UNSUPPORTED: { kind: 'user', status: 400, hint: 'Yarn Plug\'n\'Play is not supported: set `nodeLinker: node-modules` in .yarnrc.yml.' },
  BUILD_PM_UNSUPPORTED: { kind: 'user', status: 400, hint: 'This package manager is not built by Thaw yet: install locally and deploy with node_modules.' },
  NODE_VERSION_UNSATISFIABLE: { kind: 'user', status: 400, hint: 'engines.node allows none of the pinned Node versions; the message names them. Widen the range.' },
  NODE_ABI_MISMATCH: { kind: 'user', status: 400, hint: 'node_modules holds native modules built for another Node ABI; deploy with --build to rebuild them, or build them with the Node version the app runs on.' },
  TARBALL_INVALID: { kind: 'user', status: 400, hint: 'Upload a gzip or plain tar of the app folder (tar czf app.tgz -C DIR .).' },
  TARBALL_TOO_LARGE: { kind: 'user', status: 413, hint: 'The upload is over the limit (`thaw up --max-upload-mib`, 4096 by default); leave files out with .thawignore.' },
  TARBALL_UNSAFE_ENTRY: { kind: 'user', status: 400, hint: 'Entries must be relative paths without "..", and only files, folders and inner symlinks.' },
  IMAGE_REF_INVALID: { kind: 'user', status: 400, hint: 'Use HOST[:PORT]/REPO[:TAG|@sha256:DIGEST], a Docker Hub name (alpine, user/app:tag), oci-archive:PATH, docker-archive:PATH or oci:DIR[:TAG].' },
  IMAGE_NOT_FOUND: { kind: 'user', status: 404, hint: 'Check the image name and tag (`skopeo list-tags docker://HOST/REPO` lists tags), or the archive path and tag.' },
  REGISTRY_UNREACHABLE: { kind: 'user', status: 502, hint: 'Check the registry host, port and network; registries other than localhost, 127.0.0.1 and [::1] must serve HTTPS with a trusted certificate.' },
  REGISTRY_AUTH_FAILED: { kind: 'user', status: 403, hint: 'Pass registry credentials (USER:PASSWORD) or log in so ~/.docker/config.json holds them; some registries also answer this for a repository that does not exist.' },
  IMAGE_DIGEST_MISMATCH: { kind: 'user', status: 502, hint: 'The content does not match its digest (corrupted or tampered registry or archive); push the image again or check the pinned digest.' },
  IMAGE_PLATFORM_UNSUPPORTED: { kind: 'user', status: 400, hint: 'Thaw runs linux/amd64 images; build or push the image for that platform (docker buildx build --platform linux/amd64).' },
  IMAGE_NO_COMMAND: { kind: 'user', status: 400, hint: 'The image config has no Entrypoint or Cmd: pass a command after `--`, or set CMD/ENTRYPOINT in the image.' },
  IMAGE_USER_UNKNOWN: { kind: 'user', status: 400, hint: "The image's User names a user or group missing from its /etc/passwd or /etc/group; use a numeric uid[:gid] or add the entry." },
  IMAGE_INVALID: { kind: 'user', status: 400, hint: 'Pass an OCI or Docker image: a registry reference, an oci-archive, a docker-archive (what `docker save` writes) or an OCI layout folder.' },
  IMAGE_PATH_CONFLICT: { kind: 'user', status: 400, hint: 'Thaw mounts /proc, /sys, /dev, /run, /tmp and /var/lib/thaw in every guest: the image must hold them as folders or not at all.' },
  IMAGE_UNSAFE_LAYER: { kind: 'user', status: 400, hint: 'A layer holds an entry that escapes the root (absolute path, ".." component, or a link pointing outside); rebuild the image without it.' },
  EGRESS_INVALID: { kind: 'user', status: 400, hint: 'Use --egress internet or none, and --egress-allow A.B.C.D[/LEN][:PORT] (IPv4, prefix /8 or longer).' },
  APP_NOT_FOUND: { kind: 'user', status: 404, hint: 'List apps with `thaw apps`.' },
  APP_EXISTS: { kind: 'user', status: 409, hint: 'Pick another name or delete the app first.' },
  APP_NOT_DEPLOYED: { kind: 'user', status: 409, hint: 'Deploy the app first: `thaw deploy DIR --name NAME`.' },
  APP_BUSY: { kind: 'user', status: 409, hint: 'Another operation on this app is in progress; retry shortly.' },
  UNAUTHORIZED: { kind: 'user', status: 401, hint: 'Pass the token from DATA/token as "Authorization: Bearer TOKEN" (the CLI does this for you).' },
  NOT_FOUND: { kind: 'user', status: 404, hint: 'Check the URL.' },
  METHOD_NOT_ALLOWED: { kind: 'user', status: 405, hint: 'The router is not a forward proxy: CONNECT is not supported; send requests to NAME.<domain> directly.' },
  REQUEST_TIMEOUT: { kind: 'user', status: 408, hint: 'The client sent its request too slowly (see the router timeouts `thaw up --headers-timeout/--request-timeout`); retry on a new connection.' },
  HEADERS_TOO_LARGE: { kind: 'user', status: 431, hint: 'The request headers exceed the limit (16 KiB by default); send fewer or smaller headers.' },
  UPSTREAM_TIMEOUT: { kind: 'user', status: 504, hint: 'The app did not answer within the upstream timeout (`thaw up --upstream-headers-timeout/--upstream-body-timeout`); make it answer sooner or raise the timeout.' },
  LOGIN_CODE_INVALID: { kind: 'user', status: 401, hint: 'Dashboard login codes work once and for 5 minutes: run `thaw dashboard` for a fresh URL.' },
  SESSION_REQUIRED: { kind: 'user', status: 401, hint: 'Sign in to the dashboard through the URL `thaw dashboard` prints.' },
  CSRF_TOKEN_INVALID: { kind: 'user', status: 403, hint: 'Reload the dashboard: actions carry the session\'s x-csrf-token header.' },
  TLS_CONFIG_INVALID: { kind: 'user', status: 400, hint: 'Check --tls-cert/--tls-key (PEM files, the key matching the certificate) and fingerprints (sha256: and 32 hex bytes, as `thaw up` prints them).' },
  TLS_FINGERPRINT_MISMATCH: { kind: 'user', status: 502, hint: 'The peer is not the one the fingerprint names: check --control-fingerprint against what `thaw up` printed (or a man in the middle is answering).' },
  TLS_UNTRUSTED: { kind: 'user', status: 502, hint: 'The peer\'s certificate does not verify: pass the cluster CA (--control-ca DATA/tls/ca.crt) or its fingerprint (--control-fingerprint), and reach it by a name or address the certificate lists.' },
  NODE_ADVERTISE_UNREACHABLE: { kind: 'user', status: 400, hint: 'The control plane must reach the node at the URL it advertises: pass --advertise URL (or --host ADDR) with an address of this host the control plane can route to.' },
  VOLUME_INVALID: { kind: 'user', status: 400, hint: 'Use --volume /PATH[:SIZE]: an absolute path other than / (no whitespace, control characters, backslashes, . or .. parts, symlinks; at most 255 bytes) that is not, holds or lies in a path Thaw manages (/proc, /sys, /dev, /run, /tmp, /etc, /var/lib/thaw, /bin, /sbin, /lib, /usr) and does not hide the app\'s working folder (/app/data is fine, /app is not), and a size from 16MiB to 1TiB (default 1GiB).' },
  VOLUME_CONFLICT: { kind: 'user', status: 409, hint: 'The app already has a volume at another path, or the change needs the app asleep; use `thaw volume rm|resize` (resizing only grows).' },
  VOLUME_NOT_FOUND: { kind: 'user', status: 404, hint: 'The app has no volume; deploy it with --volume /PATH[:SIZE]. List volumes with `thaw volumes`.' },
  VOLUME_BACKUP_UNAVAILABLE: { kind: 'user', status: 409, hint: 'Volume backups need object storage (--s3-bucket on the control plane and the nodes), and a backup of the app (one is made at every sleep of an app with a volume); `thaw sleeps APP` shows them.' },
  VOLUME_BACKUP_NOT_FOUND: { kind: 'user', status: 404, hint: 'No such backup of the app: give a sleep id whose record names a stored backup (`thaw sleeps APP`), or leave --backup out for the newest.' },
  VOLUME_IN_USE: { kind: 'user', status: 409, hint: 'The app has a volume: delete it with the app by `thaw rm NAME --delete-volume`.' },
  // --- system: host, hypervisor, guest ---------------------------------------
  BUILD_SANDBOX_UNAVAILABLE: { kind: 'system', status: 500, hint: 'Builds need bubblewrap and a memory cgroup: run `npm run setup` (apt-get install bubblewrap) as root.' },
  HOST_MISSING_TOOL: { kind: 'system', status: 500, hint: 'Run `npm run setup` (installs QEMU, the guest kernel, busybox, e2fsprogs, zstd).' },
  ASSETS_BUILD_FAILED: { kind: 'system', status: 500, hint: 'See the build log; run `npm run setup` and retry.' },
  IMAGE_BUILD_FAILED: { kind: 'system', status: 500, hint: 'mkfs.ext4 failed; check free disk space.' },
  IMAGE_PULL_FAILED: { kind: 'system', status: 502, hint: 'skopeo failed in an unexpected way; see its output in the error details.' },
  IMAGE_UNPACK_FAILED: { kind: 'system', status: 500, hint: 'umoci could not unpack the image; see its output in the error details and check free disk space in the image cache.' },
  NETWORK_SETUP_FAILED: { kind: 'system', status: 500, hint: 'Creating the VM network namespace, veth, TAP or nftables rules failed; see the message (run `thaw doctor`: needs root, /dev/net/tun, iproute2 and nftables).' },
  VM_START_FAILED: { kind: 'system', status: 500, hint: 'QEMU exited during start; see the VM console log named in the error.' },
  VM_TIMEOUT: { kind: 'system', status: 504, hint: 'The VM did not become ready in time; see its console log.' },
  VM_GONE: { kind: 'system', status: 500, hint: 'The VM process exited unexpectedly.' },
  QMP_ERROR: { kind: 'system', status: 500, hint: 'QEMU refused a QMP command; see the error text.' },
  HYPERVISOR_UNSUPPORTED: { kind: 'system', status: 500, hint: 'This driver cannot run on this host.' },
  AGENT_TIMEOUT: { kind: 'system', status: 504, hint: 'The guest made no progress (no answer, no CPU time) for a whole deadline window: it is dead, not slow.' },
  AGENT_PROTOCOL: { kind: 'system', status: 500, hint: 'The guest agent sent a message that does not match the schema.' },
  AGENT_ERROR: { kind: 'system', status: 500, hint: 'The guest agent reported a failure; see the message.' },
  APP_CRASHED: { kind: 'user', status: 502, hint: 'The app exited; read its logs with `thaw logs NAME`.' },
  APP_START_TIMEOUT: { kind: 'user', status: 504, hint: 'The app did not listen on $PORT in time; check it binds 0.0.0.0:$PORT.' },
  SEED_MISSING: { kind: 'system', status: 500, hint: 'No seed; the wake cold-boots.' },
  SEED_CORRUPT: { kind: 'system', status: 500, hint: 'A seed file does not match its manifest; it is discarded.' },
  SEED_MISMATCH: { kind: 'system', status: 500, hint: 'The seed was made by another kernel, initramfs or driver; it is discarded.' },
  GATE_FAILED: { kind: 'system', status: 500, hint: 'The liveness gate found a disk that does not match the memory image.' },
  BAKE_FAILED: { kind: 'system', status: 500, hint: 'Baking the seed failed; the app is put to sleep without a seed.' },
  WAKE_FAILED: { kind: 'system', status: 502, hint: 'Neither a thaw nor a cold boot produced a healthy app.' },
  WAKE_TIMEOUT: { kind: 'system', status: 503, hint: 'The app is still waking; retry after the Retry-After seconds.' },
  WAKE_DEADLINE: { kind: 'system', status: 503, hint: 'The wake ran past the overall wake deadline (the node is overloaded); its VM was deleted and its seed kept. Retry after the Retry-After seconds.' },
  WAKE_CANCELLED: { kind: 'system', status: 503, hint: 'The wake was still queued when nobody waited for it any more; it was dropped and its seed kept.' },
  NODE_BUSY: { kind: 'system', status: 503, hint: 'The node runs its most concurrent wakes and this one is still queued; retry after the Retry-After seconds (or raise --max-concurrent-wakes / add a node).' },
  TOO_MANY_HELD: { kind: 'system', status: 503, hint: 'Too many requests are waiting for this app to wake; retry shortly.' },
  S3_ERROR: { kind: 'system', status: 502, hint: 'Object storage failed; check --s3-endpoint and credentials.' },
  STORE_ERROR: { kind: 'system', status: 500, hint: 'The state database failed.' },
  NODE_UNREACHABLE: { kind: 'system', status: 502, hint: 'A node agent did not answer; the wake is retried on another node. Check `thaw nodes`.' },
  CONTROL_UNREACHABLE: { kind: 'system', status: 502, hint: 'The node could not reach the control plane (to fetch the app\'s image); the wake is retried on another node. Check the node\'s --control URL and the network between them.' },
  VOLUME_BUSY: { kind: 'system', status: 409, hint: 'The volume is mounted by another VM (its lease is held); retry once that VM has stopped.' },
  VOLUME_UNAVAILABLE: { kind: 'system', status: 503, hint: "The volume's home node is down; bring it back (a volume lives on one node)." },
  VOLUME_BACKUP_CORRUPT: { kind: 'system', status: 502, hint: 'The backup\'s bytes are not the ones recorded (SHA-256 mismatch or an archive tar/zstd refuse); nothing was replaced. Restore an older backup with --backup ID.' },
  VOLUME_CHECK_FAILED: { kind: 'system', status: 500, hint: 'e2fsck could not repair the volume file, or creating or growing it failed; see the message and run e2fsck -f on the file by hand.' },
  NO_NODE: { kind: 'system', status: 503, hint: 'No live node with capacity; start one with `thaw node`.' },
  NOT_RUNNING: { kind: 'user', status: 400, hint: 'Start Thaw with `thaw up` (same --data folder).' },
  SHUTTING_DOWN: { kind: 'system', status: 503, hint: 'Thaw is shutting down; retry against the new instance.' },
  INTERNAL: { kind: 'system', status: 500, hint: 'A bug in Thaw; please report it with the log.' },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class ThawError extends Error {
  readonly code: ErrorCode;
  readonly kind: ErrorKind;
  readonly status: number;
  readonly hint: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ThawError';
    const info: CodeInfo = ERROR_CODES[code];
    this.code = code;
    this.kind = info.kind;
    this.status = info.status;
    this.hint = info.hint;
    this.details = opts.details;
  }

  toJSON(): { code: ErrorCode; kind: ErrorKind; message: string; hint: string; details?: Record<string, unknown> } {
    return { code: this.code, kind: this.kind, message: this.message, hint: this.hint, ...(this.details ? { details: this.details } : {}) };
  }
}

/** Wrap anything thrown into a ThawError, keeping ThawErrors as they are. */
export function asThawError(err: unknown, code: ErrorCode = 'INTERNAL'): ThawError {
  if (err instanceof ThawError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new ThawError(code, msg, { cause: err });
}

export function isThawError(err: unknown, code?: ErrorCode): err is ThawError {
  return err instanceof ThawError && (code === undefined || err.code === code);
}
