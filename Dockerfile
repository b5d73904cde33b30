# raftkv node image. There is no Docker engine on the machines this was written on: this file is
# validated by `docker-compose config` in the tests, but the image has not been built there.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY raftkv ./raftkv
RUN pip install --no-cache-dir .
# The Kubernetes pods' entrypoint (deploy/kubernetes/): builds `raftkv node`'s command line from the
# pod's name and its volume.
COPY deploy/kubernetes/raftkv_pod.py /usr/local/bin/raftkv-pod
# Not root: a user of its own (uid and gid 10001, as the StatefulSet's securityContext says). /data
# is its own so that docker-compose's new named volumes, created from it, are writable by it.
RUN chmod 0755 /usr/local/bin/raftkv-pod \
    && groupadd --gid 10001 raftkv \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin raftkv \
    && mkdir /data && chown raftkv:raftkv /data
USER 10001:10001
EXPOSE 3000 4000 8080
ENTRYPOINT ["raftkv"]
CMD ["--help"]
