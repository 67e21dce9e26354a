#!/usr/bin/env bash
# Leave no build state in the image: staging files, apt caches, machine id, cloud-init state.
set -euxo pipefail
rm -rf "${M8TRX_STAGING:?}"
apt-get -y -q clean
rm -rf /var/lib/apt/lists/*
cloud-init clean --logs --seed
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /root/.bash_history /home/ubuntu/.bash_history
