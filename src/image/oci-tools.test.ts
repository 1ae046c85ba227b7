import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseImageRef } from './oci-ref.ts';
import { skopeoError, skopeoMessage, umociError } from './oci-tools.ts';

// stderr as skopeo 1.9 and umoci 0.4.7 (Debian 12) write it.
const fatal = (msg: string) => `time="2026-11-30T06:04:14Z" level=fatal msg="${msg.replace(/"/g, '\\"')}"\n`;
const reg = parseImageRef('127.0.0.1:5055/t/img:v1');

test('skopeo failures map to stable codes', () => {
  const cases: [string, ReturnType<typeof parseImageRef>, string][] = [
    ['Error parsing image name "docker://127.0.0.1:5055/t/img:nope": reading manifest nope in 127.0.0.1:5055/t/img: manifest unknown: manifest unknown', reg, 'IMAGE_NOT_FOUND'],
    ['Error parsing image name "docker://x": reading manifest v1 in 127.0.0.1:5055/t/nothere: name unknown: repository name not known to registry', reg, 'IMAGE_NOT_FOUND'],
    ['Error parsing image name "docker://x": pinging container registry 127.0.0.1:5999: Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused', reg, 'REGISTRY_UNREACHABLE'],
    ['Error parsing image name "docker://x": pinging container registry nonexistent.invalid: Get "https://nonexistent.invalid/v2/": dial tcp: lookup nonexistent.invalid on 10.255.255.53:53: no such host', reg, 'REGISTRY_UNREACHABLE'],
    ['pinging container registry ghcr.io: Get "https://ghcr.io/v2/": x509: certificate signed by unknown authority', reg, 'REGISTRY_UNREACHABLE'],
    ['Error parsing image name "docker://x": reading manifest v1 in 127.0.0.1:5056/t/img: unauthorized: authentication required', reg, 'REGISTRY_AUTH_FAILED'],
    ['initializing source docker://x: reading manifest latest in docker.io/library/nope: requested access to the resource is denied', reg, 'REGISTRY_AUTH_FAILED'],
    ['writing blob: happened during read: Digest did not match, expected sha256:b98a, got sha256:a9b6', reg, 'IMAGE_DIGEST_MISMATCH'],
    ['choosing an image from manifest list docker://x: no image found in image index for architecture amd64, variant "", OS linux', reg, 'IMAGE_PLATFORM_UNSUPPORTED'],
    ['Error parsing manifest for image: choosing image instance: no image found in manifest list for architecture amd64, variant "", OS linux', reg, 'IMAGE_PLATFORM_UNSUPPORTED'],
    ['something nobody expected', reg, 'IMAGE_PULL_FAILED'],
    ['Error parsing image name "oci:img:nope": no descriptor found for reference "nope"', parseImageRef('oci:/x/img:nope'), 'IMAGE_NOT_FOUND'],
    ['Error parsing image name "oci-archive:plain.tar": open /var/tmp/oci4057814609/index.json: no such file or directory', parseImageRef('oci-archive:/x/plain.tar'), 'IMAGE_INVALID'],
    ['Error parsing image name "docker-archive:plain.tar": loading tar component manifest.json: file does not exist', parseImageRef('docker-archive:/x/plain.tar'), 'IMAGE_INVALID'],
    ['Error parsing image name "docker-archive:junk.tar": loading tar component manifest.json: unexpected EOF', parseImageRef('docker-archive:/x/junk.tar'), 'IMAGE_INVALID'],
  ];
  for (const [msg, ref, code] of cases) {
    const err = skopeoError(fatal(msg), ref, 'copying');
    assert.equal(err.code, code, msg);
    assert.ok(err.message.includes(msg), err.message);
    assert.match(String(err.details?.stderr), /level=fatal/);
  }
  assert.equal(skopeoMessage(fatal('a "quoted" word')), 'a "quoted" word');
  assert.equal(skopeoMessage('plain\nlast line\n'), 'plain\nlast line');
});

test('umoci failures map to stable codes', () => {
  const u = (s: string) => umociError(`   ⨯ ${s}\n`, '/cache/layouts/x').code;
  assert.equal(u("create runtime bundle: unpack config.json: generate config.json: cannot parse user spec: 'app': unable to find user app: no matching entries in passwd file"), 'IMAGE_USER_UNKNOWN');
  assert.equal(u('create runtime bundle: unpack rootfs: unpack rootfs: layer sha256:ae94: blob is not correct mediatype: application/vnd.oci.image.layer.v1.tar+zstd'), 'IMAGE_INVALID');
  assert.equal(u('create runtime bundle: unpack rootfs: write /x: no space left on device'), 'IMAGE_UNPACK_FAILED');
  assert.equal(u('something else'), 'IMAGE_UNPACK_FAILED');
});
