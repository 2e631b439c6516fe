"""The S3 API (SPEC "S3 API (the front door)") against real, unchanged S3
clients: boto3, the aws CLI, rclone and truthound 3.2.0's own S3 store.

Every sidecar here has a ``file://`` primary and two ``file://`` replicas in
``sync`` mode, so a 200 means every target holds the bytes: each write is
checked on disk at ``stores/<target>/<bucket>/<key>`` (bucket ``results``
maps to walship keys ``results/...``). No mocks; loopback only.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import (
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET,
    S3_TARGETS,
    clean_env,
    skip_or_fail,
    wait_until,
)

MiB = 1024 * 1024


def blob(n: int, seed: object) -> bytes:
    return random.Random(str(seed)).randbytes(n)


def md5_hex(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def quoted_md5(b: bytes) -> str:
    return '"' + md5_hex(b) + '"'


def multipart_etag(parts: list[bytes]) -> str:
    return '"' + md5_hex(b"".join(hashlib.md5(p).digest() for p in parts)) + f'-{len(parts)}"'


def crc32_b64(b: bytes) -> str:
    return base64.b64encode(zlib.crc32(b).to_bytes(4, "big")).decode()


def error_of(exc) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a botocore ClientError."""
    r = exc.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r.get("Error", {}).get("Code", "")


def describe(exc) -> str:
    r = exc.response
    return (f"HTTP {r['ResponseMetadata']['HTTPStatusCode']} {r.get('Error')} "
            f"headers={r['ResponseMetadata'].get('HTTPHeaders')}")


def s3_error_xml(body: bytes) -> dict[str, str]:
    """The fields of an S3 ``<Error>`` document."""
    root = ET.fromstring(body)
    return {child.tag.split("}")[-1]: (child.text or "") for child in root}


@pytest.fixture
def sc(s3_sidecar):
    return s3_sidecar()


@pytest.fixture
def s3(sc):
    return sc.s3()


def put_all(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for k, v in objects.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v)


# ---------------------------------------------------------------- 1. objects


def test_boto3_put_get_head_and_range_keep_bytes_type_metadata_and_md5_etag(sc, s3):
    from botocore.exceptions import ClientError

    data = b"0123456789" * 1000 + b"tail"
    r = s3.put_object(Bucket="results", Key="a/b.txt", Body=data, ContentType="text/plain",
                      Metadata={"team": "core", "run-id": "42"},
                      CacheControl="max-age=60", ContentDisposition="inline")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["ETag"] == quoted_md5(data)
    sc.assert_on_every_target("results", "a/b.txt", data)

    g = s3.get_object(Bucket="results", Key="a/b.txt")
    assert g["Body"].read() == data
    assert g["ContentType"] == "text/plain"
    assert g["Metadata"] == {"team": "core", "run-id": "42"}
    assert g["ETag"] == quoted_md5(data)
    assert g["ContentLength"] == len(data)
    assert g["CacheControl"] == "max-age=60" and g["ContentDisposition"] == "inline"
    assert isinstance(g["LastModified"], datetime)

    h = s3.head_object(Bucket="results", Key="a/b.txt")
    assert (h["ContentType"], h["Metadata"], h["ETag"], h["ContentLength"]) == (
        "text/plain", {"team": "core", "run-id": "42"}, quoted_md5(data), len(data))
    assert h["LastModified"] == g["LastModified"]

    part = s3.get_object(Bucket="results", Key="a/b.txt", Range="bytes=2-5")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["Body"].read() == data[2:6]
    assert part["ContentRange"] == f"bytes 2-5/{len(data)}"
    assert part["ContentLength"] == 4
    tail = s3.get_object(Bucket="results", Key="a/b.txt", Range="bytes=-4")
    assert tail["Body"].read() == b"tail"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="results", Key="a/b.txt", Range=f"bytes={len(data)}-")
    assert error_of(e.value) == (416, "InvalidRange"), describe(e.value)

    # An overwrite replaces the bytes and the attributes everywhere.
    s3.put_object(Bucket="results", Key="a/b.txt", Body=b"second", ContentType="text/x-two")
    sc.assert_on_every_target("results", "a/b.txt", b"second")
    g = s3.get_object(Bucket="results", Key="a/b.txt")
    assert (g["Body"].read(), g["ContentType"], g["Metadata"]) == (b"second", "text/x-two", {})

    # The object is a walship key too: the HTTP API reads the same bytes.
    with sc.client() as c:
        assert c.get("results/a/b.txt").data == b"second"


# -------------------------------------------------------------- 2. listings

LIST_KEYS = ([f"list/a-{i:03d}" for i in range(20)]
             + ["list/dir1/x", "list/dir1/y", "list/dir2/z", "list/zz-1", "list/zz-2"])


