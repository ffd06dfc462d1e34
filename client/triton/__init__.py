"""The Triton client: where the server is (Connection), and the asyncio gRPC/HTTP client with
its retries, TLS and the served contract's requests."""
