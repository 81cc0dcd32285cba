/*
 * FUSE passthrough (Linux >= 6.9) and FUSE_HANDLE_KILLPRIV_V2 for pyfuse3 on libfuse
 * 3.14, which can ask for neither.
 *
 * libfuse 3.14 can neither ask for FUSE_PASSTHROUGH in the INIT reply nor carry a
 * backing id in an open reply, but it lets a session use custom I/O on /dev/fuse.
 * These hooks see every request read and every reply written: they remember the
 * kernel's INIT request, grant passthrough in libfuse's INIT reply (dropping the
 * writeback cache, which the kernel refuses to combine with it), and put the
 * backing id an open/create handler chose into that one reply. Everything else
 * goes straight to read(2)/writev(2).
 *
 * KILLPRIV_V2 (granted in the same INIT reply when the kernel offers it): the server
 * clears suid/sgid and security.capability itself, so the kernel marks the mount
 * SB_NOSEC and, once a file was found to carry no security.capability, stops asking
 * for it before each write (it asks again after an attribute refresh). Without it,
 * a file system whose getxattr works answers one getxattr round trip per write(2).
 */
#ifndef OMEROFS_PASSTHROUGH_H
#define OMEROFS_PASSTHROUGH_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <fuse_lowlevel.h>

#define PT_OP_INIT 26
#define PT_INIT_EXT (1u << 30)
#define PT_WRITEBACK_CACHE (1u << 16)
#define PT_HANDLE_KILLPRIV_V2 (1u << 28)
#define PT_PASSTHROUGH_FLAGS2 (1u << 5) /* FUSE_PASSTHROUGH is bit 37 */
#define PT_FOPEN_PASSTHROUGH (1u << 7)
/* the only open flags the kernel accepts beside FOPEN_PASSTHROUGH: DIRECT_IO, NOFLUSH,
   PARALLEL_DIRECT_WRITES (a keep_cache bit would fail the open with EIO) */
#define PT_FOPEN_ALLOWED ((1u << 0) | (1u << 5) | (1u << 6))
#define PT_MAX_STACK_DEPTH 2            /* FILESYSTEM_MAX_STACK_DEPTH */
#define PT_IOC_BACKING_OPEN _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

struct pt_in_header {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid;
    uint16_t total_extlen, padding;
};

struct pt_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};

struct pt_backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};

static int pt_wanted;          /* the file system asked for passthrough */
static int pt_killpriv_wanted; /* ... and for FUSE_HANDLE_KILLPRIV_V2 */
static int pt_killpriv_offered;
static int pt_killpriv_enabled;
static int pt_init_patched;    /* the INIT reply went out (patched once) */
static int pt_enabled;         /* granted in the INIT reply we sent */
static int pt_offered;         /* the kernel offered it in its INIT request */
static int pt_init_seen;
static uint64_t pt_init_unique;
static __thread int32_t pt_reply_backing_id; /* for the reply being sent now */

static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
    ssize_t res = read(fd, buf, len);
    if (!pt_init_seen && res >= (ssize_t)(sizeof(struct pt_in_header) + 20)) {
        const struct pt_in_header *in = buf;
        if (in->opcode == PT_OP_INIT) {
            uint32_t words[5];
            memcpy(words, (const char *)buf + sizeof(*in), sizeof(words));
            /* words: major, minor, max_readahead, flags, flags2 */
            pt_offered = (words[3] & PT_INIT_EXT) && (words[4] & PT_PASSTHROUGH_FLAGS2);
            pt_killpriv_offered = (words[3] & PT_HANDLE_KILLPRIV_V2) != 0;
            pt_init_unique = in->unique;
            pt_init_seen = 1;
        }
    }
    return res;
}

