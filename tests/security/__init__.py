"""Security, each a test (issue #12; DESIGN.md §4 and §8). Where each property is checked:

No token or a wrong one → UNAUTHENTICATED; health still answers; no start without a token when required
  - tests/security/test_auth.py: every method of every service (reflection included) on the coordinator and
    the six phase services, built by the real builders with AGENTFORGE_REQUIRE_AUTH=1; only the exact
    `Bearer <token>` header passes; health (Check and Watch) answers with no token or a wrong one; no server
    starts (nothing listens) when auth is required and the token is missing or too short
  - tests/rpc/test_phase_services.py: Validate/Watch refused and health answering, per phase service
  - tests/rpc/test_serve_process.py: `agentforge serve` exits 2 naming AGENTFORGE_TOKEN
  - tests/coordinator/test_cli_runs.py: the CLI's one-line message for a wrong token

An artifact whose bytes were replaced in S3 → refused on read
  - tests/security/test_tampered_artifacts.py: bytes replaced with the plain minio client on SeaweedFS; every
    read names the file, the recorded hash and the actual one; a bitnet job given it fails naming it and
    writes nothing
  - tests/storage/test_store_properties.py: the same reads on both backends, a replaced manifest, promote

A pickle placed where a checkpoint should be → refused, never unpickled
  - tests/security/test_no_unpickling.py: runtime checkpoint resume; load_model, load_quietstar, load_packed,
    load_any and the local teacher, including the files transformers would otherwise torch.load; a bitnet
    job given a planted pickle
  - tests/storage/test_formats.py, tests/storage/test_store_properties.py: the safetensors check and the store

An oversized message → RESOURCE_EXHAUSTED
  - tests/security/test_message_limits.py: coordinator and a phase service, unary and streaming, a burst,
    the server keeps serving; the default limit is 16 MiB
  - tests/rpc/test_job_protocol.py: one oversized Validate

Secrets never appear in logs
  - tests/security/test_secrets.py: a real service process with a token and S3 credentials, driven through
    auth failures, a bad request and failing jobs: its output, its files (W&B offline runs), its bucket and
    everything returned to clients hold neither secret
  - tests/telemetry/test_secret_redaction.py: the redacting log filter
  - tests/storage/test_s3.py: a wrong S3 secret gives a clear error without the secret
  - tests/rpc/test_job_protocol.py: an internal error reaches the client as an id, without the traceback
"""
