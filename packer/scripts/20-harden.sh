#!/usr/bin/env bash
# The platform's OS hardening, adapted to a shared host: kernel sysctls and auditd rules
# (issue #8's files), AppArmor on, core dumps off, automatic security updates, AIDE, cron
# restricted to root, no SSH. UFW is not used: hostd owns the tenant iptables chains and
# m8trx-firewall the host's (see packer/README.md).
set -euxo pipefail
S=${M8TRX_STAGING:?}

install -o root -g root -m 0644 "$S/host/99-m8trx-shared-host.conf" /etc/sysctl.d/99-m8trx-shared-host.conf
install -o root -g root -m 0640 "$S/host/m8trx-shared-host.rules" /etc/audit/rules.d/m8trx-shared-host.rules

# Kernel modules the host needs at boot (tenant bridges, overlayfs, loop, broker dummy).
printf '%s\n' overlay br_netfilter dummy loop >/etc/modules-load.d/m8trx.conf
# Protocols no tenant needs.
printf 'install %s /bin/false\n' dccp sctp rds tipc cramfs freevxfs jffs2 hfs hfsplus udf usb-storage \
  >/etc/modprobe.d/m8trx-blacklist.conf

# Core dumps off (a tenant crash must not write host-readable memory images).
printf '* hard core 0\n' >/etc/security/limits.d/m8trx-no-core.conf
mkdir -p /etc/systemd/coredump.conf.d
printf '[Coredump]\nStorage=none\nProcessSizeMax=0\n' >/etc/systemd/coredump.conf.d/m8trx.conf

# No SSH daemon: Session Manager only.
systemctl disable --now ssh.service ssh.socket 2>/dev/null || true
systemctl mask ssh.service ssh.socket 2>/dev/null || true

# Automatic security updates.
printf 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n' \
  >/etc/apt/apt.conf.d/20auto-upgrades

# cron and at for root only.
rm -f /etc/cron.deny /etc/at.deny
echo root >/etc/cron.allow
echo root >/etc/at.allow
chmod 0600 /etc/cron.allow /etc/at.allow

# AppArmor and auditd enabled; the dockerd of the distribution is not: hostd starts one
# dockerd per tenant, all on the host's one containerd.
systemctl enable apparmor.service auditd.service containerd.service
systemctl disable docker.service docker.socket
systemctl mask docker.service docker.socket

# Persistent journal.
mkdir -p /var/log/journal
systemd-tmpfiles --create --prefix /var/log/journal

# AIDE baseline of the image (tenant roots and engine data are excluded).
cat >/etc/aide/aide.conf.d/99_m8trx <<'AIDE'
!/srv/m8trx
!/var/lib/m8trx
!/var/lib/containerd
!/run/m8trx
AIDE
aideinit -y -f
