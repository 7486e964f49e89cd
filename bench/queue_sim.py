#!/usr/bin/env python3
"""An independent model of Tencent Cloud VOD's reliable-callback event queue (issue 11).

Not our in-tree Rust emulator (crates/vod-emulator): written separately, from the protocol
notes (/work/shared/vod-protocol.md) and the official SDKs, in Python's standard library
plus the official SDK packages for the event models and the signature code.

    target/tmp/py-venv/bin/python bench/queue_sim.py --events N \
        [--port 0] [--hold 5] [--ttl 30] [--batch 16] [--secret-id ID --secret-key KEY] \
        [--verify full|shape|off] [--compact] [--strict-confirm] [--pace N/MS]

Prints its port as the first line of stdout once the backlog is generated, then serves until
killed. With --pace N/MS the events are not a backlog but a feed: N more become pullable every
MS milliseconds from the first pull on: 27/100 is the v2 ceiling issue 28 measured at (about
267 events/s), 160/100 the API 3.0 one (6,000 pulls a minute of up to 16: 1,600 events/s). The virtual environment is the tests' one (`cargo test --test it crosscheck` makes it:
tencentcloud-sdk-python-vod 3.1.194 and qcloudapi-sdk-python 2.0.15).

API 3.0 (POST `/`, JSON body, `X-TC-Action`; answers `{"Response": {..., "RequestId"}}`):
- PullEvents: up to --batch (16, documented) events, each a `models.EventContent` under a new
  `EventHandle`; when the queue is empty the request is held up to --hold (5 s, documented)
  and woken by a redelivery; still empty: `Response.Error.Code = "ResourceNotFound"`.
- ConfirmEvents: `EventHandles` (1 to 16 strings). A handle is valid --ttl (30 s) after its
  pull; then the event is queued again (at the front) and pulled under a new handle.
  Which handles of a call are confirmed when some are bad is not documented: by default the
  valid ones are confirmed and the call answers `InvalidParameter` naming the bad ones
  (--strict-confirm: nothing confirmed when one is bad, the in-tree emulator's reading).
- DescribeEventConfig: Mode "PULL" (the daemon asks once at start), a
  `models.DescribeEventConfigResponse`.
- Payloads: built with the official SDK's model classes (`tencentcloud.vod.v20180717.models`:
  EventContent with FileUploadTask/MediaBasicInfo/MediaMetaData, ProcedureTask with a
  transcode MediaProcessTaskResult, FileDeleteTask, PullUploadTask), every field set through
  the model's own property (an unknown name raises), serialised as the SDK's
  `to_json_string` does (every member, null when unset; --compact drops the nulls). At start
  one event of each type is read back with `EventContent._deserialize` and any "fileds are
  useless" warning (a member the SDK does not know) aborts.
v2 (GET or POST form to `/v2/index.php`, `Action=PullEvent|ConfirmEvent`; answers
`{"code": 0, "message": "", "codeDesc": "Success", ...}`): the same queue, events as
`{"msgHandle", "eventContent": {"version": "4.0", "eventType", "data"}}` with v2 field names
from the documented samples (the v2 SDK has no models): NewFileUpload, FileDeleted,
PullComplete. Idle after the hold: `code 4000` (what Tencent's demo expects). ConfirmEvent
takes `msgHandle.N` (or `msgHandle_N`), 0-based.

Signature checks (--verify, default full):
- v3 shape: `Authorization` is `TC3-HMAC-SHA256 Credential=<SecretId>/<date>/vod/tc3_request,
  SignedHeaders=..., Signature=<64 hex>` with the configured SecretId, `<date>` the UTC date of
  `X-TC-Timestamp`, the timestamp within 5 minutes. full: the signature is recomputed over the
  request (canonical request from the signed headers as received, SHA-256 of the body) with
  the official SDK's `tencentcloud.common.sign.Sign.sign_tc3`. Errors: AuthFailure.*.
- v2 shape: `SecretId` is the configured one, `Timestamp` within 2 h, `Nonce` present and not
  reused (4500), `Signature` present. full: recomputed with the v2 SDK's
  `QcloudApi.common.sign.Sign.make` over the parameters as received (HmacSHA1 unless
  `SignatureMethod=HmacSHA256`). Error: code 4100.
- off: nothing checked.

Not modelled: rate limits (1000 calls/min v2, 100/s v3), apps (`SubAppId` is ignored), STS
tokens, retention, faults, other actions (`InvalidAction`). Errors are answered with HTTP 200.

GET /_stats answers JSON counters: pulls, pulled (events handed out, redeliveries included),
confirmed (distinct events), redelivered, unknown_handles (never issued or already
confirmed), expired_handles (confirmed after --ttl), auth_failures, backlog (not yet pulled),
in_flight, idle_pulls, requests.
"""

