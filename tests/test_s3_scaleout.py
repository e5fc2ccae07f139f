"""Several app hosts, one S3 store (docs/scale-out.md): SeaweedFS (`weed mini`) started here, three
fcgiserver hosts on 127.0.0.2-4 over TCP behind lighttpd (conf/lighttpd-scaleout.conf)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.s3store import S3Store, S3Transaction, check_store
from handlers.settings import SettingsError, load_settings
from handlers.storage import Facts, Record, Staged, StorageError, random_id
from tests.support.ceph import running_ceph
from tests.support.scaleout import running_scaleout
from tests.support.seaweed import Seaweed, running_seaweed
from tests.support.stack import http_request, multipart, noise_png, small_jpeg

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """SeaweedFS; Ceph RGW with FCGISERVER_TEST_STORE=ceph (make test-ceph)."""
    engine = running_ceph if os.environ.get("FCGISERVER_TEST_STORE") == "ceph" else running_seaweed
    with engine(tmp_path_factory.mktemp("store")) as running:
        yield running


def s3store(seaweed: Seaweed, scratch: Path, bucket: str | None = None) -> S3Store:
    return S3Store(seaweed.client(), bucket or seaweed.bucket, scratch, random_id, 16)


Result = tuple[int, dict[str, Any], bytes]
SEQUENCED = "tests.apps.upload_apps:sequenced"


def post(base: str, data: bytes, name: str = "p.jpg", ctype: str = "image/jpeg") -> tuple[int, Any]:
    body, content_type = multipart(name, ctype, data)
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    reply = http_request(base, "POST", "/upload", body, headers)
    try:
        answer = json.loads(reply.body)
    except ValueError:
        answer = {"raw": reply.body[:200].decode("latin-1")}
    return reply.status, answer


# ---- the store's create-only PUT, raced by 8 processes ----------------------------------------

def _racer(endpoint_bucket: tuple[str, str], key_prefix: str, rounds: int, barrier: Any, out: Any) -> None:
    import boto3
    from botocore.config import Config

    from tests.support.seaweed import ACCESS_KEY, SECRET_KEY

    wins: list[int] = []
    try:
        # No retries: a retried create after a lost answer would see its own object and lose.
        client = boto3.client("s3", endpoint_url=endpoint_bucket[0], aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        for n in range(rounds):
            barrier.wait(RACE_WAIT)
            try:
                client.put_object(Bucket=endpoint_bucket[1], Key=f"{key_prefix}{n}",
                                  Body=str(os.getpid()).encode(), IfNoneMatch="*")
                wins.append(n)
            except client.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "PreconditionFailed", e.response
    except BaseException as e:  # the test reports it, instead of waiting for a result that never comes
        barrier.abort()
        out.put(f"racer {os.getpid()} after {len(wins)} wins: {e!r}")
        raise
    out.put(wins)


# SeaweedFS makes a contended conditional write wait on its lock (losers often wait 1-2 s), so a
# round costs about a second: 60 rounds of 8 writers, as many as were run across two RGW gateways.
RACE_ROUNDS = 60
RACE_WAIT = 120.0


def race(buckets: list[tuple[str, str]], key_prefix: str, rounds: int = RACE_ROUNDS) -> list[int]:
    """Each of 8 processes (its bucket from ``buckets``, in turn) creates the same key every round
    at once; returns how many won each round."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(buckets[i % len(buckets)], key_prefix, rounds, barrier, out))
             for i in range(8)]
    for p in procs:
        p.start()
    wins = [0] * rounds
    for _ in procs:
        result = out.get(timeout=rounds * RACE_WAIT)
        assert isinstance(result, list), result
        for n in result:
            wins[n] += 1
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return wins


def test_create_only_put_has_exactly_one_winner_per_round(store: Seaweed) -> None:
    wins = race([(store.endpoint, store.bucket)], "race/one/")
    assert wins == [1] * RACE_ROUNDS


def test_the_race_check_fails_when_the_writers_use_two_separate_stores(store: Seaweed) -> None:
    # Negative control: the same check, with half of the writers on another bucket, sees two winners.
    store.make_bucket("other")
    wins = race([(store.endpoint, store.bucket), (store.endpoint, "other")], "race/two/")
    assert wins == [2] * RACE_ROUNDS


# ---- three hosts behind lighttpd ----------------------------------------------------------------

