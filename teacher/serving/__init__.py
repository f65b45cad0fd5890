"""The inference service: the engine protocol and its engines, the wire-independent
service, the thin gRPC servicer with its pure converters, the server, and the client.
"""
