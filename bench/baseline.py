#!/usr/bin/env python3
"""Benchmark baseline: "what a user would write instead" of vod-eventd.

A short, straightforward VOD v2 event consumer built on the official SDK
(qcloudapi-sdk-python==2.0.15): PullEvent -> store the batch in SQLite (one
transaction, deduped on the sha256 of the canonical eventContent JSON) ->
ConfirmEvent -> POST each event to a webhook.  On SDK/transport errors it
sleeps 1 s and retries.

    python3 bench/baseline.py --endpoint http://127.0.0.1:PORT/v2/index.php \
        --secret-id ID --secret-key KEY --db PATH --webhook URL --events N \
        [--idle-seconds S]

Stops after N distinct events are stored and posted, or (with --idle-seconds)
after S seconds of pulling.  Prints one JSON line of counters at exit.
"""

import argparse
import hashlib
import json
import sqlite3
import sys
import time
import urllib.request
from http.client import HTTPConnection
from urllib.parse import urlsplit

import QcloudApi.common.request as sdk_request
from QcloudApi.modules.vod import Vod
from QcloudApi.qcloudapi import QcloudApi


class PlainHTTPConnection(HTTPConnection):
    """The SDK hard-codes HTTPS; this plain-HTTP stand-in (same interface,
    copied from tests/py/v2_client.py) lets it talk to a local endpoint."""

    def __init__(self, host, port=None):
        HTTPConnection.__init__(self, host, port)
        self.request_length = 0

    def send(self, data):
        HTTPConnection.send(self, data)
        self.request_length += len(data)

    def request(self, method, url, body=None, headers={}):
        self.request_length = 0
        HTTPConnection.request(self, method, url, body, headers)


def make_api(endpoint, secret_id, secret_key):
    url = urlsplit(endpoint)
    # Module 'vod' ignores config["endpoint"]: override its hard-coded host.
    Vod.requestHost = url.netloc
    Vod.requestUri = url.path or "/v2/index.php"
    if url.scheme == "http":
        sdk_request.MyHTTPSConnection = PlainHTTPConnection
    return QcloudApi("vod", {"secretId": secret_id, "secretKey": secret_key,
                             "Region": "gz", "method": "GET"})


def open_db(path):
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events ("
               " id INTEGER PRIMARY KEY, dedupe_key TEXT NOT NULL UNIQUE,"
               " content TEXT NOT NULL, received_at REAL NOT NULL)")
    db.commit()
    return db


def post(webhook, content):
    req = urllib.request.Request(
        webhook, data=json.dumps(content).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            resp.read()
            return 200 <= resp.status < 300
    except Exception:  # HTTPError (non-2xx), URLError, timeouts...
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--secret-id", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--webhook", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--idle-seconds", type=float)
    args = ap.parse_args()

    api = make_api(args.endpoint, args.secret_id, args.secret_key)
    db = open_db(args.db)
    stored = pulls = confirms = errors = 0
    posted = set()  # dedupe keys posted OK (redeliveries are re-posted)
    start = time.monotonic()

    while True:
        elapsed = time.monotonic() - start
        if args.idle_seconds is not None:
            if elapsed >= args.idle_seconds:
                break
        elif stored >= args.events and len(posted) >= args.events:
            break
        try:
            pulls += 1
            resp = json.loads(api.call("PullEvent", {}, req_timeout=10))
            if resp.get("code") == 4000 or not resp.get("eventList"):
                if resp.get("code") not in (0, 4000):
                    errors += 1
                    time.sleep(1)
                continue
            batch = resp["eventList"]
            keys = []
            with db:  # one transaction per batch
                for ev in batch:
                    text = json.dumps(ev["eventContent"], sort_keys=True,
                                      separators=(",", ":"))
                    key = hashlib.sha256(text.encode()).hexdigest()
                    keys.append(key)
                    db.execute("INSERT OR IGNORE INTO events"
                               " (dedupe_key, content, received_at)"
                               " VALUES (?, ?, ?)", (key, text, time.time()))
            stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            handles = {"msgHandle.%d" % i: ev["msgHandle"]
                       for i, ev in enumerate(batch)}
            confirms += 1
            if json.loads(api.call("ConfirmEvent", handles,
                                   req_timeout=10)).get("code") != 0:
                errors += 1
            for ev, key in zip(batch, keys):
                if post(args.webhook, ev["eventContent"]):
                    posted.add(key)
                else:
                    errors += 1
        except Exception as e:  # SDK/transport errors: wait and retry
            errors += 1
            print("baseline: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            time.sleep(1)

    print(json.dumps({"stored": stored, "posted": len(posted), "pulls": pulls,
                      "confirms": confirms, "errors": errors,
                      "seconds": round(time.monotonic() - start, 3)}))


if __name__ == "__main__":
    main()
