"""Generated protobuf/gRPC code (package agentforge.v1). Do not edit: run `make proto`."""
