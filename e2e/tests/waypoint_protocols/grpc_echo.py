"""A gRPC test server (Debian's python3-grpcio) for the waypoint protocol tests, with raw-bytes messages (no
generated code): `ambit.test.Echo/Echo` answers the request bytes prefixed with this pod's name and returns
the request's `x-request-id` and this pod's name in trailing metadata; `Fail` answers NOT_FOUND; `Count` streams
back N numbered messages (N = the request's bytes as a decimal number)."""

import os
import sys
from concurrent import futures

import grpc

POD = os.environ.get("POD_NAME", "unknown")


def trailers(context):
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-pod", POD), ("x-seen-request-id", md.get("x-request-id", ""))))


def echo(request, context):
    trailers(context)
    return POD.encode() + b":" + request


def fail(request, context):
    trailers(context)
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode(errors="replace"))


def count(request, context):
    trailers(context)
    for i in range(int(request.decode() or "0")):
        yield b"%d" % i


def main():
    port = sys.argv[1] if len(sys.argv) > 1 else "9000"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "ambit.test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:" + port)
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
