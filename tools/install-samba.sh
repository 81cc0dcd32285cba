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
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"
apt_install_services "Samba" /tmp/omerofs-install-samba.log "${need[@]}"
