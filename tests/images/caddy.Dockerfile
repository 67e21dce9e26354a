# Tenant TLS server for tests: static Caddy 2.11 (proxy_protocol, acme_server) over busybox.
ARG BASE
FROM ${BASE}
COPY caddy /usr/bin/caddy
ENTRYPOINT ["/usr/bin/caddy"]
CMD ["version"]
