# redpush: a small, static, non-root image.
#   docker build -t redpush .
#   docker run -p 9502:9502 redpush -redis redis://redis:6379
# CI builds the binary with the same command (make build) without an engine.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/redpush ./cmd/redpush

FROM scratch
# CA certificates for rediss:// and TLS to Sentinel or Cluster nodes.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /out/redpush /redpush
USER 65532:65532
EXPOSE 9502
# redpush healthcheck asks /readyz of the server that PID 1 is, read from
# its command line and the environment: it follows -addr and TLS.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/redpush", "healthcheck"]
ENTRYPOINT ["/redpush"]
CMD ["-redis", "redis://redis:6379"]
