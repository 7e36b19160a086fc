# syntax=docker/dockerfile:1
#
# One image recipe for OTAflow's programs. The build argument CMD selects which:
#
#   docker build --build-arg CMD=worker     -t otaflow-worker .
#   docker build --build-arg CMD=mqttbridge -t otaflow-mqttbridge .
#   docker build --build-arg CMD=starter    -t otaflow-starter .   # docker-compose.yml's setup service
#
# The result is a static binary on distroless (no shell), running as an unprivileged user,
# with /healthcheck (deploy/healthcheck) for the container health check.

FROM golang:1.26.8-bookworm AS build
ARG CMD=worker
WORKDIR /src
# Dependencies first, so that a code change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    test -f "./${CMD}/main.go" || { echo "CMD=${CMD}: no such program (use worker, mqttbridge or starter)" >&2; exit 1; } && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/app "./${CMD}" && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/healthcheck

# distroless publishes no version tags; pin a digest (static-debian12:nonroot@sha256:...) for
# reproducible production builds.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/app /app
COPY --from=build /out/healthcheck /healthcheck
USER nonroot:nonroot
ENTRYPOINT ["/app"]
