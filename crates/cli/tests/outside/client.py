"""A Hodei client written from proto/ alone, as an outside implementer would.

Generates Python stubs from proto/ with grpcio-tools, then, against a running server:
registers a worker with nothing but its capabilities, reads the field an INVALID_ARGUMENT
names from its google.rpc.BadRequest detail, enrolls a worker session with an agent token,
takes a job submitted over JobService, reports its output and result, and checks that the
server recorded them. Exits non-zero, saying what differed, on the first surprise.

Usage: client.py PROTO_DIR OUT_DIR SERVER_ADDR ADMIN_TOKEN
"""

import os
import queue
import sys
import threading
import time


def main():
    proto_dir, out_dir, address, admin_token = sys.argv[1:5]
    generate(proto_dir, out_dir)
    sys.path.insert(0, out_dir)

    import grpc
    from google.rpc import error_details_pb2, status_pb2
    from hodei.v1 import credentials_pb2, credentials_pb2_grpc
    from hodei.v1 import jobs_pb2, jobs_pb2_grpc
    from hodei.v1 import scheduler_pb2 as s, scheduler_pb2_grpc as s_grpc

    channel = grpc.insecure_channel(address)
    admin = [("authorization", f"Bearer {admin_token}")]
    scheduler = s_grpc.SchedulerServiceStub(channel)

    # Register with capabilities only: provider, type, namespace and time take defaults.
    suffix = str(int(time.time() * 1000) % 10_000_000)
    registered = f"py-registered-{suffix}"
    answer = scheduler.RegisterWorker(
        s.RegisterWorkerRequest(
            worker_id=registered,
            capabilities=s.WorkerCapabilities(cpu_cores=1, memory_mb=512),
        ),
        metadata=admin,
    )
    check(answer.status == s.REGISTRATION_STATUS_SUCCESS, f"register: {answer}")
    again = scheduler.RegisterWorker(
        s.RegisterWorkerRequest(
            worker_id=registered,
            capabilities=s.WorkerCapabilities(cpu_cores=1, memory_mb=512),
        ),
        metadata=admin,
    )
    check(
        again.status == s.REGISTRATION_STATUS_ALREADY_REGISTERED,
        f"registering the same worker again: {again}",
    )
    listed = {w.worker_id: w for w in scheduler.ListWorkers(s.ListWorkersRequest(), metadata=admin).workers}
    worker = listed.get(registered)
    check(worker is not None, f"{registered} not listed: {list(listed)}")
    check(worker.metadata.provider == "external", f"provider: {worker.metadata}")
    check(worker.metadata.worker_type == "dynamic", f"worker_type: {worker.metadata}")
    age_ms = time.time() * 1000 - worker.metadata.provision_timestamp_ms
    check(0 <= age_ms < 600_000, f"provision time {worker.metadata.provision_timestamp_ms} is not recent")
    check(worker.status == s.WORKER_STATUS_STARTING, f"never connected, so starting: {worker.status}")

    # A bad request names its field in a google.rpc.BadRequest detail.
    try:
        scheduler.RegisterWorker(
            s.RegisterWorkerRequest(worker_id=f"py-bad-{suffix}", capabilities=s.WorkerCapabilities(cpu_cores=0, memory_mb=512)),
            metadata=admin,
        )
        fail("cpu_cores = 0 was accepted")
    except grpc.RpcError as error:
        check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {error.code()}")
        details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        check(details is not None, "no grpc-status-details-bin trailer")
        status = status_pb2.Status.FromString(details)
        fields = []
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                fields += [v.field for v in bad.field_violations]
        check(any("cpu_cores" in f for f in fields), f"violations name {fields}")

    # An enrollment token, then a worker session with it.
    tokens = credentials_pb2_grpc.TokenServiceStub(channel)
    created = tokens.CreateToken(credentials_pb2.CreateTokenRequest(role="agent", description="python client"), metadata=admin)
    check(created.token != "", "no token created")
    worker_id = f"py-agent-{suffix}"
    outbox = queue.Queue()

    def messages():
        yield s.AgentMessage(
            hello=s.Hello(
                worker_id=worker_id,
                capabilities=s.WorkerCapabilities(cpu_cores=1, memory_mb=512),
                labels={"client": "python"},
                version="py-0.1",
            )
        )
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    session = scheduler.WorkerSession(messages(), metadata=[("authorization", f"Bearer {created.token}")])
    inbox = queue.Queue()

    def read():
        try:
            for message in session:
                inbox.put(message)
        except grpc.RpcError as error:
            inbox.put(error)

    threading.Thread(target=read, daemon=True).start()
    ack = next_message(inbox, "hello_ack")
    check(ack.hello_ack.worker_id == worker_id, f"hello ack: {ack}")
    check(ack.hello_ack.worker_credential != "", "an enrolled worker gets its own credential")

    # A job for this worker alone (its label), submitted over JobService.
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    submitted = jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(argv=["echo", "hello"], labels={"client": "python"})),
        metadata=admin,
    )
    job_id = submitted.job.id
    assignment = next_message(inbox, "assign_job").assign_job
    check(assignment.job_id == job_id, f"assigned {assignment.job_id}, submitted {job_id}")
    check(list(assignment.argv) == ["echo", "hello"], f"argv {assignment.argv}")
    attempt = assignment.attempt
    outbox.put(s.AgentMessage(job_accepted=s.JobAccepted(job_id=job_id, attempt=attempt)))
    outbox.put(s.AgentMessage(log_chunk=s.LogChunk(job_id=job_id, sequence=1, stream=s.LOG_STREAM_STDOUT, data=b"hello from python\n", attempt=attempt)))
    outbox.put(s.AgentMessage(job_result=s.JobResult(job_id=job_id, outcome=s.JOB_OUTCOME_EXITED, exit_code=0, attempt=attempt)))

    deadline = time.time() + 30
    while True:
        job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=admin).job
        if job.state == "succeeded":
            break
        check(time.time() < deadline, f"job still {job.state}")
        time.sleep(0.1)
    logs = b"".join(
        chunk.data
        for response in jobs.StreamLogs(jobs_pb2.StreamLogsRequest(job_id=job_id), metadata=admin)
        for chunk in response.chunks
    )
    check(b"hello from python" in logs, f"logs {logs!r}")
    outbox.put(None)
    print("outside client: ok")


def next_message(inbox, kind, limit=30):
    deadline = time.time() + limit
    while True:
        left = deadline - time.time()
        check(left > 0, f"no {kind} within {limit} s")
        try:
            message = inbox.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(message, Exception):
            fail(f"session ended waiting for {kind}: {message}")
        if message.WhichOneof("body") == kind:
            return message


def generate(proto_dir, out_dir):
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = []
    for sub in ("hodei/v1", "google/rpc"):
        for name in sorted(os.listdir(os.path.join(proto_dir, sub))):
            if name.endswith(".proto"):
                files.append(os.path.join(proto_dir, sub, name))
    code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + files)
    check(code == 0, f"protoc failed on {files}")
    # No __init__.py: `google` is a namespace package shared with protobuf's own.


def check(ok, what):
    if not ok:
        fail(what)


def fail(what):
    print(f"outside client: {what}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
