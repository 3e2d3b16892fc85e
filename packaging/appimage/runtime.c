/*
 * qhybrid's AppImage runtime: the ELF program at the head of qhybrid-<version>-x86_64.AppImage.
 *
 * The AppImage project's own runtime (AppImage/type2-runtime) is only published as a binary on
 * its release page, which these build machines cannot reach, and no Debian or PyPI package ships
 * it. This is a small replacement, built from Debian's libsquashfuse (static) by
 * packaging/build.py, that follows the type 2 format: an ELF whose bytes 8..10 are "AI\x02",
 * followed directly by a squashfs image of the AppDir. It does not mount the image with FUSE:
 * every start extracts the AppDir into a fresh private temporary folder, runs its AppRun, waits,
 * and removes the folder again, so nothing is left behind. Options (as the reference runtime's):
 *
 *   --appimage-extract            extract the AppDir into ./squashfs-root and exit
 *   --appimage-extract-and-run    the default here: extract to a temporary folder, run, clean up
 *   --appimage-offset             print the byte offset of the squashfs image and exit
 *   --appimage-version, --appimage-help
 *
 * Environment given to AppRun: APPIMAGE (this file's absolute path), APPDIR (the extracted
 * folder), ARGV0 (argv[0] as started). TMPDIR chooses where the temporary folder goes.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* squashfuse's config.h defines _POSIX_C_SOURCE again; the system headers are already in. */
#undef _POSIX_C_SOURCE
#include <squashfuse.h>

#define RUNTIME_VERSION "qhybrid-runtime 1"
#define CHUNK (1 << 20)

static pid_t child_pid = 0;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "AppImage runtime: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

/* The squashfs image starts where the ELF ends: after the section header table, which the
 * linker puts last (the way the reference runtime computes it too). */
static off_t elf_size(int fd) {
    Elf64_Ehdr eh;
    if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh) return -1;
    if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) return -1;
    off_t end = (off_t)(eh.e_shoff + (Elf64_Off)eh.e_shentsize * eh.e_shnum);
    /* Program headers could in principle lie further on. */
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (Elf64_Off)i * eh.e_phentsize)) !=
            (ssize_t)sizeof ph)
            return -1;
        if ((off_t)(ph.p_offset + ph.p_filesz) > end) end = (off_t)(ph.p_offset + ph.p_filesz);
    }
    return end;
}

