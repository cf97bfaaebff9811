"""Generated code of the wire protocol, version 1 (``proto/chiploop/v1/chiploop.proto``).

Do not edit the ``chiploop_pb2*`` files: ``python -m chiploop_server.protogen`` writes them.
"""
