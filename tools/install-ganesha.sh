#!/usr/bin/env bash
# Install what the NFS re-export tests need (Debian packages), idempotently.
#
# ganesha.nfsd (nfs-ganesha) with its VFS FSAL (nfs-ganesha-vfs, which re-exports a local
# or FUSE mount through name_to_handle_at/open_by_handle_at) serves NFSv4 on 127.0.0.1;
# the client is libnfs's nfs-ls/nfs-cat/nfs-cp (libnfs-utils), a user-space NFS client:
# the kernels these tests run on may have no NFS client (no CONFIG_NFS_FS), so
# `mount -t nfs4` cannot be relied on. nfs-common (mount.nfs4, for hosts whose kernel has
# one) comes along. Neither rpcbind nor dbus needs to run: NFSv4 alone on a fixed port.
# Package scripts never start a system ganesha here: a policy-rc.d answering 101 is put
# in place for the install when none exists (tests start their own and stop it by PID).
# Usage: tools/install-ganesha.sh
set -euo pipefail
need=()
command -v ganesha.nfsd >/dev/null || need+=(nfs-ganesha)
compgen -G "/usr/lib/*/ganesha/libfsalvfs.so" >/dev/null || need+=(nfs-ganesha-vfs)
command -v nfs-cat >/dev/null || need+=(libnfs-utils)
command -v mount.nfs4 >/dev/null || need+=(nfs-common)
[ ${#need[@]} -eq 0 ] && exit 0
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"
apt_install_services "NFS re-export" /tmp/omerofs-install-ganesha.log "${need[@]}"
