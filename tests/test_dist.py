"""`make dist`, installed as a user would: the server's wheel brings psutil alone, and the upload
service's wheel brings its dependencies and page assets, enough to run the whole stack
(lighttpd + fcgiserver + the upload service) from site-packages, outside the checkout."""

from __future__ import annotations

import contextlib
import email
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.frontends import ROOT, running_lighttpd
from tests.support.server import fcgi_request, short_tempdir, stop_group, wait_until
from tests.support.stack import http_request, make_media_root, multipart, small_jpeg

DIST = ROOT / "dist"
VERSION = "0.1.0"
# The server's wheel is built for this platform: it carries the compiled accelerators.
SERVER_WHEEL = f"fcgiserver-{VERSION}-cp{sys.version_info[0]}{sys.version_info[1]}-*.whl"
UPLOAD_WHEEL = f"fcgiserver_upload-{VERSION}-py3-none-any.whl"
SERVER_SDIST = f"fcgiserver-{VERSION}.tar.gz"
UPLOAD_SDIST = f"fcgiserver_upload-{VERSION}.tar.gz"
STATIC_FILES = ("upload.css", "upload.js")


@pytest.fixture(scope="module")
def dist() -> Path:
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "dist"]
    if not (ROOT / ".venv" / ".stamp").exists():
        # A virtualenv made by hand: use it as it is rather than reinstall into it.
        cmd[1:1] = ["-o", ".venv/.stamp"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(p.name for p in DIST.iterdir())
    assert len(names) == 4 and [p.name for p in DIST.glob(SERVER_WHEEL)], names
    assert {SERVER_SDIST, UPLOAD_WHEEL, UPLOAD_SDIST} <= set(names), names
    return DIST


def server_wheel(dist: Path) -> Path:
    [wheel] = dist.glob(SERVER_WHEEL)
    return wheel


def wheel_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return sorted(z.namelist())


def requirements(path: Path) -> list[str]:
    """The wheel's Requires-Dist lines that apply without an extra."""
    with zipfile.ZipFile(path) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    return sorted(r.lower() for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r)


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the installed packages only, never the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=clean_env())


def make_venv(where: Path, wheelhouse: Path, *requirements: str) -> Path:
    """A virtualenv with `requirements` from dist/ and the wheelhouse only; its python."""
    done = run([sys.executable, "-m", "venv", "--without-pip", str(where)], where.parent)
    assert done.returncode == 0, done.stderr
    python = where / "bin" / "python"
    # This virtualenv's pip installs into the new one: no pip of its own to set up.
    done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
                "--find-links", str(DIST), "--find-links", str(wheelhouse), *requirements], where.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def installed(python: Path, cwd: Path) -> set[str]:
    done = run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"], cwd)
    assert done.returncode == 0, done.stderr
    # Normalised as PEP 503 does (pip lists pillow-heif as "pillow_heif").
    return {re.sub(r"[-_.]+", "-", row["name"]).lower() for row in json.loads(done.stdout)}


def importable(python: Path, module: str, cwd: Path) -> str | None:
    """Where `module` is imported from in that virtualenv, or None when it is not there."""
    done = run([str(python), "-c", f"import {module}; print({module}.__file__)"], cwd)
    return done.stdout.strip() if done.returncode == 0 else None