import argparse
import hashlib
import json
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from QcloudApi.common.sign import Sign as V2Sign
from tencentcloud.common.sign import Sign as V3Sign
from tencentcloud.vod.v20180717 import models


# ---------------------------------------------------------------------------------------------
# Payloads from the official SDK's models

def model(cls, **fields):
    """An SDK model with `fields` set through its properties; a name the model lacks raises."""
    m = cls()
    for name, value in fields.items():
        if not isinstance(getattr(cls, name, None), property):
            raise AttributeError("%s has no field %s" % (cls.__name__, name))
        setattr(m, name, value)
    return m


def meta_data(i):
    return model(models.MediaMetaData, Size=10485760 + i, Container="mov,mp4,m4a,3gp,3g2,mj2",
                 Bitrate=2500000, Height=720, Width=1280, Duration=33.5, Rotate=0,
                 VideoStreamSet=[model(models.MediaVideoStreamItem, Bitrate=2371000, Height=720,
                                       Width=1280, Codec="h264", Fps=25)],
                 AudioStreamSet=[model(models.MediaAudioStreamItem, Bitrate=128000,
                                       SamplingRate=44100, Codec="aac")],
                 VideoDuration=33.5, AudioDuration=33.5)


def file_url(file_id):
    return "http://1500000001.vod2.myqcloud.com/6c0f1c00vodgzp1500000001/%s/f0.mp4" % file_id


def v3_event(i):
    """Event i of the backlog, as an `EventContent` (without `EventHandle`)."""
    file_id = str(5285890784246869930 + i)
    kind = i % 4
    if kind == 0:
        return model(models.EventContent, EventType="NewFileUpload", FileUploadEvent=model(
            models.FileUploadTask, FileId=file_id,
            MediaBasicInfo=model(models.MediaBasicInfo, Name="lecture-%d" % i, Description="",
                                 CreateTime="2026-11-25T12:00:00Z", UpdateTime="2026-11-25T12:00:00Z",
                                 ExpireTime="9999-12-31T23:59:59Z", ClassId=0, ClassName="其他",
                                 ClassPath="", CoverUrl="", Type="mp4", MediaUrl=file_url(file_id),
                                 SourceInfo=model(models.MediaSourceData, SourceType="Upload",
                                                  SourceContext="order=%d" % i),
                                 StorageRegion="ap-guangzhou", TagSet=[], Vid="", Category="Video",
                                 Status="Normal", StorageClass="STANDARD"),
            ProcedureTaskId="1500000001-procedurev2-%032x" % i, ReviewAudioVideoTaskId="",
            MetaData=meta_data(i)))
    if kind == 1:
        task_id = "1500000001-procedurev2-%032x" % i
        transcode = model(models.MediaProcessTaskResult, Type="Transcode", TranscodeTask=model(
            models.MediaProcessTaskTranscodeResult, Status="SUCCESS", ErrCodeExt="", ErrCode=0,
            Message="SUCCESS", Input=model(models.TranscodeTaskInput, Definition=100030),
            Output=model(models.MediaTranscodeItem,
                         Url=file_url(file_id).replace("f0.mp4", "v.f100030.mp4"),
                         Definition=100030, Bitrate=1200000, Height=720, Width=1280,
                         Size=5242880, Duration=33.5, Container="mov,mp4,m4a,3gp,3g2,mj2"),
            Progress=100, BeginProcessTime="2026-11-25T12:00:05Z",
            FinishTime="2026-11-25T12:00:41Z"))
        return model(models.EventContent, EventType="ProcedureStateChanged",
                     ProcedureStateChangeEvent=model(
                         models.ProcedureTask, TaskId=task_id, Status="FINISH", ErrCode=0,
                         Message="", FileId=file_id, FileName="lecture-%d" % i,
                         FileUrl=file_url(file_id), MetaData=meta_data(i),
                         MediaProcessResultSet=[transcode], TasksPriority=0,
                         TasksNotifyMode="Finish", SessionContext="", SessionId=""))
    if kind == 2:
        return model(models.EventContent, EventType="FileDeleted", FileDeleteEvent=model(
            models.FileDeleteTask, FileIdSet=[file_id]))
    return model(models.EventContent, EventType="PullComplete", PullCompleteEvent=model(
        models.PullUploadTask, TaskId="1500000001-Pull-%032x" % i, Status="FINISH", ErrCode=0,
        Message="", FileId=file_id,
        MediaBasicInfo=model(models.MediaBasicInfo, Name="pulled-%d" % i, Type="mp4",
                             MediaUrl=file_url(file_id)),
        MetaData=meta_data(i), FileUrl=file_url(file_id), ProcedureTaskId="",
        SessionContext="", SessionId="", Progress=100))


