"""An aiocoap client for sealcast-coap's interoperability tests.

Usage:
  python3 client.py get URI
  python3 client.py post URI CONTENT_FORMAT HEX_FILE

Prints one JSON line: {"code": "2.05", "cf": 18, "payload": "<hex>"}.
aiocoap does block-wise transfer (RFC 7959) by itself both ways.
"""

import asyncio
import json
import sys
import warnings

import aiocoap
from aiocoap.numbers.codes import Code

warnings.simplefilter("ignore", DeprecationWarning)


async def main():
    ctx = await aiocoap.Context.create_client_context()
    op, uri = sys.argv[1], sys.argv[2]
    if op == "get":
        msg = aiocoap.Message(code=Code.GET, uri=uri)
    else:
        with open(sys.argv[4]) as f:
            body = bytes.fromhex(f.read().strip())
        msg = aiocoap.Message(
            code=Code.POST, uri=uri, payload=body, content_format=int(sys.argv[3])
        )
    resp = await asyncio.wait_for(ctx.request(msg).response, 30)
    cf = resp.opt.content_format
    print(
        json.dumps(
            {
                "code": str(resp.code.dotted),
                "cf": None if cf is None else int(cf),
                "payload": resp.payload.hex(),
            }
        ),
        flush=True,
    )
    await ctx.shutdown()


asyncio.run(main())
