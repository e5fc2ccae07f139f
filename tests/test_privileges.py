"""Workers drop to --user/--group; the supervisor binds first; root workers are never silent."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess

import psutil
import pytest

from fcgiserver.config import build_config
from fcgiserver.process.privileges import worker_identity
from tests.support.server import fcgi_request, running_server, server_command, short_tempdir

APP = "ops_apps:application"


@pytest.fixture(autouse=True)
def _as_root() -> None:
    # The tests run as root (make test installs Debian packages too); dropping privileges needs it.
    assert os.geteuid() == 0, "privilege tests must run as root"


def _nobody() -> tuple[int, int]:
    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


def test_identity_defaults_to_the_users_own_group() -> None:
    uid, _ = _nobody()
    identity = worker_identity(build_config({"app": APP, "user": "nobody"}))
    assert identity is not None
    assert (identity.uid, identity.gid) == (uid, pwd.getpwnam("nobody").pw_gid)
    assert identity.gid in identity.groups


def test_workers_run_as_user_and_group_while_the_supervisor_keeps_its_socket_usable() -> None:
    uid, gid = _nobody()
    args = ["--user", "nobody", "--group", "nogroup", "--socket-owner", "nobody:nogroup",
            "--socket-mode", "0660"]
    with running_server(APP, workers=2, args=args) as server:
        workers = server.worker_pids()
        assert len(workers) == 2
        for pid in workers:
            process = psutil.Process(pid)
            assert process.uids().real == process.uids().effective == uid
            assert process.gids().real == process.gids().effective == gid
        assert psutil.Process(server.pid).uids().effective == 0
        assert server.socket_path is not None
        st = os.stat(server.socket_path)
        assert (st.st_uid, st.st_gid) == (uid, gid)
        ids = json.loads(fcgi_request(server.address, "GET", "/ids").body)
        assert (ids["uid"], ids["gid"]) == (uid, gid)
        assert ids["groups"] == [gid]
        assert "workers will run as root" not in server.log_text()


def test_workers_started_as_root_without_user_get_a_loud_warning() -> None:
    with running_server(APP, workers=1) as server:
        assert server.wait_for_log("[WARNING] fcgiserver.privileges: workers will run as root", 10)


def test_user_root_is_refused_without_allow_root() -> None:
    directory = short_tempdir()
    try:
        cmd = server_command(APP, ["--bind", f"unix:{directory}/s.sock", "--user", "root"])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2
        assert "--allow-root" in proc.stderr
        assert not os.path.exists(f"{directory}/s.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_user_root_with_allow_root_runs_and_says_so() -> None:
    with running_server(APP, workers=1, args=["--user", "root", "--allow-root"]) as server:
        [pid] = server.worker_pids()
        assert psutil.Process(pid).uids().effective == 0
        assert server.wait_for_log("workers run as root (--user root --allow-root)", 10)
