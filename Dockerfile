# Image for the NPO worker / load generator (used by docker-compose.yml and deploy/kubernetes/).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Copy only what the package needs (keeps .infra/, .git/ and test data out of the image).
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY kernels ./kernels
COPY schemas ./schemas
COPY loadtest ./loadtest
RUN pip install ".[kafka]"
# One writable directory for the runtime user: the join stores (STATE_DIR) and Numba's
# compiled-kernel cache (the installed package is read-only to that user, and so is the
# whole root filesystem under Kubernetes' readOnlyRootFilesystem).
RUN groupadd --gid 10001 npo && useradd --create-home --uid 10001 --gid 10001 npo \
    && mkdir -p /var/lib/npo/state /var/lib/npo/numba-cache \
    && chown -R 10001:10001 /var/lib/npo
ENV NPO_STATE_DIR=/var/lib/npo/state NUMBA_CACHE_DIR=/var/lib/npo/numba-cache
WORKDIR /var/lib/npo
USER 10001:10001
EXPOSE 9108
# Live while the worker's loop turns (see /healthz); urllib raises on a 503, so no curl needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NPO_METRICS_PORT', '9108') + '/healthz', timeout=4)"]
CMD ["npo", "worker"]
