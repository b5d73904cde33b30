# raftkv node image. There is no Docker engine on the machines this was written on: this file is
# validated by `docker-compose config` in the tests, but the image has not been built there.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY raftkv ./raftkv
RUN pip install --no-cache-dir .
EXPOSE 3000 4000 8080
ENTRYPOINT ["raftkv"]
CMD ["--help"]
