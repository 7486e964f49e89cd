#!/usr/bin/env python3
"""Print the v2 ("signature v1") Signature that the official Tencent Cloud
Python SDK computes for one request.

Requires: pip install qcloudapi-sdk-python==2.0.15

Reads ONE JSON object from stdin:

    {"method": "GET" | "POST",
     "host": "vod.api.qcloud.com",          # exactly the string the SDK signs
     "path": "/v2/index.php",
     "secret_key": "...",
     "secret_id": "...",                    # optional, unused by the SDK's Sign
     "sign_method": "HmacSHA1"|"HmacSHA256",  # optional, see below
     "params": {"Action": "PullEvent", "Nonce": 11886, ...}}

and prints the Base64 Signature (no trailing newline other than print's).

The algorithm is NOT reimplemented here: it calls QcloudApi.common.sign.Sign.make,
the SDK's own function.  `params` is passed through the SDK's own flattening
(Base._fix_params: list -> name.0, name.1; dict -> name.key) first, exactly as
Base._build_req_inter does; flat params are unchanged by it.  `params` must not
contain "Signature".  No parameter is added (unlike a real SDK call, which adds
RequestClient/SignatureMethod/Nonce/Timestamp/SecretId before signing), so the
caller controls the signed set exactly.

Hash selection mirrors Base._build_req_inter: if params contains
"SignatureMethod" its value is used; else "sign_method" from the JSON object;
else HmacSHA1.  (Sign.make uses SHA-256 only for the exact string
"HmacSHA256", SHA-1 for anything else.)

Values: the SDK formats values with '%s', so pass strings for byte-exact
control; JSON integers become their decimal form, true/false would become
"True"/"False" (Python's str).

Example:
    echo '{"method":"GET","host":"vod.api.qcloud.com","path":"/v2/index.php",
           "secret_key":"Gu5t9xGARNpq86cd98joQYCN3Cozk1qA",
           "params":{"Action":"PullEvent","Nonce":"11886","Region":"gz",
                     "SecretId":"AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA",
                     "Timestamp":"1465185768","SignatureMethod":"HmacSHA1"}}' \
      | python3 tests/py/v2_sign.py
    # -> A1mKXyMJqqB2GCVPJ0cg20r2OuU=
"""

import json
import sys

from QcloudApi.common.sign import Sign
from QcloudApi.modules.base import Base


def sdk_flatten(params):
    """The SDK's own Base._fix_params (no instance state is used by it)."""
    return Base._fix_params(Base.__new__(Base), params)


def main():
    req = json.load(sys.stdin)
    method = req.get("method", "GET").upper()
    params = sdk_flatten(req["params"])
    if "Signature" in params:
        sys.exit("v2_sign: params must not contain Signature")
    sign_method = params.get("SignatureMethod",
                             req.get("sign_method", "HmacSHA1"))
    signer = Sign(req.get("secret_id", ""), req["secret_key"])
    print(signer.make(req["host"], req.get("path", "/v2/index.php"),
                      params, method, sign_method))


if __name__ == "__main__":
    main()
