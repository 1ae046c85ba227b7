#!/usr/bin/env bash
# apt-install.sh WHO PKG...: installs the Debian packages that are missing,
# idempotently (apt-get update only when an install fails). WHO prefixes the
# progress line. Log: /tmp/thaw-apt.log.
set -euo pipefail
who="$1"; shift
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "$who: installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a parallel setup) holds the dpkg lock: wait for it instead of failing.
lockwait=(-o DPkg::Lock::Timeout=600)
if ! $SUDO apt-get "${lockwait[@]}" install -y -q --no-install-recommends "${missing[@]}" >/tmp/thaw-apt.log 2>&1; then
  $SUDO apt-get "${lockwait[@]}" update -q >>/tmp/thaw-apt.log 2>&1
  $SUDO apt-get "${lockwait[@]}" install -y -q --no-install-recommends "${missing[@]}" >>/tmp/thaw-apt.log 2>&1 || { tail -20 /tmp/thaw-apt.log; exit 1; }
fi
