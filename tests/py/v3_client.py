#!/usr/bin/env python3
"""Call one Tencent Cloud VOD API 3.0 action through the official Python SDK
(tencentcloud-sdk-python-vod 3.1.194 VodClient, tencentcloud-sdk-python-common
3.1.195, TC3-HMAC-SHA256) against any endpoint, for example a local plain-HTTP
emulator.  It prints the response as JSON.

Usage:
    python3 tests/py/v3_client.py --endpoint http://127.0.0.1:PORT \
        --secret-id ID --secret-key KEY [--region ap-guangzhou] \
        [--sub-app-id N] [--token T] [--language zh-CN|en-US] \
        [--method POST|GET] [--timeout SECONDS] [--debug] ACTION ...

    ACTION is one of:
        PullEvents
        ConfirmEvents --handles H1 [H2 ...]
        DescribeDrmDataKey --edks E1 [E2 ...]
        DescribeEventConfig
        ModifyEventConfig [--mode PUSH|PULL] [--notification-url URL]
            [--upload-switch ON|OFF] [--delete-switch ON|OFF]
            [--persistence-switch ON|OFF]

Exit status:
    0   Success.  stdout gets response.to_json_string(), the SDK's own
        serialisation: every model field is present, null when unset, and
        ensure_ascii=False.
    1   Any other TencentCloudSDKException.  stdout gets
        {"Error": {"Code": ..., "Message": ...}, "RequestId": ...}.
    2   Transport error (SDK code "ClientNetworkError": refused, timeout,
        reset...).  The same JSON goes to stdout and the message to stderr.
    3   HTTP status other than 200 (SDK code "ServerNetworkError").  The same
        JSON goes to stdout, with the raw body as Message.
    64  Bad usage.

What the SDK does (read from the 3.1.195 common source and checked against a
throwaway http.server that dumped each request and re-verified its signature
with v3_sign.py):

* Endpoint.  HttpProfile(protocol="http"|"https", endpoint="host[:port]").
  HttpProfile has no `scheme` argument: `protocol` sets .scheme, and
  scheme == "http" selects plain HTTP.  The SDK uses the endpoint string
  VERBATIM in three places:
    - the URL, "<scheme>://" + endpoint, with no path, so requests sends "/";
    - the Host header, which the SDK sets itself (req.header["Host"] =
      endpoint), so requests/http.client do not rewrite it;
    - the signed "host:" line.
  So with a port, e.g. "127.0.0.1:8080", the Host header and the signed host
  are both "127.0.0.1:8080", port included.  Unlike v2 (http.client's Host),
  a default port (":80"/":443") is NOT dropped from the Host header; it stays
  identical to the signed string.  An endpoint with a scheme or path would be
  copied into the Host header and the signature, which breaks them.  This
  script therefore passes only the netloc and rejects any path other than "/".

* Request (POST, the SDK default), headers in the order observed on the wire:
    POST / HTTP/1.1
    User-Agent: python-requests/2.34.2      from requests, not the SDK
    Accept-Encoding: gzip, deflate          from requests (+br/zstd if those
                                            modules are installed)
    Accept: */*                             from requests
    Connection: keep-alive                  from requests
    X-TC-TraceId: <uuid4>                   added by AbstractClient._call,
                                            random per call
    Content-Type: application/json          NO "; charset=utf-8"
    Host: 127.0.0.1:PORT                    endpoint verbatim, port included
                                            (also ":80" on port 80, observed)
    X-TC-Action: PullEvents                 first letter upper-cased
    X-TC-RequestClient: SDK_PYTHON_3.1.194  (*)
    X-TC-Timestamp: 1700000000              str(int(time.time())), this
                                            machine's clock, read at call time
    X-TC-Version: 2018-07-17
    X-TC-Region: ap-guangzhou               only if the region is non-empty
    X-TC-Token: T                           only with a token
    X-TC-Language: zh-CN                    ALWAYS sent; ClientProfile
                                            defaults to zh-CN, and only
                                            zh-CN/en-US are allowed
    Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<UTC date of the
        timestamp>/vod/tc3_request, SignedHeaders=content-type;host,
        Signature=<hex>
    Content-Length: <n>                     POST only
  (*) The value comes from
  tencentcloud/__init__.py __version__.  Both wheels ship that file, so it
  reflects whichever package was installed last: 3.1.194 (vod) here, even
  though common is 3.1.195.  SignedHeaders is always exactly
  "content-type;host": no X-TC-* header is signed, so the service ("vod")
  and the date are bound only through the credential scope.
  No X-TC-Content-SHA256 header is sent unless ClientProfile.unsignedPayload
  is set (it is not here).

* Body: json.dumps(request._serialize()), with Python's default separators
  (", " and ": ") and ensure_ascii=True.  Fields are in model order, and unset
  (None) fields are omitted:
    PullEvents                      {}
    PullEvents --sub-app-id 1500    {"SubAppId": 1500}
    ConfirmEvents --handles H1 H2   {"EventHandles": ["H1", "H2"]}
      ... with --sub-app-id 1500    {"EventHandles": ["H1", "H2"], "SubAppId": 1500}
    DescribeDrmDataKey --edks E1 E2 {"EdkList": ["E1", "E2"]}
      ... with --sub-app-id 1500    {"EdkList": ["E1", "E2"], "SubAppId": 1500}
    DescribeEventConfig             {}
    ModifyEventConfig --mode PULL --upload-switch ON
                                    {"Mode": "PULL", "UploadMediaCompleteEventSwitch": "ON"}
  SubAppId is a JSON integer.
  GET (--method GET) sends no body.  The flattened params (EventHandles.0=H1)
  are urlencoded into the query string and signed as the canonical query.
  Content-Type is then application/x-www-form-urlencoded and the hashed
  payload is "".

* Response parsing (AbstractClient.call + VodClient.<Action>):
  1. HTTP status != 200 -> TencentCloudSDKException("ServerNetworkError",
     <raw body bytes>).  The body is not parsed.
  2. Error detection (_check_error) runs ONLY if the response Content-Type is
     exactly "application/json" or "text/plain".  Then Response.Error present
     -> TencentCloudSDKException(Error.Code, Error.Message,
     Response.RequestId).  With any other Content-Type, including
     "application/json; charset=utf-8" or none at all, an Error response is
     NOT detected: PullEvents "succeeds" with EventSet null (observed).  An
     emulator must send exactly "Content-Type: application/json".  If Error
     has no RequestId, the result is code "KeyError", message "'RequestId'".
  3. json.loads(body)["Response"] is deserialised into <Action>Response.
     A missing "Response" gives code "KeyError", message "'Response'".
     Non-JSON gives code "JSONDecodeError".
  4. PullEvents: "EventSet": null, a missing key, and [] are all accepted.
     null and missing give EventSet None, printed as "EventSet": null.
     [] gives [].  Each event becomes an EventContent.  Unknown keys are
     dropped without a message (the SDK's UserWarning "fileds are useless"
     is filtered).  Known-but-absent fields print as null.
     ConfirmEvents reads only RequestId.  DescribeDrmDataKey reads
     KeyList[{Edk, Dk}] and RequestId.  A missing RequestId is fine (null).
  No retries: the default is NoopRetryer, and the region breaker is disabled.

* Proxies: for plain HTTP the SDK uses $HTTP_PROXY/$http_proxy unless the
  endpoint host:port is a substring of $NO_PROXY, and requests also applies
  env proxies.  Unset them, or set NO_PROXY=127.0.0.1, for a local emulator.
"""

