"""Generated protobuf and gRPC stubs for the tessera.v1 API (`make proto` regenerates them)."""
