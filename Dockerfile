# syntax=docker/dockerfile:1
#
# roamgate: a static binary on a distroless base, running as non-root.
#   docker build -t roamgate .
#   docker run -p 443:443/udp -p 443:443/tcp -v roamgate-data:/data \
#     -v "$PWD/Roamfile:/etc/roamgate/Roamfile:ro" roamgate
#
# Docker (20.10+) lets containers bind ports below 1024 without root
# (net.ipv4.ip_unprivileged_port_start=0), so 443 and 80 work as user 65532.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.buildVersion=${VERSION}" -o /out/roamgate ./cmd/roamgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/roamgate /usr/bin/roamgate
# Certificates and the local CA: $XDG_DATA_HOME/roamgate.
ENV XDG_DATA_HOME=/data
VOLUME /data
USER 65532:65532
EXPOSE 443/udp 443/tcp 80/tcp
ENTRYPOINT ["/usr/bin/roamgate"]
CMD ["run", "--config", "/etc/roamgate/Roamfile"]
# The image has no curl: "roamgate health" asks the admin endpoint (exit 0
# healthy, 1 not). It needs the Roamfile's "admin 127.0.0.1:2019" option,
# which the image cannot assume, so the check is left to the Roamfile's
# owner: add this line to an image built FROM this one, or give docker run
# --health-cmd "/usr/bin/roamgate health --config /etc/roamgate/Roamfile".
# Add --ready to wait for certificates and healthy backends as well.
#   HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/bin/roamgate", "health", "--config", "/etc/roamgate/Roamfile"]