static int write_all(int fd, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int extract_file(sqfs *fs, sqfs_inode *inode, const char *dest, mode_t mode) {
    int out = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return -1;
    char *buf = malloc(CHUNK);
    if (buf == NULL) {
        close(out);
        return -1;
    }
    sqfs_off_t pos = 0, total = (sqfs_off_t)inode->xtra.reg.file_size;
    int rc = 0;
    while (pos < total) {
        sqfs_off_t n = total - pos < CHUNK ? total - pos : CHUNK;
        if (sqfs_read_range(fs, inode, pos, &n, buf) != SQFS_OK || n <= 0 ||
            write_all(out, buf, (size_t)n) != 0) {
            rc = -1;
            break;
        }
        pos += n;
    }
    free(buf);
    if (fchmod(out, mode) != 0) rc = -1;
    if (close(out) != 0) rc = -1;
    return rc;
}

/* Extract the whole image into `root` (which exists). */
static void extract(sqfs *fs, const char *root) {
    sqfs_traverse trv;
    sqfs_err err = sqfs_traverse_open(&trv, fs, sqfs_inode_root(fs));
    if (err != SQFS_OK) die("cannot read the image's root folder", NULL);
    char dest[PATH_MAX];
    while (sqfs_traverse_next(&trv, &err)) {
        if (trv.dir_end) continue;
        if ((size_t)snprintf(dest, sizeof dest, "%s/%s", root, trv.path) >= sizeof dest)
            die("path too long", trv.path);
        sqfs_inode inode;
        if (sqfs_inode_get(fs, &inode, trv.entry.inode) != SQFS_OK) die("bad inode", trv.path);
        mode_t mode = inode.base.mode & 07777;
        switch (inode.base.inode_type) {
        case SQUASHFS_DIR_TYPE:
        case SQUASHFS_LDIR_TYPE:
            /* Owner-writable while extracting, so that the folder can be filled and removed. */
            if (mkdir(dest, mode | 0700) != 0 && errno != EEXIST) die("cannot create", dest);
            break;
        case SQUASHFS_REG_TYPE:
        case SQUASHFS_LREG_TYPE:
            if (extract_file(fs, &inode, dest, mode) != 0) die("cannot write", dest);
            break;
        case SQUASHFS_SYMLINK_TYPE:
        case SQUASHFS_LSYMLINK_TYPE: {
            char target[PATH_MAX];
            size_t size = sizeof target;
            if (sqfs_readlink(fs, &inode, target, &size) != SQFS_OK) die("bad link", trv.path);
            if (symlink(target, dest) != 0) die("cannot create link", dest);
            break;
        }
        default: /* devices, fifos and sockets have no place in an AppDir */
            break;
        }
    }
    if (err != SQFS_OK) die("the image is damaged", NULL);
    sqfs_traverse_close(&trv);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void forward(int sig) {
    if (child_pid > 0) kill(child_pid, sig);
}

static int run(const char *self, const char *appdir, int argc, char **argv) {
    char apprun[PATH_MAX];
    if ((size_t)snprintf(apprun, sizeof apprun, "%s/AppRun", appdir) >= sizeof apprun)
        die("path too long", appdir);
    if (access(apprun, X_OK) != 0) die("the image has no executable AppRun", apprun);
    setenv("APPIMAGE", self, 1);
    setenv("APPDIR", appdir, 1);
    setenv("ARGV0", argv[0], 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    child_pid = fork();
    if (child_pid < 0) die("cannot fork", strerror(errno));
    if (child_pid == 0) {
        char **args = calloc((size_t)argc + 1, sizeof *args);
        if (args == NULL) _exit(127);
        args[0] = apprun;
        for (int i = 1; i < argc; i++) args[i] = argv[i];
        execv(apprun, args);
        perror("AppImage runtime: exec AppRun");
        _exit(127);
    }
    int status = 0;
    while (waitpid(child_pid, &status, 0) < 0) {
        if (errno != EINTR) die("waitpid", strerror(errno));
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) die("cannot find this program's file", strerror(errno));
    self[n] = '\0';

    const char *opt = argc > 1 ? argv[1] : "";
    if (strcmp(opt, "--appimage-version") == 0) {
        puts(RUNTIME_VERSION);
        return 0;
    }
    if (strcmp(opt, "--appimage-help") == 0) {
        puts("--appimage-extract | --appimage-extract-and-run | --appimage-offset | "
             "--appimage-version | --appimage-help; anything else goes to the app "
             "(extracted to a temporary folder, run, and removed)");
        return 0;
    }

    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open", self);
    off_t offset = elf_size(fd);
    if (offset <= 0) die("not an ELF file", self);
    if (strcmp(opt, "--appimage-offset") == 0) {
        printf("%lld\n", (long long)offset);
        return 0;
    }
    sqfs fs;
    if (sqfs_init(&fs, fd, (size_t)offset) != SQFS_OK)
        die("no squashfs image after the runtime in", self);

    if (strcmp(opt, "--appimage-extract") == 0) {
        if (mkdir("squashfs-root", 0755) != 0 && errno != EEXIST)
            die("cannot create squashfs-root", strerror(errno));
        extract(&fs, "squashfs-root");
        sqfs_destroy(&fs);
        puts("squashfs-root");
        return 0;
    }

    int skip = strcmp(opt, "--appimage-extract-and-run") == 0 ? 1 : 0;
    const char *tmp = getenv("TMPDIR");
    char appdir[PATH_MAX];
    if ((size_t)snprintf(appdir, sizeof appdir, "%s/.qhybrid-appimage-XXXXXX",
                         tmp && *tmp ? tmp : "/tmp") >= sizeof appdir)
        die("TMPDIR too long", tmp);
    if (mkdtemp(appdir) == NULL) die("cannot create a temporary folder", strerror(errno));
    extract(&fs, appdir);
    sqfs_destroy(&fs);
    close(fd);
    argv[skip] = argv[0];
    int rc = run(self, appdir, argc - skip, argv + skip);
    if (nftw(appdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "AppImage runtime: could not remove %s\n", appdir);
    return rc;
}