def test_uploads_through_the_front_land_in_the_store_and_come_back_byte_for_byte(
        store: Seaweed, tmp_path: Path) -> None:
    with running_scaleout(tmp_path, store, env={"UPLOAD_LARGE_BYTES": "50000"}) as farm:
        base = farm.front.base_url
        s3 = s3store(store, tmp_path / "check")
        small = small_jpeg(7)
        status, answer = post(base, small)
        assert status == 201, (answer, farm.logs())
        pic = answer["files"][0]
        stored = s3.read(f"pictures/{pic['id']}.jpg")
        assert stored is not None and len(stored) == pic["bytes"]
        # Served by the front from the store (the app does not know this path on S3 alone).
        got = http_request(base, "GET", pic["url"])
        assert (got.status, got.body) == (200, stored), farm.logs()
        assert got.header("cache-control") == "public, max-age=31536000, immutable"
        thumb = http_request(base, "GET", pic["thumbnail_url"])
        assert (thumb.status, thumb.body) == (200, s3.read(f"thumbs/{pic['id']}.jpg"))
        # The store's private keys are not reachable through the front.
        assert http_request(base, "GET", f"/{store.bucket}/meta/{pic['id']}.json").status in (403, 404)
        assert http_request(base, "GET", f"/{store.bucket}/pictures/{pic['id']}.jpg").status in (403, 404)

        # Same bytes again: its own id and key, its own copy, served alike.
        status, again = post(base, small)
        assert status == 201
        twin = again["files"][0]
        assert twin["id"] != pic["id"] and twin["delete_token"] != pic["delete_token"]
        assert http_request(base, "GET", twin["url"]).body == stored

        big = noise_png(80_000, seed=3)
        status, answer = post(base, big, "big.png", "image/png")
        assert status == 201, answer
        large = answer["files"][0]
        assert large["large"] and large["url"].startswith(f"/l/{large['id']}.png?")
        link = http_request(base, "GET", large["url"])
        assert link.status == 302, link
        location = urllib.parse.urlsplit(link.header("location") or "")
        assert f"{location.scheme}://{location.netloc}" == base
        assert location.path == f"/{store.bucket}/large/{large['id']}.png"
        served = http_request(base, "GET", f"{location.path}?{location.query}")
        assert (served.status, served.body) == (200, s3.read(f"large/{large['id']}.png")), farm.logs()
        assert hashlib.sha256(served.body).hexdigest() == json.loads(
            s3.read(f"meta/{large['id']}.json") or b"{}")["served_sha256"]
        tampered = location.query.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert http_request(base, "GET", f"{location.path}?{tampered}").status == 403
        assert http_request(base, "GET", f"/{store.bucket}/large/{large['id']}.png").status == 403

        deleted = http_request(base, "POST", f"/{pic['id']}/delete", b"",
                               {"X-Delete-Token": pic["delete_token"], "Accept": "application/json"})
        assert deleted.status == 200
        assert http_request(base, "GET", pic["url"]).status in (403, 404)
        assert http_request(base, "GET", twin["url"]).body == stored
        assert check_store(s3, deep=True) == []


def _upload_many(base: str, count: int, threads: int, seed0: int) -> list[Result]:
    def one(n: int) -> Result:
        data = small_jpeg(seed0 + n, (64 + n % 7, 48))
        status, answer = post(base, data)
        return status, answer, data

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def collisions(store: Seaweed, buckets: list[str], results: list[Result]) -> list[str]:
    """What breaks "one winner per id, nothing overwritten": an id handed out twice, or an id
    whose record (in any bucket) is not of the bytes its uploader sent."""
    problems, seen = [], {}
    for status, answer, data in results:
        if status != 201:
            problems.append(f"upload failed: {status} {answer}")
            continue
        pid = answer["files"][0]["id"]
        if pid in seen:
            problems.append(f"id {pid} handed out twice")
        seen[pid] = hashlib.sha256(data).hexdigest()
    client = store.client()
    for pid, sha in seen.items():
        for bucket in buckets:
            listed = client.list_objects_v2(Bucket=bucket, Prefix=f"meta/{pid}.").get("Contents", [])
            with_record = [json.loads(client.get_object(Bucket=bucket, Key=k["Key"])["Body"].read())
                           for k in listed]
            problems += [f"id {pid} holds other bytes" for r in with_record if r["sha256"] != sha
                         and pid not in {p for p, s in seen.items() if s == r["sha256"]}]
    return problems


