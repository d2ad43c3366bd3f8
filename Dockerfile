# Image for the NPO worker / load generator (used by docker-compose.yml).
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
RUN useradd --create-home --uid 10001 npo
USER npo
EXPOSE 9108
CMD ["npo", "worker"]
