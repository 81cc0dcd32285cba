#!/usr/bin/env bash
# Install what the Samba front-door tests need (Debian packages), idempotently.
#
# smbd + smbpasswd/pdbedit (samba, samba-common-bin) serve the shares, with the VFS
# modules acl_xattr and streams_xattr (samba-vfs-modules: Debian builds them as plugins);
# smbclient is the client the tests write with. apt-get runs only when one of them is missing, so
# `make test` on a machine that has them costs nothing. Package scripts never start the
# system's smbd/nmbd here: a policy-rc.d answering 101 is put in place for the install
# when none exists (tests start their own smbd on a free port and stop it by PID).
# Usage: tools/install-samba.sh
set -euo pipefail
need=()
command -v smbd >/dev/null || need+=(samba)
command -v smbpasswd >/dev/null || need+=(samba-common-bin)
command -v smbclient >/dev/null || need+=(smbclient)
compgen -G "/usr/lib/*/samba/vfs/streams_xattr.so" >/dev/null || need+=(samba-vfs-modules)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "omerofs: Samba (${need[*]}) is missing; install it as root: apt-get install ${need[*]}" >&2
  exit 0  # the Samba tests skip with this reason; nothing else needs it
fi
policy=/usr/sbin/policy-rc.d
placed=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  placed=1
fi
cleanup() { [ -n "$placed" ] && rm -f "$policy"; return 0; }
trap cleanup EXIT
echo "omerofs: installing ${need[*]} (Debian packages, for the Samba tests)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/omerofs-install-samba.log 2>&1; then
  apt-get update -q >>/tmp/omerofs-install-samba.log 2>&1 || true
  apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/omerofs-install-samba.log 2>&1 \
    || { echo "omerofs: installing Samba failed (log: /tmp/omerofs-install-samba.log)" >&2; exit 1; }
fi
echo "omerofs: Samba ready ($(smbd --version))"