def test_list_objects_v2_and_v1_page_every_key_once_in_order(sc, s3):
    assert len(LIST_KEYS) == 25
    objects = {k: k.encode() * 3 for k in LIST_KEYS}
    shuffled = list(objects.items())
    random.Random(7).shuffle(shuffled)
    for k, v in shuffled:
        s3.put_object(Bucket="results", Key=k, Body=v)
    s3.put_object(Bucket="results", Key="listx/outside", Body=b"not under list/")
    for k, v in objects.items():
        sc.assert_on_every_target("results", k, v)
    want = sorted(LIST_KEYS)

    # Paginator, 7 a page.
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="results", Prefix="list/", PaginationConfig={"PageSize": 7}))
    assert [len(p.get("Contents", [])) for p in pages] == [7, 7, 7, 4]
    listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert listed == want
    for p in pages:
        for o in p["Contents"]:
            assert o["Size"] == len(objects[o["Key"]]), o
            assert o["ETag"] == quoted_md5(objects[o["Key"]]), o

    # By hand, with ContinuationToken.
    got, token, rounds = [], None, 0
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="results", Prefix="list/", MaxKeys=7, **kw)
        rounds += 1
        assert r["KeyCount"] == len(r.get("Contents", [])) <= 7
        assert r["MaxKeys"] == 7
        got += [o["Key"] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            assert "NextContinuationToken" not in r
            break
        token = r["NextContinuationToken"]
        assert rounds < 10, "the listing does not end"
    assert got == want and rounds == 4

    # Delimiter: the sub-"directories" are CommonPrefixes, once each.
    r = s3.list_objects_v2(Bucket="results", Prefix="list/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == [k for k in want if k.count("/") == 1]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["list/dir1/", "list/dir2/"]
    assert r["IsTruncated"] is False
    # ... and paged: prefixes count toward MaxKeys, nothing twice.
    keys, prefixes, token = [], [], None
    for _ in range(10):
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="results", Prefix="list/", Delimiter="/", MaxKeys=7, **kw)
        page = r.get("Contents", []) + r.get("CommonPrefixes", [])
        assert len(page) <= 7
        keys += [o["Key"] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert keys == [k for k in want if k.count("/") == 1]
    assert prefixes == ["list/dir1/", "list/dir2/"]
    r = s3.list_objects_v2(Bucket="results", Prefix="list/dir1/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["list/dir1/x", "list/dir1/y"]
    assert "CommonPrefixes" not in r

    # StartAfter.
    r = s3.list_objects_v2(Bucket="results", Prefix="list/", StartAfter="list/a-015")
    assert [o["Key"] for o in r["Contents"]] == [k for k in want if k > "list/a-015"]
    assert len(r["Contents"]) == 9

    # The whole bucket: list/ and listx/.
    r = s3.list_objects_v2(Bucket="results")
    assert [o["Key"] for o in r["Contents"]] == want + ["listx/outside"]

    # ListObjects (v1) with Marker.
    got, marker = [], None
    for _ in range(10):
        kw = {"Marker": marker} if marker else {}
        r = s3.list_objects(Bucket="results", Prefix="list/", MaxKeys=7, **kw)
        page = [o["Key"] for o in r.get("Contents", [])]
        assert len(page) <= 7
        got += page
        if not r["IsTruncated"]:
            break
        marker = r.get("NextMarker") or page[-1]
    assert got == want
    r = s3.list_objects(Bucket="results", Prefix="list/", Marker="list/dir2/z")
    assert [o["Key"] for o in r["Contents"]] == ["list/zz-1", "list/zz-2"]
    r = s3.list_objects(Bucket="results", Prefix="list/", Delimiter="/", MaxKeys=10)
    assert r["IsTruncated"] is True and r.get("NextMarker"), r  # with a delimiter, S3 gives it
    assert [o["Key"] for o in r["Contents"]] == want[:10]
    r2 = s3.list_objects(Bucket="results", Prefix="list/", Delimiter="/", Marker=r["NextMarker"])
    assert ([o["Key"] for o in r.get("Contents", [])] + [o["Key"] for o in r2.get("Contents", [])]
            == [k for k in want if k.count("/") == 1])
    assert ([p["Prefix"] for p in r.get("CommonPrefixes", [])]
            + [p["Prefix"] for p in r2.get("CommonPrefixes", [])]) == ["list/dir1/", "list/dir2/"]

    # A key that needs url encoding in the listing (boto3 asks for
    # encoding-type=url and decodes) comes back exactly.
    odd = "enc/with space+plus&amp=1.txt"
    s3.put_object(Bucket="results", Key=odd, Body=b"odd")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="enc/")["Contents"]] == [odd]
    assert [o["Key"] for o in s3.list_objects(Bucket="results", Prefix="enc/")["Contents"]] == [odd]
    assert s3.get_object(Bucket="results", Key=odd)["Body"].read() == b"odd"
    sc.assert_on_every_target("results", odd, b"odd")


# --------------------------------------------- 3. copy, delete, not found


def test_copy_delete_and_missing_keys_and_buckets_answer_as_s3_does(sc, s3):
    from botocore.exceptions import ClientError

    names = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    assert names == ["fast", "results"]
    s3.head_bucket(Bucket="results")

    data = b"copy me " * 100
    s3.put_object(Bucket="results", Key="src/one", Body=data, ContentType="application/x-one",
                  Metadata={"origin": "src"})
    c = s3.copy_object(Bucket="results", Key="dst/one", CopySource={"Bucket": "results", "Key": "src/one"})
    assert c["CopyObjectResult"]["ETag"] == quoted_md5(data)
    sc.assert_on_every_target("results", "dst/one", data)
    h = s3.head_object(Bucket="results", Key="dst/one")
    assert (h["ContentType"], h["Metadata"], h["ETag"]) == (
        "application/x-one", {"origin": "src"}, quoted_md5(data))
    assert s3.get_object(Bucket="results", Key="dst/one")["Body"].read() == data
    # REPLACE takes the request's metadata instead.
    s3.copy_object(Bucket="results", Key="dst/two", CopySource="results/src/one",
                   MetadataDirective="REPLACE", ContentType="text/x-new", Metadata={"n": "2"})
    h = s3.head_object(Bucket="results", Key="dst/two")
    assert (h["ContentType"], h["Metadata"]) == ("text/x-new", {"n": "2"})
    sc.assert_on_every_target("results", "dst/two", data)
    # Across buckets.
    s3.copy_object(Bucket="fast", Key="copied", CopySource={"Bucket": "results", "Key": "src/one"})
    assert s3.get_object(Bucket="fast", Key="copied")["Body"].read() == data
    sc.wait_caught_up()
    sc.assert_on_every_target("fast", "copied", data)

    # DeleteObject.
    s3.delete_object(Bucket="results", Key="src/one")
    sc.assert_on_no_target("results", "src/one")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="results", Key="src/one")
    assert error_of(e.value)[0] == 404 and error_of(e.value)[1] in ("404", "NoSuchKey"), describe(e.value)

    # DeleteObjects: several keys (one that never existed is "deleted" too, as on S3).
    batch = {f"batch/{i}": f"batch {i}".encode() for i in range(5)}
    put_all(s3, "results", batch)
    for k, v in batch.items():
        sc.assert_on_every_target("results", k, v)
    r = s3.delete_objects(Bucket="results", Delete={
        "Objects": [{"Key": k} for k in list(batch)[:4]] + [{"Key": "batch/never"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(list(batch)[:4] + ["batch/never"])
    assert not r.get("Errors")
    for k in list(batch)[:4]:
        sc.assert_on_no_target("results", k)
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket="results", Key=k)
        assert error_of(e.value)[0] == 404 and error_of(e.value)[1] in ("404", "NoSuchKey")
    sc.assert_on_every_target("results", "batch/4", batch["batch/4"])
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="batch/")["Contents"]] == ["batch/4"]

    # Bucket operations: location; no CreateBucket/DeleteBucket unless
    # allowed; what is not implemented says so.
    assert s3.get_bucket_location(Bucket="results").get("LocationConstraint") in (None, "", S3_REGION)
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="brand-new")
    assert error_of(e.value)[0] in (403, 501), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="results")
    assert error_of(e.value)[0] in (403, 409, 501), describe(e.value)
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["fast", "results"]
    with pytest.raises(ClientError) as e:
        s3.put_bucket_versioning(Bucket="results", VersioningConfiguration={"Status": "Enabled"})
    assert error_of(e.value) == (501, "NotImplemented"), describe(e.value)

    # Missing keys and buckets.
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="results", Key="no/such/key")
    assert error_of(e.value) == (404, "NoSuchKey"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="no-such-bucket")
    assert error_of(e.value)[0] == 404 and error_of(e.value)[1] in ("404", "NoSuchBucket"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert error_of(e.value) == (404, "NoSuchBucket"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert error_of(e.value) == (404, "NoSuchBucket"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="results", Key="dst/x", CopySource="results/no/such/key")
    assert error_of(e.value) == (404, "NoSuchKey"), describe(e.value)
    sc.assert_on_no_target("results", "dst/x")


# --------------------------------------------------------------- 4. multipart


def test_multipart_upload_completes_to_the_same_bytes_on_every_target(sc, s3, tmp_path):
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    parts = [blob(5 * MiB, "p1"), blob(5 * MiB, "p2"), blob(2 * MiB + 12345, "p3")]
    whole = b"".join(parts)
    assert len(whole) >= 12 * MiB
    up = s3.create_multipart_upload(Bucket="results", Key="mp/big.bin",
                                    ContentType="application/x-big", Metadata={"kind": "mp"})
    uid = up["UploadId"]
    etags = []
    for n, p in enumerate(parts, start=1):
        r = s3.upload_part(Bucket="results", Key="mp/big.bin", UploadId=uid, PartNumber=n, Body=p)
        assert r["ETag"] == quoted_md5(p), n
        etags.append(r["ETag"])
    listed = s3.list_parts(Bucket="results", Key="mp/big.bin", UploadId=uid)
    assert [(x["PartNumber"], x["Size"], x["ETag"]) for x in listed["Parts"]] == [
        (n, len(p), e) for n, (p, e) in enumerate(zip(parts, etags), start=1)]
    ups = s3.list_multipart_uploads(Bucket="results")
    assert [(u["Key"], u["UploadId"]) for u in ups.get("Uploads", [])] == [("mp/big.bin", uid)]
    # Nothing is an object before Complete.
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="results", Key="mp/big.bin")
    assert error_of(e.value)[0] == 404
    sc.assert_on_no_target("results", "mp/big.bin")

    done = s3.complete_multipart_upload(
        Bucket="results", Key="mp/big.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                   for n, e in enumerate(etags, start=1)]})
    assert done["ETag"] == multipart_etag(parts)
    assert done["ETag"].endswith('-3"')
    sc.assert_on_every_target("results", "mp/big.bin", whole)
    g = s3.get_object(Bucket="results", Key="mp/big.bin")
    body = g["Body"].read()
    assert len(body) == len(whole) and body == whole
    assert (g["ETag"], g["ContentType"], g["Metadata"]) == (
        multipart_etag(parts), "application/x-big", {"kind": "mp"})
    assert s3.head_object(Bucket="results", Key="mp/big.bin")["ContentLength"] == len(whole)
    assert s3.list_multipart_uploads(Bucket="results").get("Uploads", []) == []

    # An aborted upload is gone and makes no object.
    other = s3.create_multipart_upload(Bucket="results", Key="mp/aborted")["UploadId"]
    s3.upload_part(Bucket="results", Key="mp/aborted", UploadId=other, PartNumber=1,
                   Body=blob(5 * MiB, "ab"))
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="results")["Uploads"]] == [other]
    s3.abort_multipart_upload(Bucket="results", Key="mp/aborted", UploadId=other)
    assert s3.list_multipart_uploads(Bucket="results").get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket="results", Key="mp/aborted", UploadId=other)
    assert error_of(e.value) == (404, "NoSuchUpload"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="results", Key="mp/aborted", UploadId=other,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etags[0]}]})
    assert error_of(e.value) == (404, "NoSuchUpload"), describe(e.value)
    sc.assert_on_no_target("results", "mp/aborted")

    # Over max_object_bytes (32 MiB here): EntityTooLarge, one put or a
    # completed upload, and nothing is written.
    with sc.client() as c:
        head = c.log()["head"]
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="results", Key="mp/too-big", Body=bytes(32 * MiB + 1))
    assert error_of(e.value) == (400, "EntityTooLarge"), describe(e.value)
    # (a new client: the refusal may have closed its connection, see
    # test_an_early_refusal_of_a_body_closes_the_connection_and_says_so)
    s3 = sc.s3()
    big = s3.create_multipart_upload(Bucket="results", Key="mp/too-big")["UploadId"]
    five = bytes(5 * MiB)
    with pytest.raises(ClientError) as e:  # refused at the part that passes it, or at Complete
        big_parts = [s3.upload_part(Bucket="results", Key="mp/too-big", UploadId=big, PartNumber=n,
                                    Body=five)["ETag"] for n in range(1, 8)]  # 35 MiB
        s3.complete_multipart_upload(
            Bucket="results", Key="mp/too-big", UploadId=big,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t}
                                       for n, t in enumerate(big_parts, start=1)]})
    assert error_of(e.value) == (400, "EntityTooLarge"), describe(e.value)
    with sc.client() as c:
        assert c.log()["head"] == head
    sc.assert_on_no_target("results", "mp/too-big")
    s3.abort_multipart_upload(Bucket="results", Key="mp/too-big", UploadId=big)

    # boto3's managed transfer: 5 MiB parts, several at once.
    f = tmp_path / "upload.bin"
    f.write_bytes(blob(12 * MiB, "upload_file"))
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3)
    s3.upload_file(str(f), "results", "mp/uploaded.bin", Config=cfg)
    sc.assert_on_every_target("results", "mp/uploaded.bin", f.read_bytes())
    h = s3.head_object(Bucket="results", Key="mp/uploaded.bin")
    assert h["ContentLength"] == 12 * MiB and h["ETag"].endswith('-3"'), h["ETag"]
    out = tmp_path / "downloaded.bin"
    s3.download_file("results", "mp/uploaded.bin", str(out), Config=cfg)  # ranged GETs
    assert out.read_bytes() == f.read_bytes()


