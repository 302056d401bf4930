"""Landlock (Linux >= 5.13): the kernel's own allow-list of files, TCP ports and scopes.

No mature Python binding exists (TOOLCHAIN.md), so this is a thin ctypes wrapper over the
three system calls; the kernel does every check. We need ABI 6: file system rules (1), TCP
bind/connect rules (4) and the abstract-unix-socket and signal scopes (6).

Threat model: a confined process opens, executes, creates or changes only what lies beneath
the folders it was granted, cannot bind or connect a TCP socket, cannot reach an abstract unix
socket or signal a process outside its own Landlock domain, and cannot ptrace (or read the
`/proc/PID/mem` of) any process that is not confined at least as tightly as it is; none of this
can be lifted again by it, even as root. Files opened before the restriction stay usable.
A job running its own private Ray runtime (sandbox/runtime.py) is restricted with
`tcp=False`: Landlock's TCP rules name ports and Ray picks its ports at random, so its own
network namespace (nothing but its loopback) is what bounds its TCP; every other rule holds.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

MIN_ABI = 6

_SYS_CREATE_RULESET = 444  # the same number on every architecture
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
ALL_FS = (1 << 16) - 1
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # all a file may get

READ_ONLY = READ_FILE | READ_DIR | EXECUTE
READ_WRITE = ALL_FS & ~(MAKE_CHAR | MAKE_BLOCK | MAKE_SOCK | MAKE_FIFO)
DEVICE = READ_FILE | WRITE_FILE | IOCTL_DEV

NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1


class LandlockError(OSError):
    """Landlock is missing, too old, or refused a rule."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        error = ctypes.get_errno()
        raise LandlockError(error, os.strerror(error))
    return int(result)


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 where Landlock is not built in or not enabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except LandlockError:
        return 0


def restrict_self(rules: Iterable[tuple[str, int]], tcp: bool = True) -> None:
    """Confine this thread (and what it starts) to `rules`: (path, rights) pairs.

    Everything else of the file system is denied, as is every TCP bind and connect (unless
    `tcp` is False), abstract unix sockets and signals outside the domain. Needs
    `no_new_privs` set first. Call it in a single-threaded process: other threads stay
    unconfined.
    """
    abi = abi_version()
    if abi < MIN_ABI:
        raise LandlockError(0, f"Landlock ABI {abi} is below the {MIN_ABI} the sandbox needs")
    attr = _RulesetAttr(
        ALL_FS,
        NET_BIND_TCP | NET_CONNECT_TCP if tcp else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL,
    )
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    try:
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= FILE_RIGHTS
                rule = _PathBeneathAttr(rights, fd)
                try:
                    _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
                except LandlockError as e:
                    raise LandlockError(e.errno, f"Landlock refused a rule for {path}: {e}") from e
            finally:
                os.close(fd)
        _syscall(_SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
