#!/usr/bin/env python3
r"""Print the API 3.0 TC3-HMAC-SHA256 Signature that the official Tencent Cloud
Python SDK computes for one request.

Requires: pip install tencentcloud-sdk-python-common==3.1.195

Reads ONE JSON object from stdin:

    {"secret_id": "AKID...",          # optional, not part of the signature
     "secret_key": "...",
     "host": "vod.tencentcloudapi.com",  # signed "host:" value, verbatim
     "service": "vod",
     "timestamp": 1551113065,          # Unix seconds (int or decimal string)
     "payload": "{}",                  # exact body string (POST) or query
                                       # string without "?" (GET)
     "content_type": "application/json",  # optional, see below
     "method": "POST",                 # optional, POST (default) or GET
     "uri": "/"}                       # optional, default "/"

and prints the lower-case hex Signature.

The algorithm is NOT reimplemented here.  It calls
AbstractClient._get_tc3_signature, the SDK method that a real call uses.  That
method builds the canonical request and the string to sign, then calls
Sign.sign_tc3 for the HMAC chain.  It reads only the RequestInternal it is
given: method, uri, data, and the Content-Type, Host and X-TC-Timestamp
headers.  It does not use the client instance.  The one value computed outside
it is the credential-scope date.  That is copied from
AbstractClient._build_req_with_tc3_signature:
datetime.utcfromtimestamp(timestamp).strftime('%Y-%m-%d').

What the SDK signs (tencentcloud-sdk-python-common 3.1.195):
    CanonicalRequest = METHOD \n uri \n query \n
                       "content-type:" + Content-Type + "\n" +
                       "host:" + Host + "\n" \n
                       "content-type;host" \n
                       hex(sha256(payload as UTF-8))
  * SignedHeaders is always exactly "content-type;host".  The X-TC-* headers
    are never signed.
  * POST: query = "" and payload = the body.
  * GET: query = the urlencoded params string (payload here) and the hashed
    payload is "" (e3b0c442...).
  * Header values are used verbatim: no lower-casing and no trimming.  Host
    is the HttpProfile endpoint string, port included if it has one.
  * StringToSign = "TC3-HMAC-SHA256\n<timestamp>\n<date>/<service>/tc3_request\n"
                   + hex(sha256(CanonicalRequest))
  * On a real call the SDK sends Content-Type "application/json" for POST,
    with no charset, and "application/x-www-form-urlencoded" for GET.
    content_type defaults to those values.  Pass any other string, e.g. the
    documented "application/json; charset=utf-8", to sign it instead.

Example (official CVM vector; the masked keys are the literal inputs and the
body holds literal backslash-u escapes):
    printf '%s' '{"secret_id":"AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
      "secret_key":"Gu5t9xGARNpq86cd98joQYCN3*******",
      "host":"cvm.tencentcloudapi.com","service":"cvm","timestamp":1551113065,
      "content_type":"application/json; charset=utf-8","method":"POST",
      "payload":"{\"Limit\": 1, \"Filters\": [{\"Values\": [\"\\u672a\\u547d\\u540d\"], \"Name\": \"instance-name\"}]}"}' \
      | python3 tests/py/v3_sign.py
    # -> 2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c
"""

import json
import sys
from datetime import datetime

from tencentcloud.common.abstract_client import AbstractClient
from tencentcloud.common.http.request import RequestInternal

# The SDK's own defaults (abstract_client._json_content / _form_urlencoded_content).
SDK_CONTENT_TYPE = {"POST": "application/json",
                    "GET": "application/x-www-form-urlencoded"}


def sdk_tc3_signature(secret_key, host, service, timestamp, payload,
                      content_type=None, method="POST", uri="/"):
    method = method.upper()
    if method not in SDK_CONTENT_TYPE:
        raise ValueError("method must be POST or GET (the SDK supports only these)")
    if content_type is None:
        content_type = SDK_CONTENT_TYPE[method]
    timestamp = int(timestamp)
    req = RequestInternal(host, method, uri, header={
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Timestamp": str(timestamp),   # the SDK sends str(int(time.time()))
    }, data=payload)
    # Copied from AbstractClient._build_req_with_tc3_signature (the date is
    # computed inline there, so this line cannot be called separately).
    date = datetime.utcfromtimestamp(timestamp).strftime('%Y-%m-%d')
    client = AbstractClient.__new__(AbstractClient)   # no instance state used
    return client._get_tc3_signature({}, req, date, service, secret_key)


def main():
    req = json.load(sys.stdin)
    print(sdk_tc3_signature(req["secret_key"], req["host"], req["service"],
                            req["timestamp"], req["payload"],
                            req.get("content_type"), req.get("method", "POST"),
                            req.get("uri", "/")))


if __name__ == "__main__":
    main()