def test_an_early_refusal_of_a_body_closes_the_connection_and_says_so(sc):
    """A body refused on its Content-Length alone (here with ``Expect:
    100-continue``, as botocore sends file bodies) is never read, so the
    connection cannot carry another request: the answer must say
    ``Connection: close``, else a client's pool reuses the closed connection
    and its next request fails (RemoteDisconnected; seen with boto3 after an
    EntityTooLarge put)."""
    import socket

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    n = 32 * MiB + 1
    req = AWSRequest(method="PUT", url=f"{sc.endpoint}/results/too-big", headers={
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Content-Length": str(n),
        "Expect": "100-continue"})
    SigV4Auth(Credentials(S3_ACCESS_KEY_ID, S3_SECRET), "s3", S3_REGION).add_auth(req)
    with socket.create_connection(("127.0.0.1", sc.s3_port), timeout=10) as sock:
        sock.sendall((f"PUT /results/too-big HTTP/1.1\r\nHost: 127.0.0.1:{sc.s3_port}\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
                      + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = sock.recv(65536)
            assert got, f"closed without an answer: {answer!r}"
            answer += got
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    if head.startswith("http/1.1 100"):
        return  # it reads the body first: the connection stays usable
    assert head.startswith("http/1.1 400"), head
    assert "connection: close" in head, (
        "answered before reading the body but without Connection: close:\n" + head)


def test_an_empty_file_put_leaves_the_connection_fit_for_the_next_put(sc):
    """botocore sends ``Expect: 100-continue`` with every file body, empty ones
    too. A final answer in place of ``100 Continue`` makes botocore (through
    1.43 at least, boto/botocore#3755) parse the next response on that pooled
    connection against the stale status line: no headers, no ETag, a stall.
    The aws CLI hits it syncing a tree with an empty file. S3 answers
    ``100 Continue`` first; so must we (or close the connection)."""
    import io

    s3 = sc.s3(read_timeout=30)
    e = s3.put_object(Bucket="results", Key="expect/empty", Body=io.BytesIO(b""))
    assert e["ETag"] == quoted_md5(b"")
    data = blob(2 * MiB, "after-empty")
    t = time.monotonic()
    r = s3.put_object(Bucket="results", Key="expect/next", Body=io.BytesIO(data))
    took = time.monotonic() - t
    assert r.get("ETag") == quoted_md5(data), (
        f"the put after an empty one came back without its ETag after {took:.1f} s: "
        f"headers {r['ResponseMetadata'].get('HTTPHeaders')}")
    sc.assert_on_every_target("results", "expect/empty", b"")
    sc.assert_on_every_target("results", "expect/next", data)


# ------------------------------------------------------- 5. conditional put


def test_conditional_put_and_get_are_decided_against_the_newest_version(sc, s3):
    from botocore.exceptions import ClientError

    members = s3.meta.service_model.operation_model("PutObject").input_shape.members
    if "IfNoneMatch" not in members or "IfMatch" not in members:
        import botocore

        skip_or_fail(f"botocore {botocore.__version__} has no IfNoneMatch/IfMatch on PutObject "
                     "(pip install -U boto3)")

    r = s3.put_object(Bucket="results", Key="cond/k", Body=b"first", IfNoneMatch="*")
    first = r["ETag"]
    assert first == quoted_md5(b"first")
    sc.assert_on_every_target("results", "cond/k", b"first")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="results", Key="cond/k", Body=b"again", IfNoneMatch="*")
    assert error_of(e.value) == (412, "PreconditionFailed"), describe(e.value)
    sc.assert_on_every_target("results", "cond/k", b"first")

    r = s3.put_object(Bucket="results", Key="cond/k", Body=b"second", IfMatch=first)
    assert r["ETag"] == quoted_md5(b"second")
    sc.assert_on_every_target("results", "cond/k", b"second")
    with pytest.raises(ClientError) as e:  # the old etag is no longer the newest
        s3.put_object(Bucket="results", Key="cond/k", Body=b"third", IfMatch=first)
    assert error_of(e.value) == (412, "PreconditionFailed"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="results", Key="cond/k", Body=b"third", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert error_of(e.value) == (412, "PreconditionFailed"), describe(e.value)
    sc.assert_on_every_target("results", "cond/k", b"second")
    assert s3.get_object(Bucket="results", Key="cond/k")["Body"].read() == b"second"

    # A deleted key is new again for If-None-Match.
    s3.delete_object(Bucket="results", Key="cond/k")
    s3.put_object(Bucket="results", Key="cond/k", Body=b"reborn", IfNoneMatch="*")
    sc.assert_on_every_target("results", "cond/k", b"reborn")

    # Only one of many racing If-None-Match puts of one new key wins.
    s3s = [sc.s3() for _ in range(6)]
    outcomes: list[object] = [None] * len(s3s)

    def race(i: int) -> None:
        try:
            s3s[i].put_object(Bucket="results", Key="cond/race", Body=f"racer {i}".encode(),
                              IfNoneMatch="*")
            outcomes[i] = "ok"
        except ClientError as ex:
            outcomes[i] = error_of(ex)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(s3s))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("ok") == 1, outcomes
    assert all(o == (412, "PreconditionFailed") for o in outcomes if o != "ok"), outcomes
    winner = outcomes.index("ok")
    sc.assert_on_every_target("results", "cond/race", f"racer {winner}".encode())

    # GET conditions.
    etag = quoted_md5(b"reborn")
    assert s3.get_object(Bucket="results", Key="cond/k", IfMatch=etag)["Body"].read() == b"reborn"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="results", Key="cond/k", IfMatch=first)
    assert error_of(e.value)[0] == 412, describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="results", Key="cond/k", IfNoneMatch=etag)
    assert error_of(e.value)[0] == 304, describe(e.value)
    modified = s3.head_object(Bucket="results", Key="cond/k")["LastModified"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="results", Key="cond/k", IfModifiedSince=modified)
    assert error_of(e.value)[0] == 304, describe(e.value)
    got = s3.get_object(Bucket="results", Key="cond/k", IfModifiedSince=modified - timedelta(days=1))
    assert got["Body"].read() == b"reborn"


