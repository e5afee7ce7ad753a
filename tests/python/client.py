#!/usr/bin/env python3
"""A Shoal client in Python, generated from proto/ with grpcio-tools: proof that any
language can use Shoal through the published .proto files.

It checks health, uploads a program through StorageService.Upload, submits a job, watches
it to completion, downloads its stdout through DownloadResults, and checks that the
executor protocol refuses a bad handshake. Usage:

    client.py --address 127.0.0.1:7070 --program examples/hello/hello.wasm
"""
import argparse
import gc
import os
import subprocess
import sys
import tempfile


def generate(proto_root, out):
    protos = sorted(
        os.path.join("shoal/v1", name)
        for name in os.listdir(os.path.join(proto_root, "shoal/v1"))
        if name.endswith(".proto")
    )
    from grpc_tools import protoc
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + protos
    )
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out)


def main():
    # grpcio (1.85 here) can deadlock when Python's cyclic garbage collector finalizes a
    # finished streaming call while another call holds the channel's lock (the process
    # hung in _Rendezvous.__del__, seen once; grpc/grpc#43421 describes the lock order).
    # This short-lived client needs no cyclic collection.
    gc.disable()
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--program", required=True)
    parser.add_argument("--proto-root", default=os.path.join(os.path.dirname(__file__), "../../proto"))
    args = parser.parse_args()

    out = tempfile.mkdtemp(prefix="shoal-python-")
    generate(os.path.abspath(args.proto_root), out)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from shoal.v1 import executor_service_pb2, executor_service_pb2_grpc
    from shoal.v1 import job_service_pb2, job_service_pb2_grpc
    from shoal.v1 import storage_service_pb2, storage_service_pb2_grpc
    from shoal.v1 import types_pb2

    channel = grpc.insecure_channel(args.address)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    print("health: SERVING")

    storage = storage_service_pb2_grpc.StorageServiceStub(channel)
    with open(args.program, "rb") as f:
        program = f.read()

    def upload_requests():
        yield storage_service_pb2.UploadRequest(
            entry=storage_service_pb2.Entry(path="", kind=storage_service_pb2.ENTRY_KIND_FILE, size=len(program))
        )
        for start in range(0, len(program), 65536):
            yield storage_service_pb2.UploadRequest(data=program[start : start + 65536])

    uploaded = storage.Upload(upload_requests(), timeout=60)
    print(f"uploaded: {uploaded.cid}")

    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    spec = types_pb2.JobSpec(program=uploaded.cid, program_name="hello.wasm", args=["from", "python"])
    spec.env["HELLO"] = "python"
    job = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=30).job
    print(f"submitted: {job.id}")

    final_state = None
    for event in jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id), timeout=120):
        if event.HasField("state_change"):
            name = types_pb2.JobState.Name(event.state_change.state)
            print(f"event {event.sequence}: {name}")
            final_state = event.state_change.state
    assert final_state == types_pb2.JOB_STATE_COMPLETED, final_state

    # A late watcher resuming from sequence 2 gets the history from there, then the end.
    resumed = [e.sequence for e in jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id, from_sequence=2), timeout=60)]
    assert resumed[0] == 2 and resumed == list(range(2, resumed[-1] + 1)), resumed
    print(f"resumed from 2: {len(resumed)} events, no gaps")

    stdout = b""
    for message in jobs.DownloadResults(
        job_service_pb2.DownloadResultsRequest(job_id=job.id, path="stdout"), timeout=60
    ):
        if message.HasField("data"):
            stdout += message.data
    print("stdout of the job:")
    print(stdout.decode())
    assert b"arg[1]=from" in stdout and b"HELLO=python" in stdout, stdout

    # A partitioned job: three partitions, each its own execution with its index, one
    # result tree with partitions/<i>/.
    fanned = types_pb2.JobSpec(program=uploaded.cid, program_name="hello.wasm", partitions=3, max_parallel=2)
    fanned_job = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=fanned), timeout=30).job
    for event in jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=fanned_job.id), timeout=120):
        pass
    done = jobs.GetJob(job_service_pb2.GetJobRequest(job_id=fanned_job.id), timeout=30).job
    assert done.state == types_pb2.JOB_STATE_COMPLETED, done
    assert done.partitions.completed == 3 and done.partitions.failed == 0, done.partitions
    executions = jobs.ListExecutions(job_service_pb2.ListExecutionsRequest(job_id=fanned_job.id), timeout=30).executions
    assert sorted(e.partition for e in executions) == [0, 1, 2], executions
    one = jobs.ListExecutions(job_service_pb2.ListExecutionsRequest(job_id=fanned_job.id, partition=2), timeout=30).executions
    assert [e.partition for e in one] == [2], one
    stderr = b""
    for message in jobs.DownloadResults(
        job_service_pb2.DownloadResultsRequest(job_id=fanned_job.id, path="partitions/2/stderr"), timeout=60
    ):
        if message.HasField("data"):
            stderr += message.data
    assert b"SHOAL_PARTITION_INDEX=2" in stderr and b"SHOAL_PARTITION_COUNT=3" in stderr, stderr
    print(f"partitioned job: {done.partitions.completed} partitions completed")

    # Sharding a file is refused at submit, naming the input.
    try:
        sharded = types_pb2.JobSpec(program=uploaded.cid)
        sharded.inputs.add(source=uploaded.cid, target="/inputs/x", shard=True)
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=sharded), timeout=30)
        sys.exit("a sharded file was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "inputs[0]" in error.details() and "not a directory" in error.details(), error.details()
        print(f"sharded file: {error.code().name}: {error.details()}")

    # A malformed spec is INVALID_ARGUMENT naming the field.
    try:
        bad = types_pb2.JobSpec(program=uploaded.cid)
        bad.inputs.add(source=uploaded.cid, target="relative")
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=bad), timeout=30)
        sys.exit("a relative input target was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "inputs[0].target" in error.details(), error.details()
        print(f"bad spec: {error.code().name}: {error.details()}")

    # An oversized request (a 20 MB spec, past the 16 MiB message cap) is refused whole.
    try:
        huge = types_pb2.JobSpec(program=uploaded.cid, args=["x" * (20 * 1024 * 1024)])
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=huge), timeout=30)
        sys.exit("an oversized spec was accepted")
    except grpc.RpcError as error:
        # tonic's answer for a message past the server's decoding limit.
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE, (error.code(), error.details())
        assert "message length too large" in error.details(), error.details()
        print(f"oversized spec: {error.code().name}: {error.details()}")

    # Bytes that are not a protobuf message at all are refused, and the server lives on.
    garbage = channel.unary_unary(
        "/shoal.v1.JobService/SubmitJob",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        garbage(b"\xff\xff\xff\xff\x0f not protobuf", timeout=30)
        sys.exit("garbage was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INTERNAL, (error.code(), error.details())
        print(f"garbage request: {error.code().name}: {error.details()}")
    alive = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert alive.status == health_pb2.HealthCheckResponse.SERVING, alive

    # The executor protocol checks its version and its handshake.
    executors = executor_service_pb2_grpc.ExecutorServiceStub(channel)
    for first, expected in [
        (
            executor_service_pb2.ExecutorMessage(
                register=executor_service_pb2.Register(executor_id="py", protocol_version=99)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            executor_service_pb2.ExecutorMessage(heartbeat=executor_service_pb2.Heartbeat()),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        try:
            for _ in executors.Connect(iter([first]), timeout=30):
                pass
            sys.exit("a bad handshake was accepted")
        except grpc.RpcError as error:
            assert error.code() == expected, (error.code(), error.details())
            print(f"bad handshake: {error.code().name}: {error.details()}")
    print("python client: all checks passed")


if __name__ == "__main__":
    main()
