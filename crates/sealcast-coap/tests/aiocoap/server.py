"""An aiocoap server for sealcast-coap's interoperability tests.

Usage: python3 server.py UNICAST_PORT MULTICAST_PORT

Unicast on 127.0.0.1:UNICAST_PORT:
  POST /echo  answers 2.04 with the request body reversed and the same
              Content-Format (a large body exercises Block1 in, Block2 out)
  GET  /big   answers 2.05 with 10 KiB of pattern bytes, Content-Format 18
Multicast: joins 224.0.1.187 on the loopback interface only, port
MULTICAST_PORT; every POST to /grp/cmd prints one JSON line on stdout.
Prints READY once both contexts are up. Runs until killed.
"""

import asyncio
import json
import sys
import warnings

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

warnings.simplefilter("ignore", DeprecationWarning)


def pattern(n):
    return bytes((i * 7) % 251 for i in range(n))


class Echo(resource.Resource):
    async def render_post(self, request):
        return aiocoap.Message(
            code=Code.CHANGED,
            payload=request.payload[::-1],
            content_format=request.opt.content_format,
        )


class Big(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(code=Code.CONTENT, payload=pattern(10240), content_format=18)


class GroupCommand(resource.Resource):
    async def render_post(self, request):
        cf = request.opt.content_format
        print(
            json.dumps(
                {
                    "event": "group",
                    # Site strips the path it dispatched on.
                    "path": "grp/cmd",
                    "cf": None if cf is None else int(cf),
                    "payload": request.payload.hex(),
                }
            ),
            flush=True,
        )
        return aiocoap.Message(code=Code.CHANGED)


async def main():
    uport = int(sys.argv[1])
    mport = int(sys.argv[2])
    site = resource.Site()
    site.add_resource(["echo"], Echo())
    site.add_resource(["big"], Big())
    site.add_resource(["grp", "cmd"], GroupCommand())
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", uport))
    # Bound to the group address itself, joined on lo: it hears the group
    # on this port and nothing else.
    await aiocoap.Context.create_server_context(
        site, bind=("224.0.1.187", mport), multicast=[("224.0.1.187", "lo")]
    )
    print("READY", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