# -------------------------------------------------------------------- 6. auth


def _urlopen(req) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_only_sigv4_signed_or_presigned_requests_are_served(sc, s3):
    from botocore.exceptions import ClientError

    s3.put_object(Bucket="results", Key="auth/k", Body=b"signed bytes")
    with sc.client() as c:
        head = c.log()["head"]

    bad = sc.s3(secret="not-the-secret")
    with pytest.raises(ClientError) as e:
        bad.get_object(Bucket="results", Key="auth/k")
    assert error_of(e.value) == (403, "SignatureDoesNotMatch"), describe(e.value)
    with pytest.raises(ClientError) as e:
        bad.put_object(Bucket="results", Key="auth/bad", Body=b"forged")
    assert error_of(e.value) == (403, "SignatureDoesNotMatch"), describe(e.value)
    with pytest.raises(ClientError) as e:
        sc.s3(access_key_id="someone-else").list_objects_v2(Bucket="results")
    assert error_of(e.value)[0] == 403, describe(e.value)

    # Unsigned: AccessDenied, for reads and writes.
    status, body = _urlopen(f"{sc.endpoint}/results/auth/k")
    assert status == 403, body
    assert s3_error_xml(body)["Code"] == "AccessDenied", body
    status, body = _urlopen(urllib.request.Request(f"{sc.endpoint}/results/auth/unsigned",
                                                   data=b"x", method="PUT"))
    assert status == 403 and s3_error_xml(body)["Code"] == "AccessDenied", (status, body)
    status, body = _urlopen(urllib.request.Request(
        f"{sc.endpoint}/results/auth/k", headers={"Authorization": "Bearer nope"}))
    assert status == 403 and s3_error_xml(body)["Code"] == "AccessDenied", (status, body)
    with sc.client() as c:
        assert c.log()["head"] == head, "a refused request appended to the log"
    for k in ("auth/bad", "auth/unsigned"):
        sc.assert_on_no_target("results", k)

    # Presigned GET and PUT, fetched by a client that knows nothing of S3.
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "results", "Key": "auth/k"},
                                    ExpiresIn=300)
    assert "X-Amz-Signature=" in url
    assert _urlopen(url) == (200, b"signed bytes")
    tampered = url.replace("auth/k", "auth/K")
    status, body = _urlopen(tampered)
    assert status == 403 and s3_error_xml(body)["Code"] == "SignatureDoesNotMatch", (status, body)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "results", "Key": "auth/presigned"},
                                        ExpiresIn=300)
    status, body = _urlopen(urllib.request.Request(put_url, data=b"via presigned put", method="PUT"))
    assert status == 200, body
    sc.assert_on_every_target("results", "auth/presigned", b"via presigned put")
    assert s3.get_object(Bucket="results", Key="auth/presigned")["Body"].read() == b"via presigned put"

    short = s3.generate_presigned_url("get_object", Params={"Bucket": "results", "Key": "auth/k"},
                                      ExpiresIn=1)
    time.sleep(2.5)
    status, body = _urlopen(short)
    assert status == 403 and s3_error_xml(body)["Code"] == "AccessDenied", (status, body)


# --------------------------------------------------------------- 7. checksums


