"""Generated protobuf classes for profile.proto.

Regenerate after editing profile.proto, from the repository root::

    pip install 'grpcio-tools==1.62.*'
    python -m grpc_tools.protoc -I. --python_out=. pyprofiler/_proto/profile.proto

That protoc emits code without a runtime version check, so the generated module loads under every
protobuf release from 4.21 to 7.x, which is what Python 3.9 through 3.13 get from pip.
"""
