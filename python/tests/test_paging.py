"""Client.list pages through every key whichever way the sidecar pages.

The real sidecar is exercised in test_client.py; here a stand-in serves
``GET /v1/objects`` in the three ways a sidecar may: with ``next_after``,
with only ``truncated`` (the client pages from the last key), and refusing
``after`` (the client asks once for up to 100000 keys).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from walship import Client, WalshipError

KEYS = [f"k/{i:04d}" for i in range(57)] + ["other/x"]


def fake_sidecar(style: str, keys=KEYS):
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def do_GET(self):  # noqa: N802
            u = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            requests.append(q)
            if "after" in q and style == "no-after":
                return self.answer(400, {"error": "malformed query: Failed to deserialize "
                                                  "query string: after: unknown field `after`"})
            prefix, limit = q.get("prefix", ""), int(q.get("limit", 1000))
            after = q.get("after")
            match = [k for k in sorted(keys) if k.startswith(prefix) and (after is None or k > after)]
            page, more = match[:limit], len(match) > limit
            body = {"keys": [{"key": k, "seq": i + 1, "size": 1} for i, k in enumerate(page)],
                    "truncated": more}
            if more and style == "next-after":
                body["next_after"] = page[-1]
            self.answer(200, body)

        def answer(self, status, body):
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, requests


@pytest.mark.parametrize("style", ["next-after", "truncated-only", "no-after"])
def test_list_returns_every_key_whichever_way_the_sidecar_pages(style):
    srv, requests = fake_sidecar(style)
    try:
        c = Client(f"127.0.0.1:{srv.server_address[1]}")
        got = c.list("k/", page_size=10)
        assert [k.key for k in got] == [k for k in KEYS if k.startswith("k/")]
        if style == "no-after":
            assert [r.get("limit") for r in requests] == ["10", "10", "100000"]
        else:
            assert len(requests) == 6 and all(r["limit"] == "10" for r in requests)
            assert requests[1]["after"] == "k/0009"
        assert c.list("nothing/") == []
        c.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_sidecar_without_after_and_too_many_keys_is_an_error_not_a_short_list():
    srv, _ = fake_sidecar("no-after", keys=[f"k/{i:06d}" for i in range(100_001)])
    try:
        c = Client(f"127.0.0.1:{srv.server_address[1]}")
        with pytest.raises(WalshipError, match="100000"):
            c.list("k/", page_size=50_000)
    finally:
        srv.shutdown()
        srv.server_close()
