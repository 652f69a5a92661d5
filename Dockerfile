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