def test_checksums_are_checked_on_the_way_in_and_crc32_given_back(sc, s3):
    from botocore.exceptions import ClientError

    data = blob(100_000, "crc")
    r = s3.put_object(Bucket="results", Key="sum/crc", Body=data, ChecksumAlgorithm="CRC32")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    sc.assert_on_every_target("results", "sum/crc", data)
    g = s3.get_object(Bucket="results", Key="sum/crc", ChecksumMode="ENABLED")
    assert g["Body"].read() == data
    assert g.get("ChecksumCRC32") == crc32_b64(data), g["ResponseMetadata"]["HTTPHeaders"]
    h = s3.head_object(Bucket="results", Key="sum/crc", ChecksumMode="ENABLED")
    assert h.get("ChecksumCRC32") == crc32_b64(data)

    # Given (not computed by botocore) and right: accepted.
    s3.put_object(Bucket="results", Key="sum/given", Body=data, ChecksumCRC32=crc32_b64(data))
    s3.put_object(Bucket="results", Key="sum/md5", Body=data,
                  ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode())
    sc.assert_on_every_target("results", "sum/given", data)
    sc.assert_on_every_target("results", "sum/md5", data)

    with sc.client() as c:
        head = c.log()["head"]
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="results", Key="sum/bad-md5", Body=data,
                      ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode())
    assert error_of(e.value) == (400, "BadDigest"), describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="results", Key="sum/bad-crc", Body=data,
                      ChecksumCRC32=crc32_b64(b"other"))
    assert error_of(e.value)[0] == 400, describe(e.value)
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket="results", Key="sum/mp",
                       UploadId=s3.create_multipart_upload(Bucket="results", Key="sum/mp")["UploadId"],
                       PartNumber=1, Body=data,
                       ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode())
    assert error_of(e.value) == (400, "BadDigest"), describe(e.value)
    with sc.client() as c:
        assert c.log()["head"] == head, "a put with a wrong digest appended to the log"
    for k in ("sum/bad-md5", "sum/bad-crc"):
        sc.assert_on_no_target("results", k)
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket="results", Key=k)
        assert error_of(e.value)[0] == 404


# ----------------------------------------------------------- 8. x-walship-mode


def _with_header(client, op: str, name: str, value: str):
    def add(request, **_kw):
        request.headers[name] = value

    client.meta.events.register(f"before-sign.s3.{op}", add)
    return client


def test_x_walship_mode_header_overrides_the_mode_and_a_bad_one_is_refused(s3_sidecar):
    from botocore.exceptions import ClientError

    sc = s3_sidecar(sync_timeout_seconds=3.0)
    # The async bucket with x-walship-mode: sync: on every target at the 200.
    synced = _with_header(sc.s3(), "PutObject", "x-walship-mode", "sync")
    synced.put_object(Bucket="fast", Key="mode/sync", Body=b"sync write")
    sc.assert_on_every_target("fast", "mode/sync", b"sync write")

    with sc.client() as c:
        head = c.log()["head"]
    bad = _with_header(sc.s3(), "PutObject", "x-walship-mode", "nope")
    with pytest.raises(ClientError) as e:
        bad.put_object(Bucket="results", Key="mode/nope", Body=b"never")
    assert error_of(e.value) == (400, "InvalidArgument"), describe(e.value)
    assert "nope" in e.value.response["Error"].get("Message", ""), describe(e.value)
    with sc.client() as c:
        assert c.log()["head"] == head, "a refused mode appended to the log"
    sc.assert_on_no_target("results", "mode/nope")

    # r2 cannot hold results/mode/blocked (a directory stands at its path),
    # so a sync write of it cannot be acknowledged; with x-walship-mode:
    # async it is, at once, held by the acting primary.
    blocked = sc.target_file("r2", "results", "mode/blocked")
    blocked.mkdir(parents=True)
    (blocked / "in-the-way").write_bytes(b"x")
    fast = _with_header(sc.s3(), "PutObject", "x-walship-mode", "async")
    r = fast.put_object(Bucket="results", Key="mode/blocked", Body=b"async write")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert sc.target_file("p", "results", "mode/blocked").read_bytes() == b"async write"
    assert sc.s3().get_object(Bucket="results", Key="mode/blocked")["Body"].read() == b"async write"
    r1 = sc.target_file("r1", "results", "mode/blocked")
    wait_until(lambda: r1.is_file() and r1.read_bytes() == b"async write", 30,
               "r1 to hold the async write")
    assert blocked.is_dir()

    # The bucket's own mode (sync) for the same key: a quorum miss, 504
    # ReplicationTimeout with the seq, the entry durable in the log.
    with pytest.raises(ClientError) as e:
        sc.s3().put_object(Bucket="results", Key="mode/blocked", Body=b"sync write")
    assert error_of(e.value) == (504, "ReplicationTimeout"), describe(e.value)
    seq = int(e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-walship-seq"])
    with sc.client() as c:
        entry = c.log(from_seq=seq, limit=1)
    assert entry["entries"][0]["key"] == "results/mode/blocked", entry
    p = sc.target_file("p", "results", "mode/blocked")
    wait_until(lambda: p.read_bytes() == b"sync write", 30, "the primary to get the entry")


# --------------------------------------------------------------- 9. aws CLI


def make_tree(root: Path, big: tuple[int, ...] = ()) -> dict[str, bytes]:
    """~20 files in nested dirs (plus ``big`` sized ones); returns rel -> bytes."""
    files: dict[str, bytes] = {}
    for i in range(18):
        rel = f"d{i % 3}/sub{i % 2}/file-{i:02d}.txt" if i % 4 else f"top-{i:02d}.txt"
        files[rel] = blob(100 + 997 * i, rel)
    files["d0/empty.txt"] = b""
    for j, n in enumerate(big):
        files[f"big/blob-{j}.bin"] = blob(n, f"big{j}")
    past = time.time() - 60  # older than any upload (sync compares mtimes)
    for rel, b in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
        os.utime(p, (past, past))
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def aws_env(tmp: Path) -> dict[str, str]:
    cfg = tmp / "aws-config"
    cfg.write_text(f"[default]\nregion = {S3_REGION}\ns3 =\n    addressing_style = path\n")
    creds = tmp / "aws-credentials"
    creds.write_text("")
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET,
               AWS_DEFAULT_REGION=S3_REGION, AWS_CONFIG_FILE=str(cfg),
               AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_EC2_METADATA_DISABLED="true",
               AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="1", AWS_PAGER="")
    return env


