# Sigil's images for users who build with Docker (or buildah/podman/kaniko):
#
#   docker build --target sigil-server     -t sigil-server:0.1.0 .
#   docker build --target sigil-agent      -t sigil-agent:0.1.0 .
#   docker build --target sigil-operator   -t sigil-operator:0.1.0 .
#   docker build --target sigil-csi-driver -t sigil-csi-driver:0.1.0 .
#   docker build --target sigil-spiffe-demo -t sigil-spiffe-demo:0.1.0 .   (examples/spiffe-demo)
#
# CI builds the same images without a Docker engine (images/build.sh): the same binaries on the same
# Debian 12 base libraries, no shell in the final images. Both give: the stripped binary at
# /usr/local/bin/<name>, glibc from Debian 12 (distroless cc), server and operator as uid 65532, the agent as
# uid 0 without capabilities (the chart drops them all), the CSI driver as root (privileged in the chart).

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p sigil-server --bin sigil-server \
      -p sigil-agent --bin sigil-agent \
      -p sigil-operator --bin sigil-operator \
      -p sigil-csi-driver --bin sigil-csi-driver \
      -p spiffe-demo --bin spiffe-demo \
 && mkdir /out \
 && for b in sigil-server sigil-agent sigil-operator sigil-csi-driver spiffe-demo; do \
      strip -o /out/$b target/release/$b; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot AS sigil-server
COPY --from=build /out/sigil-server /usr/local/bin/sigil-server
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sigil-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS sigil-operator
COPY --from=build /out/sigil-operator /usr/local/bin/sigil-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sigil-operator"]

FROM gcr.io/distroless/cc-debian12 AS sigil-agent
COPY --from=build /out/sigil-agent /usr/local/bin/sigil-agent
USER 0:0
ENTRYPOINT ["/usr/local/bin/sigil-agent"]

FROM gcr.io/distroless/cc-debian12 AS sigil-csi-driver
COPY --from=build /out/sigil-csi-driver /usr/local/bin/sigil-csi-driver
USER 0:0
ENTRYPOINT ["/usr/local/bin/sigil-csi-driver"]

FROM gcr.io/distroless/cc-debian12:nonroot AS sigil-spiffe-demo
COPY --from=build /out/spiffe-demo /usr/local/bin/spiffe-demo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spiffe-demo"]
