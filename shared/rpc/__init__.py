"""gRPC plumbing shared by every service: server builder, auth, status mapping, job servicer, clients."""
