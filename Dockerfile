# One image for the four services (design: one Dockerfile built from the repo root).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY tools ./tools
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 clinicflow
COPY --from=build /install /usr/local
USER 10001
ENV CLINICFLOW_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
# the service to run is the command: clinicflow run checkin|flow|notifications|billing
ENTRYPOINT ["clinicflow"]
CMD ["run", "flow"]
