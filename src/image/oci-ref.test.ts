import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThawError } from '../errors.ts';
import { isLoopbackRegistry, parseImageRef } from './oci-ref.ts';

const H = 'a'.repeat(64);

test('Docker Hub short names are normalised as Docker does', () => {
  const cases: [string, string, string][] = [
    ['alpine', 'docker.io/library/alpine:latest', 'docker://docker.io/library/alpine:latest'],
    ['alpine:3.19', 'docker.io/library/alpine:3.19', 'docker://docker.io/library/alpine:3.19'],
    ['user/app', 'docker.io/user/app:latest', 'docker://docker.io/user/app:latest'],
    ['user/app:v1.2_3-rc', 'docker.io/user/app:v1.2_3-rc', 'docker://docker.io/user/app:v1.2_3-rc'],
    ['docker.io/alpine', 'docker.io/library/alpine:latest', 'docker://docker.io/library/alpine:latest'],
    ['index.docker.io/library/alpine:edge', 'docker.io/library/alpine:edge', 'docker://docker.io/library/alpine:edge'],
    ['docker.io/user/app', 'docker.io/user/app:latest', 'docker://docker.io/user/app:latest'],
    ['team/sub/app', 'docker.io/team/sub/app:latest', 'docker://docker.io/team/sub/app:latest'],
    [`alpine@sha256:${H}`, `docker.io/library/alpine@sha256:${H}`, `docker://docker.io/library/alpine@sha256:${H}`],
    // tag and digest: the digest wins for the pull (skopeo refuses both at once)
    [`alpine:3@sha256:${H}`, `docker.io/library/alpine:3@sha256:${H}`, `docker://docker.io/library/alpine@sha256:${H}`],
    ['docker://alpine', 'docker.io/library/alpine:latest', 'docker://docker.io/library/alpine:latest'],
    ['a__b/c.d-e--f', 'docker.io/a__b/c.d-e--f:latest', 'docker://docker.io/a__b/c.d-e--f:latest'],
    // `localhost:5000` without a slash is repository "localhost" with tag "5000", as in Docker
    ['localhost:5000', 'docker.io/library/localhost:5000', 'docker://docker.io/library/localhost:5000'],
  ];
  for (const [input, name, source] of cases) {
    const r = parseImageRef(input);
    assert.equal(r.kind, 'registry', input);
    assert.equal(r.name, name, input);
    assert.equal(r.source, source, input);
    assert.equal(r.tls, true, input);
  }
});

test('a first component with ".", ":", "localhost" or an uppercase letter is a host', () => {
  const cases: [string, string, string, string | null, boolean][] = [
    ['localhost/app', 'localhost', 'app', 'latest', false],
    ['localhost:5000/app:v1', 'localhost:5000', 'app', 'v1', false],
    ['127.0.0.1:5000/team/app', '127.0.0.1:5000', 'team/app', 'latest', false],
    ['127.0.0.2/app', '127.0.0.2', 'app', 'latest', false],
    ['[::1]:5000/app:v2', '[::1]:5000', 'app', 'v2', false],
    ['[::1]/app', '[::1]', 'app', 'latest', false],
    ['ghcr.io/owner/app:1.0', 'ghcr.io', 'owner/app', '1.0', true],
    ['registry.example.com:443/a/b/c', 'registry.example.com:443', 'a/b/c', 'latest', true],
    ['myhost:5000/app', 'myhost:5000', 'app', 'latest', true],
    ['MyRegistry/app', 'MyRegistry', 'app', 'latest', true],
    ['[2001:db8::1]:5000/app', '[2001:db8::1]:5000', 'app', 'latest', true],
    [`quay.io/x/y@sha256:${H}`, 'quay.io', 'x/y', null, true],
    ['localhost.localdomain/app', 'localhost.localdomain', 'app', 'latest', true],
  ];
  for (const [input, registry, repository, tag, tls] of cases) {
    const r = parseImageRef(input);
    assert.ok(r.kind === 'registry', input);
    assert.deepEqual([r.registry, r.repository, r.tag, r.tls], [registry, repository, tag, tls], input);
  }
  const r = parseImageRef('127.0.0.1:5000/app@sha256:' + H);
  assert.equal(r.source, `docker://127.0.0.1:5000/app@sha256:${H}`);
});