def test_forced_id_collisions_across_hosts_have_one_winner_and_overwrite_nothing(
        store: Seaweed, tmp_path: Path) -> None:
    # 8 workers on 3 hosts (3 + 3 + 2), each drawing the same id sequence: every id is raced for.
    store.make_bucket("collide")
    with running_scaleout(tmp_path, store, workers=(3, 3, 2), app=SEQUENCED,
                          bucket="collide", env={"UPLOAD_ID_TRIES": "1000"}) as farm:
        results = _upload_many(farm.front.base_url, 200, 8, 0)
        assert collisions(store, ["collide"], results) == [], farm.logs()
        ids = sorted(r[1]["files"][0]["id"] for r in results)
        assert len(set(ids)) == 200
        assert check_store(s3store(store, tmp_path / "check", "collide"), deep=True) == []


def test_the_collision_check_fails_when_hosts_use_two_separate_stores(store: Seaweed, tmp_path: Path) -> None:
    # Negative control: one host on another bucket wins the ids the other two win too.
    for bucket in ("split-a", "split-b"):
        store.make_bucket(bucket)
    tries = {"UPLOAD_ID_TRIES": "1000"}
    with running_scaleout(tmp_path / "a", store, hosts=("127.0.0.2",), app=SEQUENCED,
                          bucket="split-a", env=tries) as a, \
            running_scaleout(tmp_path / "b", store, hosts=("127.0.0.3",), app=SEQUENCED,
                             bucket="split-b", env=tries) as b:
        results = _upload_many(a.front.base_url, 10, 2, 0) + _upload_many(b.front.base_url, 10, 2, 100)
    problems = collisions(store, ["split-a", "split-b"], results)
    assert any("handed out twice" in p for p in problems)
    assert any("holds other bytes" in p for p in problems)


def test_killing_one_app_host_under_load_loses_only_its_in_flight_requests(
        store: Seaweed, tmp_path: Path) -> None:
    store.make_bucket("kill")
    with running_scaleout(tmp_path, store, bucket="kill") as farm:
        base, victim = farm.front.base_url, farm.hosts[0]
        killed_at: list[float] = []

        def kill_soon() -> None:
            time.sleep(1.5)
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_soon)
        killer.start()
        started = time.monotonic()
        results = _upload_many(base, 90, 6, 1000)
        killer.join()
        after = _upload_many(base, 12, 4, 2000)
        failed = [(s, a) for s, a, _ in results if s != 201]
        assert killed_at and time.monotonic() - started > 1.5
        # Only what the killed host had in hand: at most one request per worker (2) and per
        # connection lighttpd had open to it when it died.
        assert len(failed) <= 6, (failed, farm.logs())
        assert [s for s, _, _ in after] == [201] * 12, farm.logs()
        s3 = s3store(store, tmp_path / "check", "kill")
        for status, answer, _data in results + after:
            if status == 201:
                pic = answer["files"][0]
                assert http_request(base, "GET", pic["url"]).body == s3.read(f"pictures/{pic['id']}.jpg")
        # What the dead host's requests left is decided once their leases run out, and the
        # decisions are dropped a lease later.
        s3.recover(full=True, now=time.time() + 3600)
        s3.recover(full=True, now=time.time() + 7200)
        assert check_store(s3, deep=True) == []


# ---- the commit protocol on the store -------------------------------------------------------------

def _staged(txn: S3Transaction, seed: int) -> Staged:
    picture, thumb = txn.write_temp(small_jpeg(seed)), txn.write_temp(small_jpeg(seed, (20, 15)))
    facts = Facts(ext="jpg", format="JPEG", width=320, height=240, size=picture.stat().st_size,
                  large=False, served_sha256=hashlib.sha256(picture.read_bytes()).hexdigest(),
                  thumb_width=20, thumb_height=15)
    return Staged(txn.claim_id(), hashlib.sha256(b"%d" % seed).hexdigest(), picture, thumb, facts)


class Died(Exception):
    pass


def _die(intent: object) -> list[Record]:
    raise Died


def test_a_dead_request_after_its_commit_point_is_published_whole_by_recovery(
        store: Seaweed, tmp_path: Path) -> None:
    store.make_bucket("dead-committed")
    s3 = s3store(store, tmp_path / "scratch", "dead-committed")
    txn = s3.begin()
    staged = [_staged(txn, n) for n in (1, 2, 3)]
    # Dies right after its commit point: the intent is there, nothing is published.
    real_roll = s3.roll_forward
    s3.roll_forward = _die  # type: ignore[method-assign]
    with pytest.raises(Died):
        txn.commit(staged)
    s3.roll_forward = real_roll  # type: ignore[method-assign]
    assert all(s3.lookup(s.pid) is None for s in staged)
    first = staged[0].picture.read_bytes()
    assert s3.recover(full=True) == []  # its lease runs: it may be alive, only slow
    done = s3.recover(full=True, now=time.time() + 3600)
    assert f"txn/{txn.txid}" in done
    assert all(s3.lookup(s.pid) is not None for s in staged)
    assert s3.read(f"pictures/{staged[0].pid}.jpg") == first
    assert list(s3.scratch.iterdir()) == []  # its scratch files went with it
    assert check_store(s3, deep=True) == []


