"""A single-node Ceph RGW for tests (`make test-ceph`): Debian's ceph-mon, ceph-osd (memstore: the
objects live in the OSD's memory) and radosgw, in the foreground under a temp dir, with cephx
keys made here, on free ports; stopped on exit. Answers like tests.support.seaweed.Seaweed."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, wait_for_bucket
from tests.support.server import free_port, stop_group

_KEYS = (
    ("mon.", ("mon", "allow *")),
    ("client.admin", ("mon", "allow *", "osd", "allow *", "mgr", "allow *")),
    ("osd.0", ("mon", "allow profile osd", "osd", "allow *")),
    ("client.rgw", ("mon", "allow rw", "osd", "allow rwx")),
)


def _conf(root: Path, mon_port: int) -> str:
    return f"""[global]
fsid = {uuid.uuid4()}
mon host = v2:127.0.0.1:{mon_port}
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd objectstore = memstore
memstore device bytes = 1073741824
osd crush chooseleaf type = 0
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
mon data = {root}/mon/$name
osd data = {root}/osd/$name
keyring = {root}/keyring
mon warn on pool no redundancy = false
mon data avail warn = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
"""


@contextlib.contextmanager
def running_ceph(workdir: Path, bucket: str = "media", timeout: float = 120.0) -> Iterator[Seaweed]:
    root = workdir / "ceph"
    for sub in ("run", "log", "mon", "osd/osd.0", "rgw"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    conf = root / "ceph.conf"
    conf.write_text(_conf(root, mon_port))
    fsid = conf.read_text().split("fsid = ", 1)[1].split("\n", 1)[0]
    keyring = root / "keyring"

    def run(*args: str) -> None:
        subprocess.run(args, cwd=root, check=True, capture_output=True, timeout=60)

    for n, (name, caps) in enumerate(_KEYS):
        cap_args = [a for pair in zip(caps[::2], caps[1::2], strict=True) for a in ("--cap", *pair)]
        run("ceph-authtool", *(["--create-keyring"] if n == 0 else []), str(keyring), "--gen-key", "-n", name,
            *cap_args)
    monmap = str(root / "monmap")
    run("monmaptool", "--create", "--add", "a", f"v2:127.0.0.1:{mon_port}", "--fsid", fsid, monmap)
    run("ceph-mon", "-c", str(conf), "-i", "a", "--mkfs", "--monmap", monmap, "--keyring", str(keyring))
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        with (root / "log" / f"{args[0]}.out").open("ab") as out:
            proc = subprocess.Popen([*args, "-f", "-c", str(conf)], cwd=root, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start("ceph-mon", "-i", "a")
        run("timeout", "60", "ceph", "-c", str(conf), "osd", "create")
        run("ceph-osd", "-c", str(conf), "-i", "0", "--mkfs")
        start("ceph-osd", "-i", "0")
        run("timeout", "60", "ceph", "-c", str(conf), "osd", "crush", "add", "osd.0", "1.0", "host=localhost",
            "root=default")
        rgw = start("radosgw", "-n", "client.rgw", "--rgw-frontends", f"beast endpoint=127.0.0.1:{rgw_port}",
                    "--rgw-data", str(root / "rgw"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                run("timeout", "60", "radosgw-admin", "-c", str(conf), "-n", "client.admin", "user",
                    "create", "--uid=test", "--display-name=test", f"--access-key={ACCESS_KEY}",
                    f"--secret={SECRET_KEY}")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        store = Seaweed(f"http://127.0.0.1:{rgw_port}", bucket, rgw, root / "log" / "client.rgw.log")
        wait_for_bucket(store, timeout)
        yield store
    finally:
        for proc in reversed(procs):
            stop_group(proc, 20)