test('loopback registries are plain HTTP, everything else HTTPS', () => {
  for (const h of ['localhost', 'localhost:5000', 'LOCALHOST:1', '127.0.0.1', '127.0.0.1:65535', '127.1.2.3:80', '[::1]', '[::1]:5000']) assert.equal(isLoopbackRegistry(h), true, h);
  for (const h of ['docker.io', 'localhost.example.com', '128.0.0.1:5000', '[::2]:5000', '10.0.0.1', 'my-localhost:5000', '127.0.0.1.nip.io']) assert.equal(isLoopbackRegistry(h), false, h);
});

test('local archives in skopeo transport syntax', () => {
  const cwd = '/work/x';
  const cases: [string, string, string, string | null, string][] = [
    ['oci-archive:/tmp/img.tar', 'oci-archive', '/tmp/img.tar', null, 'oci-archive:/tmp/img.tar'],
    ['oci-archive:img.tar', 'oci-archive', '/work/x/img.tar', null, 'oci-archive:/work/x/img.tar'],
    ['oci-archive:./d/img.tar:v1', 'oci-archive', '/work/x/d/img.tar', 'v1', 'oci-archive:/work/x/d/img.tar:v1'],
    ['docker-archive:/tmp/save.tar', 'docker-archive', '/tmp/save.tar', null, 'docker-archive:/tmp/save.tar'],
    ['oci:/tmp/layout', 'oci', '/tmp/layout', null, 'oci:/tmp/layout'],
    ['oci:/tmp/layout:latest', 'oci', '/tmp/layout', 'latest', 'oci:/tmp/layout:latest'],
    ['oci:layout:v1.0', 'oci', '/work/x/layout', 'v1.0', 'oci:/work/x/layout:v1.0'],
  ];
  for (const [input, kind, p, tag, source] of cases) {
    const r = parseImageRef(input, cwd);
    assert.ok(r.kind !== 'registry', input);
    assert.deepEqual([r.kind, r.path, r.tag, r.source, r.tls], [kind, p, tag, source, false], input);
  }
});

test('bad references get IMAGE_REF_INVALID', () => {
  const bad = [
    '',
    '   ',
    ' alpine',
    'alp ine',
    'Alpine', // repositories are lowercase (a lone component is never a host)
    'docker.io/Library/alpine',
    'ghcr.io/Owner/app',
    'user/App:v1',
    'alpine:', // empty tag
    'ghcr.io/x/y:',
    'alpine:-bad',
    `alpine:${'t'.repeat(129)}`,
    'alpine:ta/g',
    'alpine@sha256:abc', // bad digests
    'alpine@sha256:' + 'A'.repeat(64),
    'alpine@sha512:' + 'a'.repeat(128),
    'alpine@' + H,
    'alpine@',
    '@sha256:' + H,
    ':latest',
    '/alpine',
    'alpine/',
    'a//b',
    'ghcr.io/',
    'localhost:0/app',
    'localhost:99999/app',
    'host:port/app',
    '-bad.host/app',
    '[::1/app',
    '[zz::1]:5000/app',
    'a..b/c', // host "a..b" has an empty component
    'user/a..b',
    'user/-app',
    'user/app-',
    'user/a___b',
    `user/${'a'.repeat(260)}`,
    'https://ghcr.io/x/y',
    'dir:/tmp/x',
    'docker-daemon:alpine:latest',
    'oci-archive:',
    'oci-archive:../img.tar', // ".." in paths
    'oci-archive:/tmp/../etc/img.tar',
    'docker-archive:a/../../b.tar',
    'oci:/tmp/..',
    'oci:/tmp/x:', // empty tag
    'oci:/tmp/x:bad/tag',
    'oci:',
    'docker-archive:/tmp/a:b.tar',
    'oci-archive:/tmp/a\0b',
  ];
  for (const ref of bad) {
    assert.throws(() => parseImageRef(ref), (err: unknown) => isThawError(err, 'IMAGE_REF_INVALID'), JSON.stringify(ref));
  }
});

test('the error names the reference and the reason', () => {
  try {
    parseImageRef('alpine:');
    assert.fail('should throw');
  } catch (err) {
    assert.ok(isThawError(err, 'IMAGE_REF_INVALID'));
    assert.match(err.message, /alpine:.*empty tag/);
    assert.deepEqual(err.details, { ref: 'alpine:', reason: 'empty tag' });
    assert.equal(err.status, 400);
  }
});