def test_a_request_whose_lease_ran_out_is_aborted_once_and_its_late_commit_refused(
        store: Seaweed, tmp_path: Path) -> None:
    store.make_bucket("late")
    s3 = s3store(store, tmp_path / "scratch", "late")
    txn = s3.begin()
    staged = [_staged(txn, n) for n in (4, 5)]
    # Recovery takes the request for dead (its owner only stalled) and decides: aborted.
    assert f"txn/{txn.txid}" in s3.recover(full=False, now=time.time() + 3600)
    txn.expires = time.time() + 3600  # the stalled owner does not know
    with pytest.raises(StorageError) as refused:
        txn.commit(staged)
    assert refused.value.status == 503
    assert all(s3.lookup(s.pid) is None for s in staged)
    # Still refused while the decision is kept, however often recovery runs meanwhile.
    assert s3.recover(full=False, now=time.time() + 60) == []
    assert not s3.create(f"txn/{txn.txid}.commit", b"[]")
    txn.close()
    # Its claims stay taken: an id is never handed out twice.
    assert all(s3.exists(f"ids/{s.pid}") for s in staged)
    assert check_store(s3, deep=True) == []


def test_upload_storage_names_a_file_root_or_an_s3_bucket_and_nothing_else() -> None:
    assert load_settings({"UPLOAD_STORAGE": "file:///srv/pictures"}).root == Path("/srv/pictures")
    assert load_settings({"UPLOAD_STORAGE": "file:///srv/pictures"}).storage == ""
    url = "s3://media?endpoint=http://127.0.0.1:8333"
    assert load_settings({"UPLOAD_STORAGE": url, "UPLOAD_SECRET": "x" * 32}).storage == url
    with pytest.raises(SettingsError, match="UPLOAD_STORAGE"):
        load_settings({"UPLOAD_STORAGE": "ftp://media"})
    # Every host must sign links alike: a secret made up by one host would not do.
    with pytest.raises(SettingsError, match="UPLOAD_SECRET"):
        load_settings({"UPLOAD_STORAGE": "s3://media?endpoint=http://127.0.0.1:8333"})


def test_nginx_serves_pictures_from_the_store_through_its_cache_and_large_ones_by_x_accel(
        store: Seaweed, tmp_path: Path) -> None:
    with running_scaleout(tmp_path, store, front="nginx", env={"UPLOAD_LARGE_BYTES": "50000"}) as farm:
        base = farm.front.base_url
        s3 = s3store(store, tmp_path / "check")
        status, answer = post(base, small_jpeg(11))
        assert status == 201, (answer, farm.logs())
        pic = answer["files"][0]
        stored = s3.read(f"pictures/{pic['id']}.jpg")
        first, second = http_request(base, "GET", pic["url"]), http_request(base, "GET", pic["url"])
        assert (first.status, first.body, second.body) == (200, stored, stored), farm.logs()
        assert (first.header("x-cache-status"), second.header("x-cache-status")) == ("MISS", "HIT")
        assert http_request(base, "GET", pic["thumbnail_url"]).body == s3.read(f"thumbs/{pic['id']}.jpg")

        status, answer = post(base, noise_png(80_000, seed=4), "big.png", "image/png")
        assert status == 201, answer
        large = answer["files"][0]
        served = http_request(base, "GET", large["url"])
        assert (served.status, served.body) == (200, s3.read(f"large/{large['id']}.png")), farm.logs()
        assert served.header("x-accel-redirect") is None
        # The internal location is not reachable from outside, and a bad app link stays refused.
        assert http_request(base, "GET", f"/_s3/{store.bucket}/large/{large['id']}.png").status == 404
        assert http_request(base, "GET", large["url"].replace("s=", "s=0")).status == 403
        assert check_store(s3, deep=True) == []


def test_the_scale_out_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = Path(__file__).resolve().parent.parent / "conf" / "fcgiserver-scaleout.service"
    text = unit.read_text()
    assert "--bind ${FCGISERVER_BIND}" in text and "--hooks handlers.upload" in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/fcgiserver/.venv/bin/fcgiserver", f"{sys.executable} -m fcgiserver"))
    verify = shutil.which("systemd-analyze") or "systemd-analyze"
    result = subprocess.run([verify, "verify", "--man=no", unit.name],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
