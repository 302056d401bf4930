"""Namespaces and the job's file-system view, through the kernel's own calls (ctypes).

Threat model, one line each:
- PID namespace: the job sees only its own processes; when its first process ends the kernel
  kills every other one in the namespace, so nothing it started (double fork, setsid) outlives it.
- Network namespace: only a loopback interface that is down: no route to any address, the
  node's own ports included, and no DNS. A job running its own private Ray runtime gets its
  loopback up: it reaches only what the job itself listens on, never the node's loopback.
- Mount namespace with a new root: the job's `/` is a fresh tmpfs holding read-only bind mounts
  of the system and Python folders it needs, a fresh `/proc` of its PID namespace, a few device
  nodes and a size-capped tmpfs at `/tmp`; the data dir, the node's keys and home, other jobs'
  folders are simply not there (Landlock then allows only what is there).
- IPC and UTS namespaces: no System V shared memory or semaphores shared with the node or jobs.
"""

from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine(), -1)
OLD_ROOT = "/.old-root"  # where the node's root goes on pivot_root, before it is unmounted
# A small root-owned tmpfs, empty but for the input folders attach() mounts there (read-only).
INPUTS = "/inputs"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def b(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    result = _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data) or None)
    _check(result, f"mount {target}")


def unmount(target: str) -> None:
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(
        ctypes.c_long(_SYS_PIVOT_ROOT), os.fsencode(new_root), os.fsencode(put_old)
    )
    _check(result, "pivot_root")


def bind_read_only(source: str, target: str) -> None:
    """Mount `source` at `target` (made inside the new root), read-only, no setuid or devices."""
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def bind_device(source: str, target: str) -> None:
    open(target, "w").close()
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)


def enter_view(
    mountpoint: str, read_only: list[str], devices: list[str], scratch: tuple[int, int, int]
) -> None:
    """Make a new root from a tmpfs at `mountpoint` and switch to it (needs a new mount and a
    new PID namespace, as root).

    `read_only` folders and files keep their paths inside; symlinks at the top (Debian's
    `/lib -> usr/lib`) are recreated. `scratch` is (size in bytes, uid, gid) of the tmpfs
    mounted at `/tmp`. The root tmpfs is read-only once built.
    """
    size, uid, gid = scratch
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the node
    mount("tmpfs", mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    os.makedirs(mountpoint + "/tmp", mode=0o755, exist_ok=True)
    mount(
        "tmpfs",
        mountpoint + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={size},mode=0700,uid={uid},gid={gid}",
    )
    # After /tmp: a folder to show under /tmp (a data dir there) is mounted over it.
    for path in read_only:
        target = mountpoint + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)
        elif os.path.exists(path):
            bind_read_only(path, target)
    os.makedirs(mountpoint + INPUTS, mode=0o755)
    mount(
        "tmpfs", mountpoint + INPUTS, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=0755"
    )
    os.makedirs(mountpoint + "/dev", mode=0o755, exist_ok=True)
    for device in devices:
        bind_device(device, mountpoint + device)
    for name, target in (("fd", "/proc/self/fd"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, f"{mountpoint}/dev/{name}")
    os.makedirs(mountpoint + "/proc", mode=0o555, exist_ok=True)
    mount("proc", mountpoint + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(mountpoint + OLD_ROOT, mode=0o700, exist_ok=True)
    pivot_root(mountpoint, mountpoint + OLD_ROOT)
    os.chdir("/")
    unmount(OLD_ROOT)  # the node's root is gone from the view
    os.rmdir(OLD_ROOT)
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


_SYS_MOVE_MOUNT = 429  # the same number on every architecture (new system calls, >= 424)
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def attach(mount_fd: int, target: str) -> None:
    """Attach a detached mount (an `open_tree` clone, e.g. a dataset's read-only partition
    folder) at `target`, a new folder, in this mount namespace (as root): so that the processes
    a job starts (which do not inherit its descriptors) see the same folder."""
    os.makedirs(target, mode=0o755)
    result = _libc.syscall(
        ctypes.c_long(_SYS_MOVE_MOUNT),
        mount_fd,
        b"",
        -100,  # AT_FDCWD
        os.fsencode(target),
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(result, f"move_mount {target}")


def loopback_up() -> None:
    """Bring up `lo` of this network namespace (as root): a job's own private runtime talks over
    it; the namespace has no other interface, so nothing outside is reachable."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