def test_dist_builds_a_server_wheel_without_the_upload_service_and_an_upload_wheel_with_its_assets(
        dist: Path) -> None:
    server = wheel_names(server_wheel(dist))
    upload = wheel_names(dist / UPLOAD_WHEEL)
    print(f"{SERVER_WHEEL}:", *server, f"{UPLOAD_WHEEL}:", *upload, sep="\n  ")
    assert all(n.startswith(("fcgiserver/", f"fcgiserver-{VERSION}.dist-info/")) for n in server), server
    assert {"fcgiserver/cli.py", "fcgiserver/py.typed", "fcgiserver/protocol/records.py"} <= set(server)
    for compiled in ("fcgiserver/protocol/_speedups.", "fcgiserver/shm/_slotstore.", "fcgiserver/net/_conn.",
                     "fcgiserver/wsgi/_bridge."):
        assert [n for n in server if n.startswith(compiled) and n.endswith(".so")], server
    assert requirements(server_wheel(dist)) == ["psutil>=5.9"]

    assert all(n.startswith(("handlers/", f"fcgiserver_upload-{VERSION}.dist-info/")) for n in upload), upload
    sources = {f"handlers/{p.relative_to(ROOT / 'handlers')}" for p in (ROOT / "handlers").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sources <= set(upload), sorted(sources - set(upload))
    assert {f"handlers/static/{name}" for name in STATIC_FILES} <= set(upload)
    assert requirements(dist / UPLOAD_WHEEL) == [
        f"fcgiserver=={VERSION}", "multipart>=1.3", "pillow-heif>=1.0", "pillow>=11.3"]

    with tarfile.open(dist / SERVER_SDIST) as t:
        names = t.getnames()
    assert not [n for n in names if "/handlers/" in n or "/tests/" in n], names
    # An sdist builds the accelerator where it is installed: its source and setup.py go along.
    top = f"fcgiserver-{VERSION}"
    assert {f"{top}/setup.py", f"{top}/fcgiserver/protocol/_speedups.c",
            f"{top}/fcgiserver/shm/_slotstore.c", f"{top}/fcgiserver/net/_conn.c",
            f"{top}/fcgiserver/wsgi/_bridge.c"} <= set(names), names
    with tarfile.open(dist / UPLOAD_SDIST) as t:
        members = {m.name: m for m in t.getmembers()}
    for name in STATIC_FILES:
        # A real file, not the link the build folder uses.
        assert members[f"fcgiserver_upload-{VERSION}/handlers/static/{name}"].isfile()


@pytest.fixture(scope="module")
def wheelhouse(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party wheels the two distributions need (from pip's cache when it has them)."""
    where = tmp_path_factory.mktemp("wheelhouse")
    needed = sorted({r for w in (server_wheel(dist), dist / UPLOAD_WHEEL) for r in requirements(w)
                     if not r.startswith("fcgiserver")})
    done = run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                "--dest", str(where), *needed], where)
    assert done.returncode == 0, done.stdout + done.stderr
    return where


def test_the_server_alone_installs_with_psutil_only(dist: Path, wheelhouse: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "server-venv", wheelhouse, "fcgiserver")
    assert installed(python, tmp_path) == {"fcgiserver", "psutil"}
    for module in ("PIL", "multipart", "handlers"):
        assert importable(python, module, tmp_path) is None, module
    version = run([str(python.parent / "fcgiserver"), "--version"], tmp_path)
    assert version.stdout.strip() == f"fcgiserver {VERSION}", version.stderr


@contextlib.contextmanager
def installed_server(python: Path, cwd: Path, media: Path) -> Iterator[str]:
    """The installed fcgiserver hosting the installed upload service; its socket address."""
    sock_dir = Path(short_tempdir())
    address = f"unix:{sock_dir}/s.sock"
    env = dict(clean_env(), UPLOAD_ROOT=str(media))
    with open(cwd / "fcgiserver.log", "wb") as log:
        proc = subprocess.Popen([str(python.parent / "fcgiserver"), "--bind", address, "--workers", "2",
                                 "handlers.upload:application"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def serving() -> bool:
            assert proc.poll() is None, (cwd / "fcgiserver.log").read_text()
            with contextlib.suppress(OSError):
                return fcgi_request(address, timeout=5).status == 200
            return False

        assert wait_until(serving, 60), (cwd / "fcgiserver.log").read_text()
        yield address
    finally:
        stop_group(proc)
        for p in sock_dir.iterdir():
            p.unlink()
        sock_dir.rmdir()


def test_the_upload_service_installs_with_its_assets_and_runs_the_whole_stack(
        dist: Path, wheelhouse: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "upload-venv", wheelhouse, "fcgiserver[upload]")
    assert {"fcgiserver", "fcgiserver-upload", "psutil", "pillow", "pillow-heif", "multipart"} <= installed(
        python, tmp_path)
    site = str(tmp_path / "upload-venv")
    for module in ("fcgiserver", "handlers", "handlers.upload", "PIL", "pillow_heif", "multipart"):
        where = importable(python, module, tmp_path)
        assert where is not None and where.startswith(site), (module, where)

    # The page assets, found the way scripts/render-conf.py finds them for nginx.
    where_static = "import importlib.resources as r; print(r.files('handlers') / 'static')"
    static = Path(run([str(python), "-c", where_static], tmp_path).stdout.strip())
    assert str(static).startswith(site) and static.is_dir()
    template = tmp_path / "t.conf"
    template.write_text("alias @STATIC_DIR@/;\n")
    rendered = run([str(python), str(ROOT / "scripts" / "render-conf.py"), str(template), "-"], tmp_path)
    assert rendered.stdout == f"alias {static}/;\n", rendered.stderr

    media = make_media_root(tmp_path.resolve() / "media")
    with installed_server(python, tmp_path, media) as address, \
            running_lighttpd(tmp_path / "lighttpd", socket_path=address.removeprefix("unix:"),
                             upload_root=media, static_dir=static) as front:
        page = http_request(front.base_url, "GET", "/")
        assert page.status == 200 and b'name="file"' in page.body, front.logs()
        for name in STATIC_FILES:
            asset = http_request(front.base_url, "GET", f"/static/{name}")
            assert asset.status == 200, (name, front.logs())
            source = ROOT / "handlers" / "static" / name
            assert asset.body == (static / name).read_bytes() == source.read_bytes()
            assert f'/static/{name}"'.encode() in page.body

        picture = small_jpeg(7)
        body, ctype = multipart("photo.jpg", "image/jpeg", picture)
        reply = http_request(front.base_url, "POST", "/upload", body,
                             {"Content-Type": ctype, "Accept": "application/json"})
        assert reply.status == 201, (reply.body, front.logs())
        [record] = json.loads(reply.body)["files"]
        thumb = http_request(front.base_url, "GET", record["thumbnail_url"])
        assert thumb.status == 200 and thumb.header("content-type") == "image/jpeg"
        assert thumb.body.startswith(b"\xff\xd8")
        assert thumb.body == (media / "thumbs" / f"{record['id']}.jpg").read_bytes()
        stored = http_request(front.base_url, "GET", record["url"])
        assert stored.status == 200 and stored.body.startswith(b"\xff\xd8")
