"""Transport: thin gRPC servicers, proto<->domain conversion, the error table, interceptors."""
