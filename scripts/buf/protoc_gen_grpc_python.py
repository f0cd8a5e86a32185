"""A protoc plugin wrapping grpcio-tools' built-in gRPC Python generator.

grpcio-tools ships the gRPC Python code generator only inside its bundled
protoc (``python -m grpc_tools.protoc --grpc_python_out=...``), not as a
standalone ``protoc-gen-*`` plugin, and buf can only proxy protoc's own
built-in generators. This plugin bridges the two: it reads the
CodeGeneratorRequest that buf sends on stdin, hands the already compiled
descriptors to grpc_tools.protoc through ``--descriptor_set_in``, and returns
the generated files in a CodeGeneratorResponse on stdout.
"""

import os
import subprocess
import sys
import tempfile


def main() -> int:
    try:
        from google.protobuf import descriptor_pb2
        from google.protobuf.compiler import plugin_pb2
        import grpc_tools.protoc  # noqa: F401  (checked here for a clear error)
    except ImportError as err:
        sys.stderr.write(
            f"protoc-gen-grpc-python: {err}; run "
            f"'{sys.executable} -m pip install grpcio-tools' or set PYTHON\n"
        )
        return 1

    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )

    with tempfile.TemporaryDirectory(prefix="protoc-gen-grpc-python-") as tmp:
        descriptors = os.path.join(tmp, "descriptors.binpb")
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        with open(descriptors, "wb") as f:
            f.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out_arg = f"{request.parameter}:{out_dir}" if request.parameter else out_dir
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--grpc_python_out={out_arg}",
                *request.file_to_generate,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            response.error = (result.stderr or result.stdout).strip() or (
                f"grpc_tools.protoc exited with status {result.returncode}"
            )
        else:
            for root, _dirs, files in os.walk(out_dir):
                for name in sorted(files):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        response.file.add(
                            name=os.path.relpath(path, out_dir).replace(os.sep, "/"),
                            content=f.read(),
                        )

    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