def test_aws_cli_sync_up_and_down_is_byte_for_byte(sc, tmp_path):
    aws = shutil.which("aws")
    if not aws:
        skip_or_fail("the aws CLI is not installed: python3 -m pip install awscli")
    env = aws_env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([aws, "--endpoint-url", sc.endpoint, *args], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"aws {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r

    src = tmp_path / "src"
    files = make_tree(src, big=(9 * MiB, 12 * MiB + 5))  # over the CLI's 8 MiB: multipart
    assert len(files) >= 20
    run("s3", "sync", str(src), "s3://results/tree/", "--no-progress")
    for rel, b in files.items():
        sc.assert_on_every_target("results", f"tree/{rel}", b)
    # Nothing is new the second time (size and LastModified listed right).
    again = run("s3", "sync", str(src), "s3://results/tree/", "--no-progress")
    assert again.stdout.strip() == "", again.stdout

    ls = run("s3", "ls", "--recursive", "s3://results/tree/")
    listed = {}
    for line in ls.stdout.splitlines():
        _date, _time, size, key = line.split(None, 3)
        listed[key] = int(size)
    assert listed == {f"tree/{rel}": len(b) for rel, b in files.items()}

    out = tmp_path / "out"
    out.mkdir()
    run("s3", "sync", "s3://results/tree/", str(out), "--no-progress")
    got = read_tree(out)
    assert sorted(got) == sorted(files)
    for rel, b in files.items():
        assert got[rel] == b, rel
    again = run("s3", "sync", "s3://results/tree/", str(out), "--no-progress")
    assert again.stdout.strip() == "", again.stdout

    # cp and rm, and a deletion synced; a stream of unknown size (multipart).
    run("s3", "cp", str(src / "top-00.txt"), "s3://results/cp/one.txt")
    streamed = blob(10 * MiB + 3, "stdin")
    r = subprocess.run([aws, "--endpoint-url", sc.endpoint, "s3", "cp", "-", "s3://results/cp/stdin.bin"],
                       input=streamed, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    sc.assert_on_every_target("results", "cp/stdin.bin", streamed)
    r = subprocess.run([aws, "--endpoint-url", sc.endpoint, "s3", "cp", "s3://results/cp/stdin.bin", "-"],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stdout == streamed, r.stderr.decode(errors="replace")
    sc.assert_on_every_target("results", "cp/one.txt", files["top-00.txt"])
    (src / "top-04.txt").unlink()
    r = run("s3", "sync", str(src), "s3://results/tree/", "--delete", "--no-progress")
    assert "delete: s3://results/tree/top-04.txt" in r.stdout, r.stdout
    sc.assert_on_no_target("results", "tree/top-04.txt")
    run("s3", "rm", "s3://results/cp/one.txt")
    sc.assert_on_no_target("results", "cp/one.txt")


# ------------------------------------------------------------------ 10. rclone


def test_rclone_copy_then_check_matches_and_a_flipped_byte_is_caught(sc, tmp_path):
    rclone = shutil.which("rclone")
    if not rclone:
        skip_or_fail("rclone is not installed: apt-get install -y rclone")
    conf = tmp_path / "rclone.conf"
    conf.write_text("\n".join([
        "[ws]", "type = s3", "provider = Other", "env_auth = false",
        f"access_key_id = {S3_ACCESS_KEY_ID}", f"secret_access_key = {S3_SECRET}",
        f"region = {S3_REGION}", f"endpoint = {sc.endpoint}", "force_path_style = true",
        # multipart for the big file (rclone's default cutoff is 200M)
        "upload_cutoff = 5M", "chunk_size = 5M", "",
    ]))
    env = {k: v for k, v in clean_env().items() if not k.startswith(("RCLONE_", "AWS_"))}
    env.update(RCLONE_CONFIG=str(conf), HOME=str(tmp_path))

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([rclone, "--retries", "1", "--low-level-retries", "1", *args],
                           env=env, capture_output=True, text=True, timeout=300)
        if ok:
            assert r.returncode == 0, f"rclone {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r

    src = tmp_path / "src"
    files = make_tree(src, big=(11 * MiB,))
    run("copy", str(src), "ws:results/rc/")
    for rel, b in files.items():
        sc.assert_on_every_target("results", f"rc/{rel}", b)
    r = run("check", str(src), "ws:results/rc/")
    assert "could not be checked" not in r.stderr, r.stderr
    assert f"{len(files)} matching files" in r.stderr, r.stderr
    # Every remote MD5, the multipart one's included, is the local one's.
    sums = {}
    for line in run("md5sum", "ws:results/rc/").stdout.splitlines():
        h, rel = line.split(None, 1)
        sums[rel] = h
    assert sums == {rel: md5_hex(b) for rel, b in files.items()}
    r = run("lsjson", "-R", "--files-only", "ws:results/rc/")
    assert {o["Path"]: o["Size"] for o in json.loads(r.stdout)} == {
        rel: len(b) for rel, b in files.items()}

    victim = src / "top-00.txt"
    b = bytearray(victim.read_bytes())
    b[len(b) // 2] ^= 0x01
    victim.write_bytes(bytes(b))
    r = run("check", str(src), "ws:results/rc/", ok=False)
    assert r.returncode != 0, f"rclone check passed over a flipped byte:\n{r.stderr}"
    assert "top-00.txt" in r.stderr, r.stderr
    assert "1 differences found" in r.stderr, r.stderr

    # Server-side copy (CopyObject) and delete.
    run("copyto", "ws:results/rc/d1/sub1/file-01.txt", "ws:results/rc-copy/one.txt")
    sc.assert_on_every_target("results", "rc-copy/one.txt", files["d1/sub1/file-01.txt"])
    run("deletefile", "ws:results/rc-copy/one.txt")
    sc.assert_on_no_target("results", "rc-copy/one.txt")

    # And back down: a fresh copy is byte for byte the original.
    out = tmp_path / "down"
    run("copy", "ws:results/rc/", str(out))
    got = read_tree(out)
    assert sorted(got) == sorted(files)
    assert all(got[rel] == b for rel, b in files.items())


# -------------------------------------------------------------- 11. truthound


@pytest.fixture
def truthound():
    try:
        import truthound
        from truthound.stores import get_store  # noqa: F401
    except ImportError as e:
        skip_or_fail(f"truthound is not installed (python/run-tests.sh installs 3.2.0): {e}")
    if truthound.__version__ != "3.2.0":
        skip_or_fail(f"this test pins truthound 3.2.0, found {truthound.__version__}")
    return truthound


def _result(run_id: str, asset: str, status: str, when: datetime, **tags: str):
    from truthound.stores.results import ResultStatistics, ResultStatus, ValidationResult

    return ValidationResult(
        run_id=run_id, run_time=when, data_asset=asset, status=ResultStatus(status),
        statistics=ResultStatistics(total_validators=3, passed_validators=2, total_rows=100),
        tags=dict(tags), metadata={"by": "walship S3 tests"},
    )


def test_truthound_s3_store_unchanged_saves_through_the_front_door(truthound, sc, tmp_path, monkeypatch):
    from truthound.stores import StoreQuery, get_store
    from truthound.stores.base import StoreNotFoundError

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    store = get_store("s3", bucket="results", endpoint_url=sc.endpoint, region=S3_REGION)
    assert type(store).__name__ == "S3Store"
    t = datetime(2026, 11, 26, 10, 0, 0)
    runs = [_result("run-a", "customers.csv", "success", t, team="core"),
            _result("run-b", "customers.csv", "failure", t + timedelta(hours=1), team="core"),
            _result("run-c", "orders.csv", "success", t + timedelta(hours=2), team="ops")]
    for r in runs:
        assert store.save(r) == r.run_id
    assert store.get("run-b").to_dict() == runs[1].to_dict()
    assert store.exists("run-a") and not store.exists("run-zzz")
    assert sorted(store.list_ids()) == ["run-a", "run-b", "run-c"]
    assert store.list_ids(StoreQuery(tags={"team": "ops"})) == ["run-c"]

    # On every target, as truthound lays it out (gzip, Content-Encoding kept).
    for r in runs:
        key = f"truthound/default/results/{r.run_id}.json.gz"
        for t_name in S3_TARGETS:
            raw = sc.target_file(t_name, "results", key).read_bytes()
            assert json.loads(gzip.decompress(raw)) == json.loads(json.dumps(r.to_dict(), default=str))
        sc.assert_on_every_target("results", key, sc.target_file("p", "results", key).read_bytes())
    index = sc.target_file("r2", "results", "truthound/default/_index.json").read_bytes()
    assert set(json.loads(index)) == {"run-a", "run-b", "run-c"}
    sc.assert_on_every_target("results", "truthound/default/_index.json", index)
    h = sc.s3().head_object(Bucket="results", Key="truthound/default/results/run-a.json.gz")
    assert (h["ContentType"], h.get("ContentEncoding")) == ("application/json", "gzip")

    # A second store built from AWS_ENDPOINT_URL_S3 alone (a bare boto3 client).
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sc.endpoint)
    other = get_store("s3", bucket="results", region=S3_REGION)
    assert sorted(other.list_ids()) == ["run-a", "run-b", "run-c"]
    assert other.get("run-c").to_dict() == runs[2].to_dict()

    assert store.delete("run-a") is True
    assert store.delete("run-a") is False
    assert not store.exists("run-a")
    with pytest.raises(StoreNotFoundError):
        store.get("run-a")
    sc.assert_on_no_target("results", "truthound/default/results/run-a.json.gz")
    index = sc.target_file("p", "results", "truthound/default/_index.json").read_bytes()
    assert set(json.loads(index)) == {"run-b", "run-c"}
    sc.assert_on_every_target("results", "truthound/default/_index.json", index)
    store.close()
    other.close()


# ------------------------------------------------------------------ 12. kill -9


def test_every_put_that_got_200_survives_kill_9_on_every_target(sc, tmp_path):
    from botocore.exceptions import BotoCoreError, ClientError

    acked: dict[str, bytes] = {}
    refused: list[str] = []
    rng = random.Random(12)
    for rnd in range(3):
        s3 = sc.s3(connect_timeout=2, read_timeout=60)
        # An upload with acknowledged parts, to complete after the restart.
        mp_key = f"crash/mp-{rnd}"
        mp_parts = [blob(5 * MiB, f"{mp_key}/1"), blob(4321, f"{mp_key}/2")]
        mp_id = s3.create_multipart_upload(Bucket="results", Key=mp_key)["UploadId"]
        mp_etags = [s3.upload_part(Bucket="results", Key=mp_key, UploadId=mp_id, PartNumber=n,
                                   Body=b)["ETag"] for n, b in enumerate(mp_parts, start=1)]
        this_round: list[str] = []
        stop = threading.Event()

        def writer(rnd: int = rnd, s3=s3, this_round: list[str] = this_round) -> None:
            sizes = random.Random(rnd)
            i = 0
            while not stop.is_set():
                key = f"crash/r{rnd}/{i:05d}"
                data = blob(sizes.randrange(1, 64 * 1024), key)
                try:
                    r = s3.put_object(Bucket="results", Key=key, Body=data)
                except (BotoCoreError, ClientError) as e:
                    refused.append(f"{key}: {e!r}")
                    return
                if r["ResponseMetadata"]["HTTPStatusCode"] == 200:
                    acked[key] = data
                    this_round.append(key)
                i += 1

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        wait_until(lambda: len(this_round) >= 20 or not th.is_alive(), 60,
                   "20 puts to be acknowledged")
        time.sleep(rng.uniform(0.05, 0.5))
        sc.kill9()
        stop.set()
        th.join(120)
        assert not th.is_alive()
        assert len(this_round) >= 20, f"round {rnd}: only {len(this_round)} acks: {refused[-1:]}"

        # sync: a 200 meant every target held it, before any restart.
        for k in this_round:
            sc.assert_on_every_target("results", k, acked[k])

        sc.restart()
        sc.wait_caught_up()
        check = sc.s3()
        parts = check.list_parts(Bucket="results", Key=mp_key, UploadId=mp_id)["Parts"]
        assert [(x["PartNumber"], x["Size"], x["ETag"]) for x in parts] == [
            (n, len(b), t) for n, (b, t) in enumerate(zip(mp_parts, mp_etags), start=1)]
        done = check.complete_multipart_upload(
            Bucket="results", Key=mp_key, UploadId=mp_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t}
                                       for n, t in enumerate(mp_etags, start=1)]})
        assert done["ETag"] == multipart_etag(mp_parts)
        acked[mp_key] = b"".join(mp_parts)
        for k, v in acked.items():  # every round's acks, not only this one's
            assert check.get_object(Bucket="results", Key=k)["Body"].read() == v, k
            sc.assert_on_every_target("results", k, v)
        listed = set()
        for page in check.get_paginator("list_objects_v2").paginate(Bucket="results", Prefix="crash/"):
            listed |= {o["Key"] for o in page.get("Contents", [])}
        assert set(acked) <= listed


