#!/usr/bin/env python3
"""Call one Tencent Cloud VOD v2 action through the official Python SDK
(qcloudapi-sdk-python==2.0.15, QcloudApi('vod', config).call) against any
endpoint, e.g. a local plain-HTTP emulator, and print the raw response body.

Usage:
    python3 tests/py/v2_client.py --endpoint http://127.0.0.1:PORT/v2/index.php \
        --secret-id ID --secret-key KEY [--method GET|POST] \
        [--sign-method HmacSHA1|HmacSHA256] [--region gz] [--token T] \
        [--timeout SECONDS] [--debug] Action [name=value ...]

    e.g. ... PullEvent
         ... ConfirmEvent msgHandle.0=H1 msgHandle.1=H2

Exit status: 0 = HTTP 200 (body on stdout, whatever its JSON "code");
2 = transport error (connect refused, timeout, reset...; message on stderr);
3 = HTTP status != 200 (body on stdout, status on stderr); 64 = bad usage.

What the SDK does (read from 2.0.15 source; checked against a throwaway
http.server that dumped the request line, headers and body):

* Host / endpoint.  `Vod` hard-codes the class attribute
  requestHost = 'vod.api.qcloud.com'; Base.__init__ does
  `self.requestHost = self.requestHost or config.get("endpoint")`, so the
  documented config key "endpoint" is IGNORED for module 'vod' (it only works
  for modules without their own class).  This script therefore sets
  Vod.requestHost (and Vod.requestUri if the path is not /v2/index.php) to the
  endpoint's netloc/path before calling.  The same string is used both to open
  the connection and as the signed host, so
      SIGNED HOST = the netloc VERBATIM, port included: "127.0.0.1:8080"
  i.e. the source string is "GET127.0.0.1:8080/v2/index.php?Action=...".
  No normalisation is done (no lower-casing, ":80"/":443" are not stripped).
  The HTTP Host header is produced by http.client: "127.0.0.1:8080" for a
  non-default port (identical to the signed host), but the port is dropped
  when it is the scheme default (":80" for http, ":443" for https), in which
  case the Host header differs from the signed string.  An emulator should
  verify against the Host header as received (random port => they match).

* Scheme.  The SDK always uses http.client.HTTPSConnection
  (common/request.py: ApiRequest -> MyHTTPSConnection(host)); no config
  switches it to HTTP, and generateUrl() hard-codes "https://".  A host with
  ":port" is fine: HTTPSConnection splits "host:port" itself.  For an
  http:// endpoint this script MONKEYPATCHES
  QcloudApi.common.request.MyHTTPSConnection with a plain HTTPConnection
  subclass of the same interface (scheme only; signing, params and encoding
  untouched).  MyHTTPSConnection honours https_proxy/HTTPS_PROXY (CONNECT
  tunnel to host:443); the plain replacement ignores proxies.

* Parameters added by the SDK (Base._build_req_inter), all of them signed:
    Action          first letter upper-cased ("pullEvent" -> "PullEvent")
    RequestClient   always "SDK_PYTHON_2.0.15"
    Region          only if config["Region"] (capital R) is non-empty; note
                    QcloudApi.setRegion() writes config["region"] and so has
                    no effect.  This script sets config["Region"] (--region).
    Token           only if config["Token"] is non-empty (--token)
    SecretId        config secretId unless given as a param
    Nonce           random.randint(1, sys.maxsize) unless given, i.e. up to
                    2**63-1 = 9223372036854775807 (19 digits) on 64-bit
    Timestamp       int(time.time()) unless given
    SignatureMethod ALWAYS sent and signed; config "SignatureMethod"
                    (default "HmacSHA1"); a SignatureMethod param overrides
    Signature       Base64(HMAC(key, METHOD+host+uri+"?"+sorted k=v raw))
  Caller-supplied Nonce/Timestamp/SecretId/SignatureMethod params are used
  as given (handy for fixed vectors).  List/dict values are flattened to
  name.0/name.key; for signing only, "_" in names is replaced by "." -- the
  names SENT on the wire keep their "_" (msgHandle_0 is sent as msgHandle_0
  but signed as msgHandle.0), so a verifier must apply the same mapping.
  For POST, params whose value starts with "@" are sent but not signed.

* Encoding.  All params (Signature included) are serialised once with
  urllib.parse.urlencode (quote_plus: space -> "+", "/" -> "%2F",
  "+" -> "%2B", "=" -> "%3D"), in dict insertion order (NOT sorted;
  Signature last).
    GET : "GET /v2/index.php?<urlencoded> HTTP/1.1", no body, no
          Content-Type.
    POST: "POST /v2/index.php HTTP/1.1" (no query string), body =
          <urlencoded>, Content-Type: application/x-www-form-urlencoded,
          Content-Length set by http.client.
  Headers are only http.client's defaults: Host, Accept-Encoding: identity,
  (+ Content-Length/Content-Type for POST); no User-Agent, no Connection
  header (keep-alive is off; the client closes after each response).
  Quirk: if the server closes the connection without any response
  (http.client.RemoteDisconnected, a BadStatusLine), the SDK re-sends ONCE
  as METHOD /v2/index.php with the urlencoded params as the BODY, even for
  GET (no query string, Content-Length set, no Content-Type; same
  Signature/Nonce) -- observed against the throwaway server.

* Response.  Non-200 HTTP -> ApiServerNetworkException; otherwise the raw
  body bytes are returned untouched (JSON "code" is not inspected).
  req_timeout (default 90 s) is applied to the socket only after the
  request is sent; connecting uses the default (blocking) socket timeout.
"""

