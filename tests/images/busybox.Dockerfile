# Minimal shell image for tests: Debian's static busybox, nothing else.
FROM scratch
COPY rootfs/ /
CMD ["/bin/sh"]