# ----------------------------------------------------- 13. virtual-hosted style


def test_virtual_hosted_addressing_reaches_the_bucket_named_in_the_host(sc):
    """boto3 with addressing_style="virtual" names the bucket in the Host
    (``results.localhost:PORT``); the connection goes to 127.0.0.1 so no DNS
    is needed, and the signed Host is what the server sees."""
    import boto3
    from botocore.config import Config
    from urllib.parse import urlsplit, urlunsplit

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=f"http://localhost:{sc.s3_port}", region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID, aws_secret_access_key=S3_SECRET,
        config=Config(s3={"addressing_style": "virtual"}, retries={"total_max_attempts": 1}))
    hosts = []

    def to_loopback(request, **_kw):
        u = urlsplit(request.url)
        hosts.append(u.netloc)
        request.headers["Host"] = u.netloc
        request.url = urlunsplit((u.scheme, f"127.0.0.1:{sc.s3_port}", u.path, u.query, u.fragment))

    s3.meta.events.register("before-send.s3", to_loopback)
    s3.put_object(Bucket="results", Key="vh/k.txt", Body=b"virtual", ContentType="text/plain")
    s3.put_object(Bucket="fast", Key="vh/k.txt", Body=b"other bucket")
    assert hosts == [f"results.localhost:{sc.s3_port}", f"fast.localhost:{sc.s3_port}"]
    sc.assert_on_every_target("results", "vh/k.txt", b"virtual")
    assert s3.get_object(Bucket="results", Key="vh/k.txt")["Body"].read() == b"virtual"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="vh/")["Contents"]] == ["vh/k.txt"]
    assert sc.s3().get_object(Bucket="fast", Key="vh/k.txt")["Body"].read() == b"other bucket"