import argparse
import contextlib
import sys
from http.client import HTTPConnection
from urllib.parse import urlsplit

import QcloudApi.common.request as sdk_request
from QcloudApi.common.api_exception import (ApiClientNetworkException,
                                            ApiClientParamException,
                                            ApiServerNetworkException)
from QcloudApi.modules.vod import Vod
from QcloudApi.qcloudapi import QcloudApi


class PlainHTTPConnection(HTTPConnection):
    """Drop-in for the SDK's MyHTTPSConnection over plain HTTP (no proxy).

    The SDK's ApiRequest reads `request_length` after each request, so it is
    kept with the same meaning."""

    def __init__(self, host, port=None):
        HTTPConnection.__init__(self, host, port)
        self.request_length = 0

    def send(self, data):
        HTTPConnection.send(self, data)
        self.request_length += len(data)

    def request(self, method, url, body=None, headers={}):
        self.request_length = 0
        HTTPConnection.request(self, method, url, body, headers)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Call a VOD v2 action via the official Python SDK.")
    ap.add_argument("--endpoint", required=True,
                    help="e.g. http://127.0.0.1:8080/v2/index.php")
    ap.add_argument("--secret-id", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--method", default="GET", choices=["GET", "POST"])
    ap.add_argument("--sign-method", default="HmacSHA1",
                    choices=["HmacSHA1", "HmacSHA256"])
    ap.add_argument("--region", default="gz",
                    help="config Region (default gz); '' to send none")
    ap.add_argument("--token", default="", help="STS token (optional)")
    ap.add_argument("--timeout", type=float, default=15.0,
                    help="SDK req_timeout in seconds (default 15)")
    ap.add_argument("--debug", action="store_true",
                    help="SDK debug dump of request/response, to stderr")
    ap.add_argument("action")
    ap.add_argument("params", nargs="*", metavar="name=value")
    args = ap.parse_args(argv)

    params = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error("parameter %r is not name=value" % item)
        params[name] = value
    args.params = params

    url = urlsplit(args.endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        ap.error("--endpoint must be http(s)://host[:port]/path")
    if url.query or url.fragment:
        ap.error("--endpoint must not have a query or fragment")
    args.scheme, args.netloc = url.scheme, url.netloc
    args.path = url.path or "/v2/index.php"
    return args


def point_sdk_at(scheme, netloc, path):
    """Aim module 'vod' at the endpoint (see the module docstring)."""
    # Vod's hard-coded host wins over config["endpoint"]; override the class
    # attribute.  This string is both the connection target and signed host.
    Vod.requestHost = netloc
    Vod.requestUri = path
    if scheme == "http":
        # The only way to get plain HTTP: the SDK hard-codes HTTPSConnection.
        sdk_request.MyHTTPSConnection = PlainHTTPConnection


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    point_sdk_at(args.scheme, args.netloc, args.path)
    config = {
        "secretId": args.secret_id,
        "secretKey": args.secret_key,
        "method": args.method,
        "SignatureMethod": args.sign_method,
        "Region": args.region,
        "Token": args.token,
    }
    api = QcloudApi("vod", config)
    try:
        # SDK debug output uses print(); keep stdout for the body only.
        with contextlib.redirect_stdout(sys.stderr):
            body = api.call(args.action, args.params,
                            req_timeout=args.timeout, debug=args.debug)
    except ApiServerNetworkException as e:
        sys.stdout.buffer.write(e.data if isinstance(e.data, bytes)
                                else str(e.data).encode())
        sys.stdout.flush()
        print("v2_client: HTTP status %s" % e.status, file=sys.stderr)
        return 3
    except ApiClientNetworkException as e:
        print("v2_client: transport error: %s" % e.message, file=sys.stderr)
        return 2
    except ApiClientParamException as e:
        print("v2_client: %s" % e.message, file=sys.stderr)
        return 64
    sys.stdout.buffer.write(body if isinstance(body, bytes)
                            else str(body).encode())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
