"""A real grpcio client with an xds:/// target: sends unary Echo calls and prints who served them as JSON.

    GRPC_XDS_BOOTSTRAP=bootstrap.json python grpcio_xds_shares.py xds:///svc 2000

The request and reply are encoded by hand (two string fields), so no generated stubs or grpcio-tools are
needed: EchoRequest.message = 1; EchoReply.served_by = 2 (proto/proto/lateral/demo/v1).
Exits non-zero, with the reason on stderr, if the channel is not ready within 30 s or a call fails.
"""

import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def served_by(reply):
    i = 0
    while i < len(reply):
        key, i = read_varint(reply, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(reply, i)
        elif wire == 2:
            n, i = read_varint(reply, i)
            if field == 2:
                return reply[i : i + n].decode()
            i += n
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return ""


def main():
    target, calls = sys.argv[1], int(sys.argv[2])
    message = b"through xds"
    request = b"\x0a" + varint(len(message)) + message
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    unary = channel.unary_unary("/lateral.demo.v1.Echo/Unary")
    counts = {}
    for _ in range(calls):
        who = served_by(unary(request, timeout=10))
        counts[who] = counts.get(who, 0) + 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
