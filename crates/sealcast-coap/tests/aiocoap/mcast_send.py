"""Sends one non-confirmable CoAP POST, encoded by aiocoap, to a multicast
group over the loopback interface only.

Usage: python3 mcast_send.py GROUP PORT PATH CONTENT_FORMAT HEX_PAYLOAD MID

The socket is pinned like every multicast sender in these tests:
IP_MULTICAST_IF 127.0.0.1, TTL 1, loopback on, bound to 127.0.0.1.
"""

import socket
import sys
import warnings

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

warnings.simplefilter("ignore", DeprecationWarning)

group, port, path, cf, payload, mid = sys.argv[1:7]
msg = aiocoap.Message(
    code=Code.POST,
    uri_path=tuple(path.split("/")),
    content_format=int(cf),
    payload=bytes.fromhex(payload),
)
msg.mtype = Type.NON
msg.mid = int(mid)
msg.token = b"\x5c\xa1"
data = msg.encode()

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
s.bind(("127.0.0.1", 0))
s.sendto(data, (group, int(port)))
print("SENT", data.hex(), flush=True)
