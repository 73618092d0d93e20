# Sluice in a container: `sluicectl up` runs control and relay as the unprivileged sluice user.
#   docker build -t sluice .
#   docker run -d --name sluice --network host -v sluice-state:/var/lib/sluice sluice
#   docker exec sluice sluicectl status
# Host networking: the relay's one UDP port carries every peer, and ICE candidates must name
# the host's addresses; set them in the configuration (docs/OPERATIONS.md "Containers").
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p sluice-relay -p sluice-control -p sluicectl

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --home-dir /var/lib/sluice --no-create-home \
        --shell /usr/sbin/nologin sluice \
    && install -d -m 0750 -o sluice -g sluice /run/sluice \
    && install -d -m 0700 -o sluice -g sluice /var/lib/sluice /var/log/sluice \
    && install -d -m 0755 /etc/sluice
COPY --from=build /src/target/release/sluicectl /src/target/release/sluice-control \
    /src/target/release/sluice-relay /usr/bin/
# The shipped configuration, with the admin token in the state volume (created at first start
# by the entrypoint, never baked into the image).
COPY systemd/sluice.toml /etc/sluice/sluice.toml
RUN sed -i 's#^admin_token_file = .*#admin_token_file = "/var/lib/sluice/admin.token"#' \
        /etc/sluice/sluice.toml \
    && chmod 0644 /etc/sluice/sluice.toml
COPY packaging/docker/entrypoint.sh /usr/bin/sluice-entrypoint
USER sluice
EXPOSE 4443/udp 8443/tcp
ENTRYPOINT ["/usr/bin/sluice-entrypoint"]