import argparse
import json
import sys
from urllib.parse import urlsplit

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import \
    TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.vod.v20180717 import models, vod_client


class UsageParser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; 2 means transport error here."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(64, "%s: error: %s\n" % (self.prog, message))


def parse_args(argv):
    ap = UsageParser(
        description="Call a VOD API 3.0 action via the official Python SDK.")
    ap.add_argument("--endpoint", required=True,
                    help="http(s)://host[:port], e.g. http://127.0.0.1:8080")
    ap.add_argument("--secret-id", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--region", default="",
                    help="X-TC-Region (default: none sent)")
    ap.add_argument("--sub-app-id", type=int, default=None,
                    help="SubAppId body field (integer)")
    ap.add_argument("--token", default=None, help="STS token -> X-TC-Token")
    ap.add_argument("--language", default="zh-CN", choices=["zh-CN", "en-US"],
                    help="X-TC-Language (the SDK always sends one)")
    ap.add_argument("--method", default="POST", choices=["POST", "GET"])
    ap.add_argument("--timeout", type=int, default=15,
                    help="HttpProfile reqTimeout in seconds (default 15)")
    ap.add_argument("--debug", action="store_true",
                    help="SDK debug log (request/response dump) to stderr")
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("PullEvents")
    p = sub.add_parser("ConfirmEvents")
    p.add_argument("--handles", nargs="+", required=True, metavar="HANDLE")
    p = sub.add_parser("DescribeDrmDataKey")
    p.add_argument("--edks", nargs="+", required=True, metavar="EDK")
    sub.add_parser("DescribeEventConfig")
    p = sub.add_parser("ModifyEventConfig")
    p.add_argument("--mode", choices=["PUSH", "PULL"])
    p.add_argument("--notification-url")
    for switch in ("upload", "delete", "persistence"):
        p.add_argument("--%s-switch" % switch, choices=["ON", "OFF"])
    args = ap.parse_args(argv)

    url = urlsplit(args.endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        ap.error("--endpoint must be http(s)://host[:port]")
    if url.path not in ("", "/") or url.query or url.fragment:
        # The SDK always posts to "/" and copies the endpoint into Host.
        ap.error("--endpoint must not have a path, query or fragment")
    args.scheme, args.netloc = url.scheme, url.netloc
    return args


def build_request(args):
    if args.action == "PullEvents":
        req = models.PullEventsRequest()
    elif args.action == "ConfirmEvents":
        req = models.ConfirmEventsRequest()
        req.EventHandles = args.handles
    elif args.action == "DescribeDrmDataKey":
        req = models.DescribeDrmDataKeyRequest()
        req.EdkList = args.edks
    elif args.action == "DescribeEventConfig":
        req = models.DescribeEventConfigRequest()
    else:
        req = models.ModifyEventConfigRequest()
        req.Mode = args.mode
        req.NotificationUrl = args.notification_url
        req.UploadMediaCompleteEventSwitch = args.upload_switch
        req.DeleteMediaCompleteEventSwitch = args.delete_switch
        req.PersistenceCompleteEventSwitch = args.persistence_switch
    if args.sub_app_id is not None:
        req.SubAppId = args.sub_app_id
    return req


def print_error(e):
    msg = e.get_message()
    if isinstance(msg, bytes):          # ServerNetworkError carries raw body
        msg = msg.decode("utf-8", "replace")
    print(json.dumps({"Error": {"Code": e.get_code(), "Message": msg},
                      "RequestId": e.get_request_id()}, ensure_ascii=False))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cred = credential.Credential(args.secret_id, args.secret_key,
                                     args.token)
        http_profile = HttpProfile(protocol=args.scheme, endpoint=args.netloc,
                                   reqMethod=args.method,
                                   reqTimeout=args.timeout)
        client_profile = ClientProfile(signMethod="TC3-HMAC-SHA256",
                                       httpProfile=http_profile,
                                       language=args.language)
        client = vod_client.VodClient(cred, args.region, client_profile)
    except TencentCloudSDKException as e:     # e.g. InvalidCredential
        print("v3_client: %s" % e, file=sys.stderr)
        return 64
    if args.debug:
        client.set_stream_logger(sys.stderr)

    try:
        resp = getattr(client, args.action)(build_request(args))
    except TencentCloudSDKException as e:
        print_error(e)
        if e.get_code() == "ClientNetworkError":
            print("v3_client: transport error: %s" % e.get_message(),
                  file=sys.stderr)
            return 2
        if e.get_code() == "ServerNetworkError":
            print("v3_client: HTTP status != 200", file=sys.stderr)
            return 3
        return 1
    print(resp.to_json_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
