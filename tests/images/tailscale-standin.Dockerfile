# Test stand-in for the official tailscale image (production runs the real one, pinned by
# digest): busybox plus a containerboot script that reports the contract hostd gives it.
ARG BASE
FROM ${BASE}
COPY containerboot /usr/local/bin/containerboot
ENTRYPOINT ["/usr/local/bin/containerboot"]
