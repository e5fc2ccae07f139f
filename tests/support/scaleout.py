"""Several app hosts behind one front, sharing one S3 store: fcgiserver on 127.0.0.2, .3, .4 (TCP),
lighttpd with conf/lighttpd-scaleout.conf balancing them and proxying pictures to the store.

    with running_seaweed(tmp_path) as store, running_scaleout(tmp_path, store) as farm:
        farm.front.base_url
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.frontends import CONF, Front, running_lighttpd, running_nginx
from tests.support.seaweed import AWS_ENV, Seaweed
from tests.support.server import ServerProcess, free_port, running_server

SCALEOUT_CONF = CONF / "lighttpd-scaleout.conf"
NGINX_SCALEOUT = CONF / "nginx-scaleout.conf"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SECRET = "one-secret-for-every-app-host-0123"


@dataclass
class Farm:
    front: Front
    hosts: list[ServerProcess]
    store: Seaweed
    env: dict[str, str]

    def logs(self) -> str:
        return self.front.logs() + "".join(f"\n--- {h.address}\n{h.log_text()[-3000:]}" for h in self.hosts)


def app_env(store: Seaweed, bucket: str, scratch: Path,
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**AWS_ENV, "UPLOAD_STORAGE": f"s3://{bucket}?endpoint={store.endpoint}",
            "UPLOAD_ROOT": str(scratch), "UPLOAD_SECRET": SECRET,
            # Hundreds of uploads from one address: the per-client limit is not under test here.
            "UPLOAD_RATE_PER_MINUTE": "0", **(extra or {})}


@contextlib.contextmanager
def running_scaleout(tmp_path: Path, store: Seaweed, *, hosts: tuple[str, ...] = HOSTS,
                     workers: int | tuple[int, ...] = 2, app: str = "handlers.upload:application",
                     bucket: str | None = None, env: Mapping[str, str] | None = None,
                     front: str = "lighttpd") -> Iterator[Farm]:
    """One fcgiserver per address in ``hosts``, each with its own scratch folder (nothing local
    is shared), and lighttpd in front; the front's port is chosen first, since the hosts sign
    presigned links for the front's origin."""
    front_port = free_port()
    # lighttpd redirects to presigned links the client follows through the front; nginx
    # fetches them itself from the store (X-Accel-Redirect), signed for the store's address.
    base_env = {"UPLOAD_STORE_PUBLIC_URL": f"http://127.0.0.1:{front_port}"} if front == "lighttpd" else \
        {"UPLOAD_SENDFILE": "x-accel", "UPLOAD_ACCEL_PREFIX": "/_s3/"}
    base_env.update(env or {})
    bucket = bucket or store.bucket
    counts = workers if isinstance(workers, tuple) else (workers,) * len(hosts)
    with contextlib.ExitStack() as stack:
        servers = []
        for n, host in enumerate(hosts):
            scratch = tmp_path / f"host{n}"
            servers.append(stack.enter_context(running_server(
                app, workers=counts[n], bind=f"{host}:{free_port(host)}", args=("--hooks", "handlers.upload"),
                env=app_env(store, bucket, scratch, base_env))))
        backends = " ".join(s.address for s in servers)
        host, _, port = store.endpoint.removeprefix("http://").partition(":")
        workdir = tmp_path / "front"
        workdir.mkdir(exist_ok=True)
        if front == "nginx":
            listed = workdir / "backends.conf"
            listed.write_text("".join(f"server {s.address};\n" for s in servers))
            started = stack.enter_context(running_nginx(
                workdir, socket_path="unused", template=NGINX_SCALEOUT, port=front_port,
                values={"BACKENDS_FILE": str(listed), "STORE": f"{host}:{port}", "BUCKET": bucket}))
        else:
            started = stack.enter_context(running_lighttpd(
                workdir, socket_path="unused", conf=SCALEOUT_CONF,
                env={"FCGISERVER_PORT": str(front_port), "FCGISERVER_BACKENDS": backends,
                     "UPLOAD_STORE_HOST": host, "UPLOAD_STORE_PORT": port, "UPLOAD_STORE_BUCKET": bucket}))
        yield Farm(started, servers, store, app_env(store, bucket, tmp_path / "scratch", base_env))
