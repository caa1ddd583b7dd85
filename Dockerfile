# syntax=docker/dockerfile:1
# riskstream images. Targets:
#   runtime  (default) the stream worker and every command except `train`: no TensorFlow.
#   training           the same plus the `train` extra (TensorFlow, Keras, tf2onnx).
# Build:  docker build -t riskstream .            (runtime)
#         docker build -t riskstream-train --target training .
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: turn the source tree into one wheel -------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The setuptools package-dir mapping (stream/ -> riskstream, training/ -> riskstream.training,
# schemas/ -> riskstream.schemas) needs exactly these paths.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY training ./training
COPY schemas ./schemas
RUN python -m pip wheel --no-deps --wheel-dir /dist .

# ---- base: what every runnable stage shares --------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    RISKSTREAM_MODELS_DIR=/models \
    RISKSTREAM_METRICS_PORT=9108
# A fixed numeric uid lets Kubernetes enforce runAsNonRoot; /var/lib/riskstream is the
# working directory where Faust keeps its local table data; /data receives replay files.
RUN useradd --system --no-log-init --uid 10001 --user-group --home-dir /var/lib/riskstream \
        --shell /usr/sbin/nologin riskstream \
    && mkdir -p /var/lib/riskstream /models /data \
    && chown riskstream:riskstream /var/lib/riskstream /data
WORKDIR /var/lib/riskstream

# ---- training: the offline package with TensorFlow -------------------------------------
FROM base AS training
# The wheel is a local file (pinned by construction); hadolint cannot tell with an extra.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    wheel="$(find /dist -name 'riskstream-*.whl' -print -quit)" \
    && python -m pip install "${wheel}[train]"
USER 10001:10001
ENTRYPOINT ["riskstream"]
CMD ["--help"]

# ---- runtime (default, last stage): the worker image, without the train extra ----------
FROM base AS runtime
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    python -m pip install /dist/riskstream-*.whl \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"
USER 10001:10001
EXPOSE 9108
# No curl in slim images: the interpreter does the probe (503 raises, so the check fails).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RISKSTREAM_METRICS_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["riskstream"]
CMD ["worker"]
