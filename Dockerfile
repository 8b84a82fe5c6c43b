# Wharf's image: the `wharf` CLI with every dependency. docker-compose.yml runs it
# as `wharf worker`, `wharf bridge` and the one-shot topic creation.
#
# torch from PyPI brings its CUDA wheels (several GB). For a CPU-only image:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# (or TORCH_INDEX_URL=... docker compose build)
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WHARF_STATE_DIR=/var/lib/wharf

WORKDIR /src

# Dependencies first, in their own layer, so editing the code does not reinstall torch.
COPY pyproject.toml ./
RUN set -eux; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$(python -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("torch")))')"; \
    fi; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

# Then Wharf itself.
COPY . .
RUN pip install --no-deps . && pip check

# Run as an unprivileged user; the state folder (Faust tables, logs) is a volume.
# openssl: the one-shot mosquitto-init makes the broker's TLS certificate (wharf/infra/tls.py).
RUN set -eux; \
    apt-get update; apt-get install -y --no-install-recommends openssl; rm -rf /var/lib/apt/lists/*; \
    useradd --system --uid 10001 --user-group --create-home --home-dir /home/wharf wharf; \
    mkdir -p /var/lib/wharf; \
    chown wharf:wharf /var/lib/wharf
USER wharf
WORKDIR /home/wharf
VOLUME ["/var/lib/wharf"]
EXPOSE 6066

ENTRYPOINT ["wharf"]
CMD ["--help"]
