// Image references for `thaw deploy --image REF`: a registry reference
// normalised exactly as Docker does (github.com/distribution/reference), or a
// local archive in skopeo's transport syntax. The result says what skopeo
// copies from and whether TLS is used.
//
//   alpine                       -> docker.io/library/alpine:latest
//   user/app                     -> docker.io/user/app:latest
//   localhost:5000/app@sha256:…  -> localhost:5000/app@sha256:… (plain HTTP)
//   oci-archive:./img.tar        -> oci-archive:/abs/img.tar
//   docker-archive:/x/save.tar   -> docker-archive:/x/save.tar (what `docker save` writes)
//   oci:/x/layout[:TAG]          -> oci:/x/layout[:TAG]
//
// A first component is a host when it holds a `.` or a `:`, is `localhost`,
// or has an uppercase letter (repositories are lowercase); `index.docker.io`
// is `docker.io`. Registries on loopback (localhost, 127.0.0.0/8, [::1]) are
// reached over plain HTTP, as Docker does; every other one over HTTPS.
// Archive paths may not hold `..` components or `:` (skopeo splits there).
import path from 'node:path';
import { ThawError } from '../errors.ts';

export interface RegistryRef {
  kind: 'registry';
  /** `docker.io`, `host`, `host:port` or `[v6]:port`. */
  registry: string;
  /** `library/alpine`, `user/app`, `team/sub/app`. */
  repository: string;
  /** The tag, `latest` when neither a tag nor a digest was given; null when only a digest was. */
  tag: string | null;
  /** `sha256:<64 hex>` when pinned. */
  digest: string | null;
  /** Canonical name: `docker.io/library/alpine:latest`, `host/repo:tag@sha256:…`. */
  name: string;
  /** What skopeo reads: `docker://registry/repository@digest` or `…:tag` (skopeo refuses both at once). */
  source: string;
  /** false for loopback registries (skopeo `--src-tls-verify=false`). */
  tls: boolean;
}

export interface ArchiveRef {
  kind: 'oci-archive' | 'docker-archive' | 'oci';
  /** Absolute path of the archive file or the OCI layout folder. */
  path: string;
  /** `oci:DIR:TAG` and `oci-archive:PATH:TAG`; null picks the only image. */
  tag: string | null;
  name: string;
  source: string;
  tls: false;
}

export type ImageRef = RegistryRef | ArchiveRef;

const NAME_TOTAL_MAX = 255;
// distribution/reference grammar.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6 = /^\[[a-fA-F0-9:]+\]$/;
const PORT = /^[0-9]+$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

function invalid(ref: string, reason: string): ThawError {
  return new ThawError('IMAGE_REF_INVALID', `invalid image reference ${JSON.stringify(ref)}: ${reason}`, { details: { ref, reason } });
}

function validDomain(domain: string): boolean {
  let host = domain;
  let port: string | null = null;
  const v6 = /^(\[[^\]]*\])(?::(.*))?$/.exec(domain);
  if (v6) {
    host = v6[1]!;
    port = v6[2] ?? null;
    if (!IPV6.test(host)) return false;
  } else {
    const i = domain.lastIndexOf(':');
    if (i >= 0) {
      host = domain.slice(0, i);
      port = domain.slice(i + 1);
    }
    if (!host.split('.').every((c) => DOMAIN_COMPONENT.test(c))) return false;
  }
  if (port !== null && (!PORT.test(port) || Number(port) < 1 || Number(port) > 65535)) return false;
  return true;
}

/** True for registries Docker reaches over plain HTTP by default. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(0, registry.indexOf(']') + 1) : registry.replace(/:[0-9]+$/, '');
  const h = host.toLowerCase();
  return h === 'localhost' || h === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function parseRegistry(input: string, original: string): RegistryRef {
  let rest = input;
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(original, `digest ${JSON.stringify(digest)} is not sha256: followed by 64 lowercase hex digits`);
  }
  // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
  let tag: string | null = null;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(original, tag === '' ? 'empty tag' : `tag ${JSON.stringify(tag)} is invalid`);
  }
  if (rest === '') throw invalid(original, 'no repository name');
  if (rest.length > NAME_TOTAL_MAX) throw invalid(original, `name is longer than ${NAME_TOTAL_MAX} characters`);

  let registry = 'docker.io';
  let repository = rest;
  const i = rest.indexOf('/');
  if (i >= 0) {
    const first = rest.slice(0, i);
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      registry = first;
      repository = rest.slice(i + 1);
    }
  }
  if (registry !== 'docker.io' && !validDomain(registry)) throw invalid(original, `registry host ${JSON.stringify(registry)} is invalid`);
  if (registry === 'index.docker.io') registry = 'docker.io';
  if (registry === 'docker.io' && !repository.includes('/')) repository = `library/${repository}`;
  if (repository === '') throw invalid(original, 'no repository name');
  for (const c of repository.split('/')) {
    if (c !== c.toLowerCase()) throw invalid(original, 'repository names must be lowercase');
    if (!PATH_COMPONENT.test(c)) throw invalid(original, `repository component ${JSON.stringify(c)} is invalid`);
  }
  if (tag === null && digest === null) tag = 'latest';
  const base = `${registry}/${repository}`;
  const name = `${base}${tag !== null ? `:${tag}` : ''}${digest !== null ? `@${digest}` : ''}`;
  const source = `docker://${base}${digest !== null ? `@${digest}` : `:${tag}`}`;
  return { kind: 'registry', registry, repository, tag, digest, name, source, tls: !isLoopbackRegistry(registry) };
}

function parseArchive(kind: ArchiveRef['kind'], rest: string, original: string, cwd: string): ArchiveRef {
  let p = rest;
  let tag: string | null = null;
  const colon = rest.indexOf(':');
  if (colon >= 0) {
    if (kind === 'docker-archive') throw invalid(original, 'docker-archive paths may not contain ":"');
    p = rest.slice(0, colon);
    tag = rest.slice(colon + 1);
    if (!TAG.test(tag)) throw invalid(original, tag === '' ? 'empty tag' : `tag ${JSON.stringify(tag)} is invalid`);
  }
  if (p === '') throw invalid(original, `${kind}: needs a path`);
  if (p.includes('\0') || /[\r\n]/.test(p)) throw invalid(original, 'path holds control characters');
  if (p.split('/').includes('..')) throw invalid(original, 'path may not contain ".." components');
  const abs = path.resolve(cwd, p);
  const source = `${kind}:${abs}${tag !== null ? `:${tag}` : ''}`;
  return { kind, path: abs, tag, name: source, source, tls: false };
}

/** Parse an image reference. Relative archive paths resolve against `cwd`. Errors: IMAGE_REF_INVALID. */
export function parseImageRef(ref: string, cwd: string = process.cwd()): ImageRef {
  if (typeof ref !== 'string' || ref.trim() === '') throw invalid(String(ref), 'empty reference');
  if (ref !== ref.trim() || /\s/.test(ref)) throw invalid(ref, 'references may not contain whitespace');
  for (const kind of ['oci-archive', 'docker-archive', 'oci'] as const) {
    if (ref.startsWith(`${kind}:`)) return parseArchive(kind, ref.slice(kind.length + 1), ref, cwd);
  }
  let input = ref;
  if (input.startsWith('docker://')) input = input.slice('docker://'.length);
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) throw invalid(ref, 'only docker://, oci:, oci-archive: and docker-archive: are supported');
  else if (/^(dir|docker-daemon|containers-storage|sif|tarball):/.test(input)) throw invalid(ref, `the ${input.slice(0, input.indexOf(':'))}: transport is not supported`);
  return parseRegistry(input, ref);
}