def v2_event(i):
    """Event i as a v2 `eventContent` (field names from the documented v2 samples)."""
    file_id = str(5285890784246869930 + i)
    kind = i % 3
    if kind == 0:
        data = {"fileId": file_id, "fileName": "lecture-%d" % i, "coverUrl": "",
                "fileUrl": file_url(file_id), "author": "", "sourceType": "ServerUpload",
                "sourceContext": "order=%d" % i, "streamId": "",
                "procedureTaskId": "1500000001-procedurev2-%032x" % i, "transcodeTaskId": ""}
        return {"version": "4.0", "eventType": "NewFileUpload", "data": data}
    if kind == 1:
        return {"version": "4.0", "eventType": "FileDeleted",
                "data": {"status": 0, "message": "", "fileInfo": [{"fileId": file_id}]}}
    return {"version": "4.0", "eventType": "PullComplete",
            "data": {"status": 0, "message": "", "vodTaskId": "Pull-%032x" % i,
                     "fileId": file_id, "fileUrl": file_url(file_id), "transcodeTaskId": ""}}


def check_models(compact):
    """Reads one event of each kind back with the SDK; a member it does not know aborts."""
    for i in range(4):
        text = json.dumps(v3_event(i)._serialize(allow_none=not compact), ensure_ascii=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            models.EventContent()._deserialize(json.loads(text))


# ---------------------------------------------------------------------------------------------
# The queue

class Queue:
    def __init__(self, events, batch, ttl, strict, compact, pace=None):
        self.cond = threading.Condition()
        # Event ids not pulled (or due again); with a pace, fed from the first pull on.
        self.ready = deque(range(events)) if pace is None else deque()
        self.events, self.pace, self.fed = events, pace, 0
        self.flight = {}                    # handle -> (event id, deadline)
        self.expired = set()                # handles whose event came back
        self.used = set()                   # handles already confirmed
        self.done = set()
        self.batch, self.ttl, self.strict, self.compact = batch, ttl, strict, compact
        self.v3 = {}                        # event id -> JSON text, built on first pull
        self.v2 = {}
        self.stats = dict(pulls=0, idle_pulls=0, pulled=0, confirmed=0, redelivered=0,
                          unknown_handles=0, expired_handles=0, auth_failures=0, requests=0)

    def _expire(self, now):
        for handle, (eid, deadline) in list(self.flight.items()):
            if deadline <= now:
                del self.flight[handle]
                self.expired.add(handle)
                self.ready.appendleft(eid)
                self.stats["redelivered"] += 1

    def feed(self):
        """Makes --pace's N events pullable every MS ms until all are, on a schedule kept
        from the first pull (a late tick catches up)."""
        n, ms = self.pace
        start = time.monotonic()
        tick = 0
        while self.fed < self.events:
            tick += 1
            time.sleep(max(0.0, start + tick * ms / 1000.0 - time.monotonic()))
            with self.cond:
                due = min(self.events, tick * n)
                self.ready.extend(range(self.fed, due))
                self.fed = due
                self.cond.notify_all()

    def pull(self, hold, api):
        end = time.monotonic() + hold
        with self.cond:
            if self.pace is not None and self.stats["pulls"] == 0:
                threading.Thread(target=self.feed, daemon=True).start()
            self.stats["pulls"] += 1
            while True:
                now = time.monotonic()
                self._expire(now)
                if self.ready or now >= end:
                    break
                nxt = min((d for _, d in self.flight.values()), default=end)
                self.cond.wait(max(0.001, min(end, nxt) - now))
            out = []
            while self.ready and len(out) < self.batch:
                eid = self.ready.popleft()
                handle = uuid.uuid4().hex
                self.flight[handle] = (eid, time.monotonic() + self.ttl)
                out.append((handle, eid))
            self.stats["pulled"] += len(out)
            if not out:
                self.stats["idle_pulls"] += 1
        return [(h, self.content(eid, api)) for h, eid in out]

    def content(self, eid, api):
        cache = self.v3 if api == "v3" else self.v2
        text = cache.get(eid)
        if text is None:
            if api == "v3":
                obj = v3_event(eid)._serialize(allow_none=not self.compact)
                obj.pop("EventHandle", None)  # set per pull, as the first member
            else:
                obj = v2_event(eid)
            text = cache[eid] = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        return text

    def confirm(self, handles):
        """Confirms handles; returns the bad ones."""
        with self.cond:
            self._expire(time.monotonic())
            bad = [h for h in handles if h not in self.flight]
            for h in bad:
                self.stats["expired_handles" if h in self.expired else "unknown_handles"] += 1
            if bad and self.strict:
                return bad
            for h in handles:
                if h in self.flight:
                    eid, _ = self.flight.pop(h)
                    self.used.add(h)
                    if eid not in self.done:
                        self.done.add(eid)
                        self.stats["confirmed"] += 1
            return bad

    def snapshot(self):
        with self.cond:
            return dict(self.stats, backlog=len(self.ready), in_flight=len(self.flight))


# ---------------------------------------------------------------------------------------------
# Signatures

class Auth:
    def __init__(self, secret_id, secret_key, verify):
        self.secret_id, self.secret_key, self.verify = secret_id, secret_key, verify
        self.nonces = set()
        self.lock = threading.Lock()

    def v3(self, headers, body):
        """None when the request is signed as configured, else (error code, message)."""
        if self.verify == "off":
            return None
        auth = headers.get("Authorization", "")
        try:
            algo, rest = auth.split(" ", 1)
            parts = dict(p.strip().split("=", 1) for p in rest.split(","))
            secret_id, date, service, term = parts["Credential"].split("/")
            signed, signature = parts["SignedHeaders"], parts["Signature"]
        except (ValueError, KeyError):
            return ("AuthFailure.InvalidAuthorization", "Authorization is not TC3-HMAC-SHA256")
        if algo != "TC3-HMAC-SHA256" or service != "vod" or term != "tc3_request" \
                or len(signature) != 64 or not all(c in "0123456789abcdef" for c in signature):
            return ("AuthFailure.InvalidAuthorization", "Authorization is not TC3-HMAC-SHA256")
        if secret_id != self.secret_id:
            return ("AuthFailure.SecretIdNotFound", "unknown SecretId")
        try:
            ts = int(headers.get("X-TC-Timestamp", ""))
        except ValueError:
            return ("AuthFailure.InvalidAuthorization", "X-TC-Timestamp is not an integer")
        if abs(time.time() - ts) > 300:
            return ("AuthFailure.SignatureExpire", "X-TC-Timestamp is more than 5 minutes off")
        if datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d") != date:
            return ("AuthFailure.SignatureFailure", "Credential date is not X-TC-Timestamp's")
        if self.verify != "full":
            return None
        names = signed.split(";")
        if "content-type" not in names or "host" not in names:
            return ("AuthFailure.SignatureFailure", "content-type and host must be signed")
        canonical = "POST\n/\n\n%s\n%s\n%s" % (
            "".join("%s:%s\n" % (n, (headers.get(n) or "").strip()) for n in names),
            signed, "UNSIGNED-PAYLOAD" if headers.get("X-TC-Content-SHA256") == "UNSIGNED-PAYLOAD"
            else hashlib.sha256(body).hexdigest())
        to_sign = "TC3-HMAC-SHA256\n%d\n%s/vod/tc3_request\n%s" % (
            ts, date, hashlib.sha256(canonical.encode()).hexdigest())
        if V3Sign.sign_tc3(self.secret_key, date, "vod", to_sign) != signature:
            return ("AuthFailure.SignatureFailure", "the signature does not match")
        return None

    def v2(self, method, host, path, params):
        """None when signed as configured, else a message (code 4100 or 4500)."""
        if self.verify == "off":
            return None
        if params.get("SecretId") != self.secret_id or not params.get("Signature"):
            return (4100, "unknown SecretId or no Signature")
        try:
            ts = int(params.get("Timestamp", ""))
            nonce = int(params.get("Nonce", ""))
        except ValueError:
            return (4100, "Timestamp and Nonce must be integers")
        if abs(time.time() - ts) > 7200:
            return (4500, "Timestamp is more than 2 hours off")
        with self.lock:
            if (ts, nonce) in self.nonces:
                return (4500, "Nonce reused")
            self.nonces.add((ts, nonce))
        if self.verify != "full":
            return None
        signed = {k: v for k, v in params.items() if k != "Signature"}
        expected = V2Sign(self.secret_id, self.secret_key).make(
            host, path, signed, method, params.get("SignatureMethod", "HmacSHA1"))
        if expected != params["Signature"]:
            return (4100, "the signature does not match")
        return None


# ---------------------------------------------------------------------------------------------
# HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one write per reply (see bench/receiver.py: Nagle and delayed ACKs)
    queue = auth = None
    hold = 5.0

    def log_message(self, *args):
        pass

    def reply(self, obj_or_text):
        body = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
        body = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def count_request(self):
        with self.queue.cond:
            self.queue.stats["requests"] += 1

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/_stats":
            return self.reply(self.queue.snapshot())
        self.count_request()
        self.v2("GET", url.path, dict(parse_qsl(url.query, keep_blank_values=True)))

    def do_POST(self):
        self.count_request()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlsplit(self.path)
        if self.headers.get("X-TC-Action"):
            return self.v3(body)
        self.v2("POST", url.path, dict(parse_qsl(body.decode(), keep_blank_values=True)))

    # API 3.0 ---------------------------------------------------------------------------------
    def v3_error(self, code, message):
        if code.startswith("AuthFailure"):
            with self.queue.cond:
                self.queue.stats["auth_failures"] += 1
        self.reply({"Response": {"Error": {"Code": code, "Message": message},
                                 "RequestId": str(uuid.uuid4())}})

    def v3(self, body):
        action = self.headers["X-TC-Action"]
        refused = self.auth.v3(self.headers, body)
        if refused:
            return self.v3_error(*refused)
        if self.headers.get("X-TC-Version") != "2018-07-17":
            return self.v3_error("NoSuchVersion", "X-TC-Version must be 2018-07-17")
        try:
            payload = json.loads(body or b"{}")
            assert isinstance(payload, dict)
        except (ValueError, AssertionError):
            return self.v3_error("InvalidParameter", "the body must be a JSON object")
        if action == "PullEvents":
            events = self.queue.pull(self.hold, "v3")
            if not events:
                return self.v3_error("ResourceNotFound", "no event")
            items = ",".join('{"EventHandle":%s,%s' % (json.dumps(h), text[1:])
                             for h, text in events)
            return self.reply('{"Response":{"EventSet":[%s],"RequestId":"%s"}}'
                              % (items, uuid.uuid4()))
        if action == "ConfirmEvents":
            handles = payload.get("EventHandles")
            if not isinstance(handles, list) or not 1 <= len(handles) <= 16 \
                    or not all(isinstance(h, str) for h in handles):
                return self.v3_error("InvalidParameter", "EventHandles must list 1 to 16 strings")
            bad = self.queue.confirm(handles)
            if bad:
                return self.v3_error("InvalidParameter",
                                     "invalid or expired EventHandle: " + ",".join(bad))
            return self.reply({"Response": {"RequestId": str(uuid.uuid4())}})
        if action == "DescribeEventConfig":  # the daemon checks the app is in PULL mode
            answer = model(models.DescribeEventConfigResponse, Mode="PULL", NotificationUrl="",
                           UploadMediaCompleteEventSwitch="ON",
                           DeleteMediaCompleteEventSwitch="ON",
                           PersistenceCompleteEventSwitch="ON", RequestId=str(uuid.uuid4()))
            return self.reply({"Response": answer._serialize()})
        return self.v3_error("InvalidAction", "the simulator serves PullEvents, ConfirmEvents "
                             "and DescribeEventConfig")

    # v2 --------------------------------------------------------------------------------------
    def v2(self, method, path, params):
        refused = self.auth.v2(method, self.headers.get("Host", ""), path, params)
        if refused:
            if refused[0] == 4100:
                with self.queue.cond:
                    self.queue.stats["auth_failures"] += 1
            return self.reply({"code": refused[0], "message": refused[1],
                               "codeDesc": "AuthFailure" if refused[0] == 4100 else "ReplayAttack"})
        action = params.get("Action")
        if action == "PullEvent":
            events = self.queue.pull(self.hold, "v2")
            if not events:
                return self.reply({"code": 4000, "message": "", "codeDesc": "InvalidParameter"})
            items = ",".join('{"msgHandle":%s,"eventContent":%s}' % (json.dumps(h), text)
                             for h, text in events)
            return self.reply('{"code":0,"message":"","codeDesc":"Success","eventList":[%s]}'
                              % items)
        if action == "ConfirmEvent":
            handles = [v for k, v in sorted(params.items())
                       if k.replace("_", ".").startswith("msgHandle.")]
            if not handles:
                return self.reply({"code": 4000, "message": "msgHandle.0 is required",
                                   "codeDesc": "InvalidParameter"})
            bad = self.queue.confirm(handles)
            if bad:
                return self.reply({"code": 4000, "message": "invalid msgHandle: " + ",".join(bad),
                                   "codeDesc": "InvalidParameter"})
            return self.reply({"code": 0, "message": "", "codeDesc": "Success"})
        return self.reply({"code": 4000, "message": "unsupported Action",
                           "codeDesc": "InvalidParameter"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--events", type=int, default=0)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--ttl", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--secret-id", default="AKIDemulatorDEMOsecretID0000000000000")
    ap.add_argument("--secret-key", default="emulator-demo-secret-key-not-a-real-one")
    ap.add_argument("--verify", choices=["full", "shape", "off"], default="full")
    ap.add_argument("--compact", action="store_true")
    ap.add_argument("--strict-confirm", action="store_true")
    ap.add_argument("--pace", help="N/MS: feed N events every MS ms instead of a backlog")
    args = ap.parse_args()
    pace = tuple(int(x) for x in args.pace.split("/")) if args.pace else None

    check_models(args.compact)
    queue = Queue(args.events, args.batch, args.ttl, args.strict_confirm, args.compact, pace)
    for api in ("v3", "v2"):  # build the payloads now, not while a contender is measured
        for i in range(args.events):
            queue.content(i, api)
    Handler.queue, Handler.hold = queue, args.hold
    Handler.auth = Auth(args.secret_id, args.secret_key, args.verify)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
