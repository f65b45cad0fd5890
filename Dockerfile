# The teacher service on a CUDA GPU, served by vLLM.
#   docker build -t distill-teacher .
#   docker run --gpus all -p 50051:50051 -v $HOME/.cache/distill:/cache \
#       -v $PWD/teacher-token:/run/secrets/teacher-token:ro distill-teacher \
#       --token-file /run/secrets/teacher-token \
#       --model teacher=qwen2.5-coder-1.5b-instruct --model student=qwen2.5-coder-0.5b-instruct
# The server binds 0.0.0.0 in the container, so it refuses to start without
# --token-file (clients send "authorization: Bearer <token>"; add --tls-cert and
# --tls-key to encrypt) or an explicit --insecure on a trusted network.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DISTILL_CACHE=/cache/models \
    HF_HOME=/cache/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so code edits do not re-install vLLM.
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY teacher ./teacher
COPY student ./student
COPY eval ./eval
RUN pip install ".[gpu]"

RUN useradd --create-home --uid 1000 distill && mkdir -p /cache && chown distill /cache
USER 1000
VOLUME ["/cache"]
EXPOSE 50051

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s=g.HealthStub(grpc.insecure_channel('localhost:50051')); sys.exit(0 if s.Check(h.HealthCheckRequest(), timeout=3).status == 1 else 1)"]

ENTRYPOINT ["distill-teacher", "serve", "--engine", "vllm", "--host", "0.0.0.0", "--port", "50051"]
CMD ["--model", "teacher=qwen2.5-coder-1.5b-instruct"]
