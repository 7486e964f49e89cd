#!/usr/bin/env python3
"""Benchmark baseline: "what a user would write instead" of vod-eventd.

A short, straightforward VOD event consumer built on the official SDK: v2
(qcloudapi-sdk-python==2.0.15, the default) PullEvent -> store the batch in
SQLite (one transaction, deduped on the sha256 of the canonical eventContent
JSON) -> ConfirmEvent -> POST each event to a webhook (and, with --shell, run
that command with the event on stdin).  With --api v3 the same loop uses API 3.0
through tencentcloud-sdk-python's VodClient (PullEvents / ConfirmEvents; an
event is the SDK model's to_json_string() minus EventHandle; the idle answer
ResourceNotFound means no events).  On SDK/transport errors it sleeps 1 s and
retries.

    python3 bench/baseline.py --endpoint http://127.0.0.1:PORT/v2/index.php \
        --secret-id ID --secret-key KEY --db PATH --webhook URL --events N \
        [--api v2|v3] [--shell 'CMD ARG...'] [--idle-seconds S] [--lean]

With --lean (issue 28) the loop is what a careful user would write: one keep-alive connection
to the webhook for the whole run (not one per POST), and one SQLite transaction per pull
with nothing read back (the count comes from the inserts).

(v3: --endpoint http://127.0.0.1:PORT/.)  Stops after N distinct events are
stored and handled, or (with --idle-seconds) after S seconds of pulling.
Prints one JSON line of counters at exit, with the process's own CPU seconds
and its children's (the shell commands).
"""

import argparse
import hashlib
import json
import resource
import shlex
import sqlite3
import subprocess
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


class V2:
    """PullEvent / ConfirmEvent with the v2 SDK."""

    def __init__(self, endpoint, secret_id, secret_key):
        self.api = make_api(endpoint, secret_id, secret_key)

    def pull(self):
        """[(handle, eventContent)]; [] when idle. Raises on errors."""
        resp = json.loads(self.api.call("PullEvent", {}, req_timeout=10))
        if resp.get("code") == 4000:
            return []
        if resp.get("code") != 0:
            raise RuntimeError("PullEvent: %s" % resp)
        return [(ev["msgHandle"], ev["eventContent"]) for ev in resp.get("eventList") or []]

    def confirm(self, handles):
        params = {"msgHandle.%d" % i: h for i, h in enumerate(handles)}
        return json.loads(self.api.call("ConfirmEvent", params,
                                        req_timeout=10)).get("code") == 0


class V3:
    """PullEvents / ConfirmEvents with tencentcloud-sdk-python's VodClient."""

    def __init__(self, endpoint, secret_id, secret_key):
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import \
            TencentCloudSDKException
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.vod.v20180717 import models, vod_client
        url = urlsplit(endpoint)
        profile = ClientProfile(httpProfile=HttpProfile(
            protocol=url.scheme, endpoint=url.netloc, reqTimeout=10))
        self.client = vod_client.VodClient(Credential(secret_id, secret_key), "", profile)
        self.models, self.error = models, TencentCloudSDKException

    def pull(self):
        try:
            resp = self.client.PullEvents(self.models.PullEventsRequest())
        except self.error as e:
            if e.get_code() == "ResourceNotFound":  # the idle queue's answer
                return []
            raise
        out = []
        for ev in resp.EventSet or []:
            content = json.loads(ev.to_json_string())
            del content["EventHandle"]
            out.append((ev.EventHandle, content))
        return out

    def confirm(self, handles):
        req = self.models.ConfirmEventsRequest()
        req.EventHandles = handles
        self.client.ConfirmEvents(req)
        return True


def run_shell(cmd, content):
    body = json.dumps(content).encode()
    try:
        return subprocess.run(cmd, input=body, stdout=subprocess.DEVNULL,
                              timeout=60).returncode == 0
    except Exception:
        return False


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


class KeepAlive:
    """POSTs over one HTTP/1.1 keep-alive connection, reopened after an error."""

    def __init__(self, webhook):
        url = urlsplit(webhook)
        self.host, self.port, self.path = url.hostname, url.port, url.path or "/"
        self.conn = None

    def post(self, content):
        body = json.dumps(content).encode()
        try:
            if self.conn is None:
                self.conn = HTTPConnection(self.host, self.port, timeout=15)
            self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            resp.read()
            return 200 <= resp.status < 300
        except Exception:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
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
    ap.add_argument("--api", choices=["v2", "v3"], default="v2")
    ap.add_argument("--shell", help="a command run per event, the event JSON on stdin")
    ap.add_argument("--lean", action="store_true",
                    help="keep-alive webhook, one SQLite transaction per pull, no count read back")
    args = ap.parse_args()
    send = KeepAlive(args.webhook).post if args.lean else (lambda content: post(args.webhook, content))

    api = (V2 if args.api == "v2" else V3)(args.endpoint, args.secret_id, args.secret_key)
    shell = shlex.split(args.shell) if args.shell else None
    db = open_db(args.db)
    stored = pulls = confirms = errors = 0
    posted = set()  # dedupe keys handled OK (redeliveries are re-posted)
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
            batch = api.pull()
            if not batch:
                continue
            keys = []
            with db:  # one transaction per batch
                for _, content in batch:
                    text = json.dumps(content, sort_keys=True,
                                      separators=(",", ":"))
                    key = hashlib.sha256(text.encode()).hexdigest()
                    keys.append(key)
                    cur = db.execute("INSERT OR IGNORE INTO events"
                                     " (dedupe_key, content, received_at)"
                                     " VALUES (?, ?, ?)", (key, text, time.time()))
                    if args.lean:
                        stored += cur.rowcount
            if not args.lean:
                stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            confirms += 1
            if not api.confirm([handle for handle, _ in batch]):
                errors += 1
            for (_, content), key in zip(batch, keys):
                ok = send(content)
                if shell is not None:
                    ok = run_shell(shell, content) and ok
                if ok:
                    posted.add(key)
                else:
                    errors += 1
        except Exception as e:  # SDK/transport errors: wait and retry
            errors += 1
            print("baseline: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            time.sleep(1)

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"stored": stored, "posted": len(posted), "pulls": pulls,
                      "confirms": confirms, "errors": errors,
                      "seconds": round(time.monotonic() - start, 3),
                      "cpu_s": round(own.ru_utime + own.ru_stime, 3),
                      "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 3)}))


if __name__ == "__main__":
    main()
