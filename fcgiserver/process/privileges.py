"""Running workers as an unprivileged user.

The supervisor keeps the identity it was started with: it binds the sockets (and chowns a
unix socket per --socket-owner) before any worker exists, and as root it can still reopen
root-owned log files on USR1 and re-exec itself on HUP. Each worker drops to --user/--group
right after fork, before any hook or application code runs in it (with --preload the
application was imported by the supervisor, as in gunicorn and PHP-FPM's master).

Workers running as root get a loud warning; ``--user root`` is refused without
``--allow-root`` (config.py), so running as root is either an accident that is reported or a
choice that is spelled out.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass

from fcgiserver.config import Config

log = logging.getLogger("fcgiserver.privileges")


class PrivilegeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str


def worker_identity(config: Config) -> Identity | None:
    """Who workers run as; None = as the supervisor."""
    if config.user is None:
        return None
    try:
        entry = pwd.getpwuid(config.user)
    except KeyError:
        if config.group is None:
            raise PrivilegeError(f"--user {config.user}: no such user, so give --group too") from None
        return Identity(config.user, config.group, (config.group,), str(config.user))
    gid = entry.pw_gid if config.group is None else config.group
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Identity(config.user, gid, groups, entry.pw_name)


def check_identity(config: Config, *, warn: bool = True) -> Identity | None:
    """In the supervisor, before the first fork: can workers become who they should be?"""
    identity = worker_identity(config)
    euid = os.geteuid()
    if identity is None:
        if euid == 0 and warn:
            log.warning("workers will run as root: give --user (and --group) to run them unprivileged")
        return None
    if euid != 0 and identity.uid != euid:
        raise PrivilegeError(f"--user {identity.name}: only root can start workers as another user")
    if identity.uid == 0 and warn:
        log.warning("workers run as root (--user root --allow-root)")
    return identity


def drop_to(identity: Identity) -> None:
    """In a worker: supplementary groups, then gid, then uid (after setuid the rest is refused)."""
    if os.geteuid() == 0:
        os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    if identity.uid != 0 and os.geteuid() == 0:
        raise PrivilegeError("still root after setuid()")