# ------------------------------------------------------------ 14. aws-chunked

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def chunked_put(sc, key: str, chunks: list[bytes], *, trailer: bool = False,
                crc: str | None = None, tamper: bool = False) -> tuple[int, bytes]:
    """A PUT with an ``aws-chunked`` body, signed by botocore's SigV4 signer:
    signed chunks (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, what the Java and
    Go SDKs stream), or with ``trailer`` unsigned chunks and a crc32 trailer
    (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, what boto3 sends over https, so
    through a TLS proxy). ``tamper`` spoils the first chunk's signature."""
    import hmac
    import http.client

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = b"".join(chunks)
    mode = "STREAMING-UNSIGNED-PAYLOAD-TRAILER" if trailer else "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    headers = {"x-amz-content-sha256": mode, "Content-Encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(data))}
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    req = AWSRequest(method="PUT", url=f"{sc.endpoint}/results/{key}", headers=headers)
    SigV4Auth(Credentials(S3_ACCESS_KEY_ID, S3_SECRET), "s3", S3_REGION).add_auth(req)
    prev = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    amzdate = req.headers["X-Amz-Date"]
    scope = f"{amzdate[:8]}/{S3_REGION}/s3/aws4_request"
    k = ("AWS4" + S3_SECRET).encode()
    for part in (amzdate[:8], S3_REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    body = b""
    for c in [*chunks, b""]:
        if trailer:
            body += f"{len(c):x}\r\n".encode() + c + b"\r\n" if c else (
                b"0\r\n" + f"x-amz-checksum-crc32:{crc or crc32_b64(data)}\r\n\r\n".encode())
            continue
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amzdate, scope, prev, _EMPTY_SHA256,
                         hashlib.sha256(c).hexdigest()])
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        prev = sig
        if tamper and c is chunks[0]:
            sig = ("1" if sig[0] == "0" else "0") + sig[1:]
        body += f"{len(c):x};chunk-signature={sig}\r\n".encode() + c + b"\r\n"
    hdrs = dict(req.headers.items())
    hdrs["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection("127.0.0.1", sc.s3_port, timeout=60)
    try:
        conn.request("PUT", f"/results/{key}", body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_aws_chunked_bodies_signed_or_with_a_checksum_trailer_are_decoded_and_checked(sc, s3):
    chunks = [blob(65536, "c1"), blob(65536, "c2"), blob(1000, "c3")]
    data = b"".join(chunks)
    assert chunked_put(sc, "chunked/signed", chunks) == (200, b"")
    sc.assert_on_every_target("results", "chunked/signed", data)
    assert s3.get_object(Bucket="results", Key="chunked/signed")["Body"].read() == data
    assert chunked_put(sc, "chunked/trailer", chunks, trailer=True) == (200, b"")
    sc.assert_on_every_target("results", "chunked/trailer", data)
    g = s3.get_object(Bucket="results", Key="chunked/trailer", ChecksumMode="ENABLED")
    assert (g["Body"].read(), g.get("ChecksumCRC32")) == (data, crc32_b64(data))

    with sc.client() as c:
        head = c.log()["head"]
    status, body = chunked_put(sc, "chunked/tampered", chunks, tamper=True)
    assert status == 403 and s3_error_xml(body)["Code"] == "SignatureDoesNotMatch", (status, body)
    status, body = chunked_put(sc, "chunked/bad-trailer", chunks, trailer=True, crc=crc32_b64(b"x"))
    assert status == 400 and s3_error_xml(body)["Code"] == "BadDigest", (status, body)
    with sc.client() as c:
        assert c.log()["head"] == head
    sc.assert_on_no_target("results", "chunked/tampered")
    sc.assert_on_no_target("results", "chunked/bad-trailer")


# ------------------------------------------------------------------ metrics

def s3_request_counts(sc) -> dict[tuple[str, str], float]:
    """``walship_s3_requests_total`` from the HTTP API's ``/metrics``."""
    text = urllib.request.urlopen(f"http://{sc.addr}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("walship_s3_requests_total{"):
            labels, value = line[len("walship_s3_requests_total{"):].split("} ")
            kv = dict(p.split("=", 1) for p in labels.split(","))
            out[(kv["op"].strip('"'), kv["status"].strip('"'))] = float(value)
    return out


def test_every_s3_request_counts_by_operation_and_status(sc, s3):
    import botocore.exceptions

    before = s3_request_counts(sc)
    for i in range(3):
        s3.put_object(Bucket="results", Key=f"counted/{i}", Body=b"x")
    s3.get_object(Bucket="results", Key="counted/0")["Body"].read()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket="results", Key="counted/missing")
    s3.list_objects_v2(Bucket="results", Prefix="counted/")
    bad = sc.s3(secret="wrong", max_attempts=1)
    with pytest.raises(botocore.exceptions.ClientError):
        bad.put_object(Bucket="results", Key="counted/refused", Body=b"x")
    after = s3_request_counts(sc)

    def delta(op: str, status: str) -> float:
        return after.get((op, status), 0) - before.get((op, status), 0)

    assert delta("PutObject", "200") == 3, after
    assert delta("GetObject", "200") == 1, after
    assert delta("GetObject", "404") == 1, after
    assert delta("ListObjectsV2", "200") == 1, after
    assert delta("PutObject", "403") >= 1, after


# ---------------------------------------------------------- created buckets

def test_created_buckets_hold_objects_survive_a_restart_and_delete_only_when_empty(s3_sidecar):
    import botocore.exceptions

    sc = s3_sidecar("creates", allow_create_bucket=True)
    s3 = sc.s3()
    s3.create_bucket(Bucket="made-here")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="made-here")
    assert error_of(e.value) == (409, "BucketAlreadyOwnedByYou"), describe(e.value)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="Not_A_Bucket")
    assert error_of(e.value)[0] == 400, describe(e.value)
    s3.put_object(Bucket="made-here", Key="a/1", Body=b"one")
    sc.assert_on_every_target("made-here", "a/1", b"one")
    sc.restart()
    s3 = sc.s3()
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "made-here" in names and "results" in names, names
    s3.head_bucket(Bucket="made-here")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket="made-here")
    assert error_of(e.value) == (409, "BucketNotEmpty"), describe(e.value)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket="results")
    assert error_of(e.value) == (403, "AccessDenied"), describe(e.value)
    s3.delete_object(Bucket="made-here", Key="a/1")
    s3.delete_bucket(Bucket="made-here")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_bucket(Bucket="made-here")
    assert error_of(e.value)[0] == 404, describe(e.value)


def test_an_sdk_retry_of_a_conditional_put_after_504_is_not_refused_by_its_own_first_attempt(s3_sidecar):
    """SPEC: after a 504 the entry is durable and a retry is harmless. boto3
    retries a 504 by itself with the same invocation id; the retry of an
    ``If-None-Match: *`` put must not answer 412 because of the first
    attempt's own entry."""
    from botocore.exceptions import ClientError

    sc = s3_sidecar(sync_timeout_seconds=1.0)
    blocked = sc.target_file("r2", "results", "retry/lock")
    blocked.mkdir(parents=True)
    (blocked / "in-the-way").write_bytes(b"x")
    with sc.client() as c:
        head = c.log()["head"]
    retrying = sc.s3(max_attempts=3)
    with pytest.raises(ClientError) as e:
        retrying.put_object(Bucket="results", Key="retry/lock", Body=b"mine", IfNoneMatch="*")
    assert error_of(e.value) == (504, "ReplicationTimeout"), describe(e.value)
    assert e.value.response["ResponseMetadata"].get("RetryAttempts", 0) >= 1, describe(e.value)
    with sc.client() as c:
        assert c.log()["head"] == head + 1, "the retries appended again"
    # Someone else's If-None-Match (a new invocation) is refused, as it must be.
    with pytest.raises(ClientError) as e:
        sc.s3().put_object(Bucket="results", Key="retry/lock", Body=b"theirs", IfNoneMatch="*")
    assert error_of(e.value) == (412, "PreconditionFailed"), describe(e.value)


def test_aws_cli_copies_a_large_object_between_keys_with_upload_part_copy(sc, tmp_path):
    """``aws s3 cp s3://… s3://…`` of an object over its 8 MiB multipart
    threshold copies part by part (UploadPartCopy)."""
    if shutil.which("aws") is None:
        skip_or_fail("the aws CLI is not installed (pip install awscli)")
    data = blob(9 * MiB + 123, "big-copy")
    sc.s3().put_object(Bucket="results", Key="copy/src.bin", Body=data)
    env = aws_env(tmp_path)
    r = subprocess.run(["aws", "--endpoint-url", sc.endpoint, "s3", "cp",
                        "s3://results/copy/src.bin", "s3://results/copy/dst.bin"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    sc.assert_on_every_target("results", "copy/dst.bin", data)
    head = sc.s3().head_object(Bucket="results", Key="copy/dst.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-2"'), head["ETag"]