/* Copy a reply into one buffer, patch it, write it in one write(2) as writev would. */
static ssize_t pt_write_patched(int fd, const struct iovec *iov, int count, int is_init)
{
    char msg[1024];
    size_t total = 0;
    for (int i = 0; i < count; i++) {
        if (total + iov[i].iov_len > sizeof(msg))
            return writev(fd, iov, count);
        memcpy(msg + total, iov[i].iov_base, iov[i].iov_len);
        total += iov[i].iov_len;
    }
    char *arg = msg + sizeof(struct pt_out_header);
    size_t arglen = total - sizeof(struct pt_out_header);
    uint32_t word;
    if (is_init) {
        int passthrough = pt_wanted && pt_offered && arglen >= 40;
        int killpriv = pt_killpriv_wanted && pt_killpriv_offered && arglen >= 16;
        pt_init_patched = 1;
        if (!passthrough && !killpriv)
            return writev(fd, iov, count);
        memcpy(&word, arg + 12, 4);                 /* flags */
        if (killpriv)
            word |= PT_HANDLE_KILLPRIV_V2;
        if (passthrough)
            word = (word | PT_INIT_EXT) & ~PT_WRITEBACK_CACHE;
        memcpy(arg + 12, &word, 4);
        if (passthrough) {
            memcpy(&word, arg + 32, 4);             /* flags2 */
            word |= PT_PASSTHROUGH_FLAGS2;
            memcpy(arg + 32, &word, 4);
            word = PT_MAX_STACK_DEPTH;              /* max_stack_depth */
            memcpy(arg + 36, &word, 4);
        }
        pt_enabled = passthrough;
        pt_killpriv_enabled = killpriv;
    } else {
        /* fuse_open_out {fh, open_flags, backing_id} ends an open and a create reply */
        if (arglen < 16)
            return writev(fd, iov, count);
        char *open_out = arg + arglen - 16;
        memcpy(&word, open_out + 8, 4);
        word = (word & PT_FOPEN_ALLOWED) | PT_FOPEN_PASSTHROUGH;
        memcpy(open_out + 8, &word, 4);
        memcpy(open_out + 12, &pt_reply_backing_id, 4);
    }
    return write(fd, msg, total);
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    if (count >= 1 && iov[0].iov_len >= sizeof(struct pt_out_header)) {
        const struct pt_out_header *out = iov[0].iov_base;
        if (out->error == 0 && out->unique != 0) {
            if (pt_init_seen && !pt_init_patched && out->unique == pt_init_unique)
                return pt_write_patched(fd, iov, count, 1);
            if (pt_reply_backing_id > 0)
                return pt_write_patched(fd, iov, count, 0);
        }
    }
    return writev(fd, iov, count);
}

static const struct fuse_custom_io pt_io = {
    .writev = pt_writev,
    .read = pt_read,
    .splice_receive = NULL,
    .splice_send = NULL,
};

static int pt_install(struct fuse_session *se, int fd, int passthrough, int killpriv_v2)
{
    pt_wanted = passthrough;
    pt_killpriv_wanted = killpriv_v2;
    pt_enabled = pt_offered = pt_init_seen = pt_init_patched = 0;
    pt_killpriv_offered = pt_killpriv_enabled = 0;
    return fuse_session_custom_io(se, &pt_io, fd);
}

/* Register an open file as a backing file; returns its id or -errno. */
static int pt_backing_open(int session_fd, int fd)
{
    struct pt_backing_map map = {.fd = fd, .flags = 0, .padding = 0};
    int res = ioctl(session_fd, PT_IOC_BACKING_OPEN, &map);
    return res < 0 ? -errno : res;
}

static int pt_backing_close(int session_fd, uint32_t backing_id)
{
    int res = ioctl(session_fd, PT_IOC_BACKING_CLOSE, &backing_id);
    return res < 0 ? -errno : 0;
}

static void pt_set_reply_backing_id(int32_t backing_id) { pt_reply_backing_id = backing_id; }
static int pt_is_enabled(void) { return pt_enabled; }
static int pt_is_offered(void) { return pt_offered; }
static int pt_killpriv_v2_is_enabled(void) { return pt_killpriv_enabled; }

#endif
