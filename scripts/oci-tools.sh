#!/usr/bin/env bash
# oci-tools.sh: the Debian packages OCI images need, installed when missing
# (idempotent): skopeo (pull, digest checks), umoci (unpack: whiteouts,
# opaque folders, hard links, owners, xattrs), docker-registry (a real
# registry on loopback for the tests in src/image/oci.test.ts).
# The docker-registry package ships no running service here (no systemd);
# the tests start their own `docker-registry serve CONFIG` on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt-install.sh oci skopeo umoci docker-registry
