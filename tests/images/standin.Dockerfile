# Stand-in base for public images the compose battery names (no registry on the test
# machine): busybox, an entrypoint that serves HTTP on the image's ports, and the health
# tools the battery's healthchecks call. tests build one tag per public image on top of it,
# setting STANDIN_PORTS (and STANDIN_TITLE where a healthcheck reads the process list).
ARG BASE
FROM ${BASE}
COPY bin/ /usr/local/bin/
COPY www/ /srv/standin/www/
ENTRYPOINT ["/usr/local/bin/standin"]
