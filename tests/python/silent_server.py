"""A gRPC server that accepts every call and never answers it: what a hung orchestrator
looks like to a client. Prints its port, then the method of every call it takes, one line
each, and serves until killed."""

import sys
import threading
from concurrent import futures

import grpc


class Silent(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        print(handler_call_details.method, flush=True)
        def hang(request, context):
            # Until the client gives up (its deadline) and the call ends.
            done = threading.Event()
            context.add_callback(done.set)
            done.wait()

        return grpc.unary_unary_rpc_method_handler(hang)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[Silent()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
